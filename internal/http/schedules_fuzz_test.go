package httpapi

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/schedules"
)

// A schedule body either is refused with a known problem code, or gives a schedule whose
// cron parses, whose body fits MaxBody and whose stored headers are valid to push.
func FuzzScheduleInput(f *testing.F) {
	for _, s := range []string{
		`{"cron":"*/5 * * * *","subject":"orders","data":{"a":1}}`,
		`{"cron":"@every 30s","timezone":"Europe/Paris","subject":"o.eu","data_base64":"AAE=","content_type":"x/y"}`,
		`{"cron":"@hourly","subject":"o","data":1,"headers":{"X-A":"1","Host":"h"}}`,
		`{"cron":"@every 500ms","subject":"o","data":1}`,
		`{"cron":"TZ=UTC","subject":"o","data":1}`,
		`{"cron":"0 0 30 2 *","subject":"o","data":1}`,
		`{"cron":"0 9 * * *","timezone":"Local","subject":"o","data":1}`,
		`{"cron":"0 9 * * *","subject":"bridge:x","data":1}`,
		`{"cron":"0 9 * * *","subject":"o","data":1,"data_base64":"AA=="}`,
		`{"cron":"0 9 * * *","subject":"o","data":1,"headers":{"bridge-schedule":"x","X-A":"a\r\nB: c"}}`,
		`{"cron":"0 9 * * *","subject":"o","data":"` + string(bytes.Repeat([]byte("a"), 40)) + `"}`,
	} {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	apis := []*api{{opts: Options{MaxBody: 1 << 20}}, {opts: Options{MaxBody: 16}}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var in scheduleInput
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if dec.Decode(&in) != nil {
			return
		}
		for _, a := range apis {
			s, ie := a.schedule("s", in, now)
			if ie != nil {
				if _, known := problems[ie.code]; !known || ie.detail == "" {
					t.Fatalf("refused with %q %q", ie.code, ie.detail)
				}
				continue
			}
			spec, err := schedules.Parse(s.Cron, s.Timezone)
			if err != nil || spec.Next(now).IsZero() {
				t.Fatalf("accepted cron %q in %q: %v", s.Cron, s.Timezone, err)
			}
			if !core.ValidSubject(s.Subject) || s.ContentType == "" || int64(len(s.Body())) > a.opts.MaxBody {
				t.Fatalf("accepted %+v", s)
			}
			// What the caller gave; the message adds content-type and the two bridge-schedule headers.
			checkStoredHeaders(t, s.Headers)
			if _, headers := schedules.Message(s, now); len(headers) != len(s.Headers)+3 {
				t.Fatalf("message headers %v from %v", headers, s.Headers)
			}
		}
	})
}
