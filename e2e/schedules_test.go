package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

// schedView is what the schedule routes answer.
type schedView struct {
	Name      string      `json:"name"`
	Cron      string      `json:"cron"`
	Timezone  string      `json:"timezone"`
	Paused    bool        `json:"paused"`
	NextRuns  []time.Time `json:"next_runs"`
	LastRun   *time.Time  `json:"last_run"`
	UpdatedAt time.Time   `json:"updated_at"`
}

// putSchedule creates or replaces a schedule and fails the test unless it is accepted.
func (b *bridge) putSchedule(name string, body map[string]any) schedView {
	b.t.Helper()
	var v schedView
	if code := b.do(http.MethodPut, "/v1/schedules/"+name, body, &v); code != http.StatusCreated && code != http.StatusOK {
		b.t.Fatalf("PUT schedule %s: %d", name, code)
	}
	return v
}

// tick is one message a schedule published, as its stream holds it.
type tick struct {
	ID string
	At time.Time
}

// streamTicks reads the scheduled messages of subject from Redis, in stream order, and
// fails on a message id found twice.
func streamTicks(t *testing.T, rs *redistest.Server, subject string) []tick {
	t.Helper()
	arr, err := rs.Do(t, "XRANGE", subject, "-", "+").ToArray()
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []tick
	for _, v := range arr {
		e, err := v.AsXRangeEntry()
		if err != nil {
			t.Fatal(err)
		}
		at, err := time.Parse(time.RFC3339, e.FieldValues["h:bridge-scheduled-time"])
		if err != nil {
			t.Fatalf("entry %v has no scheduled time: %v", e, err)
		}
		id := e.FieldValues["_id"]
		if seen[id] {
			t.Fatalf("message %s is twice in the stream", id)
		}
		seen[id] = true
		out = append(out, tick{ID: id, At: at})
	}
	return out
}

// inWindow keeps the ticks in (from, to].
func inWindow(ts []tick, from, to time.Time) []tick {
	var out []tick
	for _, x := range ts {
		if x.At.After(from) && !x.At.After(to) {
			out = append(out, x)
		}
	}
	return out
}

// checkConsecutive fails unless the ticks are step apart: none missing, none repeated.
func checkConsecutive(t *testing.T, ts []tick, step time.Duration) {
	t.Helper()
	for i := 1; i < len(ts); i++ {
		if d := ts[i].At.Sub(ts[i-1].At); d != step {
			var all []string
			for _, x := range ts {
				all = append(all, x.At.Format("15:04:05"))
			}
			t.Fatalf("ticks %s and %s are %s apart, want %s: %v", ts[i-1].At, ts[i].At, d, step, all)
		}
	}
}

// pushedTicks returns the scheduled times of the distinct messages rc received, sorted,
// and fails if two distinct messages carry one tick.
func pushedTicks(t *testing.T, rc *receiver) []tick {
	t.Helper()
	byID := map[string]time.Time{}
	for _, p := range rc.all() {
		at, err := time.Parse(time.RFC3339, p.Header.Get("Bridge-Scheduled-Time"))
		if err != nil {
			t.Fatalf("push %s without bridge-scheduled-time: %v", p.ID, p.Header)
		}
		byID[p.ID] = at
	}
	var out []tick
	seen := map[time.Time]string{}
	for id, at := range byID {
		if other, ok := seen[at]; ok {
			t.Fatalf("tick %s published twice: %s and %s", at, other, id)
		}
		seen[at] = id
		out = append(out, tick{ID: id, At: at})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// (1) Two processes on one Redis, "@every 2s" over 11 s: 5 ± 1 messages, each pushed once.
func TestScheduleTwoProcessesEveryTwoSeconds(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	b1 := startBridge(t, redisURL(rs))
	b2 := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("sched.two")
	b1.subscribe("sched-two", map[string]any{"subject": subject, "url": rc.URL})
	start := time.Now()
	v := b2.putSchedule("every-two", map[string]any{"cron": "@every 2s", "subject": subject,
		"data": map[string]any{"job": "sweep"}, "headers": map[string]string{"X-Job": "sweep"}})
	if len(v.NextRuns) != 5 || v.NextRuns[0].Unix()%2 != 0 {
		t.Fatalf("next runs %v", v.NextRuns)
	}
	time.Sleep(11 * time.Second)
	end := time.Now()
	if code := b1.do(http.MethodDelete, "/v1/schedules/every-two", nil, nil); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d", code)
	}
	ticks := inWindow(streamTicks(t, rs, subject), start, end)
	if len(ticks) < 4 || len(ticks) > 6 {
		t.Fatalf("%d messages in 11 s of @every 2s, want 5 ± 1: %v", len(ticks), ticks)
	}
	checkConsecutive(t, ticks, 2*time.Second)
	all := streamTicks(t, rs, subject)
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == len(all) }, "pushed %d of %d messages", rc.distinct(), len(all))
	if rc.count() != rc.distinct() {
		t.Fatalf("%d pushes for %d messages: a duplicate push", rc.count(), rc.distinct())
	}
	pushed := pushedTicks(t, rc)
	checkConsecutive(t, pushed, 2*time.Second)
	// Ticks count as published messages, in whichever process wrote each.
	counter := `bridge_published_total{subject="` + subject + `",transport="stream"}`
	if n := metricOrZero(t, b1, counter) + metricOrZero(t, b2, counter); int(n) != len(all) {
		t.Fatalf("bridge_published_total says %v ticks, the stream holds %d", n, len(all))
	}
	p := rc.all()[0]
	if p.Header.Get("Bridge-Schedule") != "every-two" || p.Header.Get("X-Job") != "sweep" ||
		p.Header.Get("Content-Type") != "application/json" || string(p.Body) != `{"job":"sweep"}` {
		t.Fatalf("push headers %v body %s", p.Header, p.Body)
	}
	// Where is my message: the id of a tick is found like any other.
	var view struct {
		ID      string `json:"id"`
		Subject string `json:"subject"`
	}
	if code := b2.do(http.MethodGet, "/v1/messages/"+p.ID, nil, &view); code != 200 || view.ID != p.ID || view.Subject != subject {
		t.Fatalf("GET /v1/messages/%s: %d %+v", p.ID, code, view)
	}
	var got schedView
	if code := b1.do(http.MethodGet, "/v1/schedules/every-two", nil, &got); code != http.StatusNotFound {
		t.Fatalf("GET after DELETE: %d", code)
	}
}

// (2) Two processes fire "@every 1s"; one is killed with SIGKILL half-way: no tick is
// skipped or published twice.
func TestScheduleSurvivesKillOfAProcess(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	b1 := startBridge(t, redisURL(rs))
	b2 := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("sched.kill")
	// A short visibility timeout: a push the killed process had in flight is reclaimed soon.
	b2.subscribe("sched-kill", map[string]any{"subject": subject, "url": rc.URL, "timeout": "1s", "visibility_timeout": "2s"})
	b2.putSchedule("every-second", map[string]any{"cron": "@every 1s", "subject": subject, "data": 1})
	redistest.Eventually(t, 5*time.Second, func() bool { return len(streamTicks(t, rs, subject)) >= 1 }, "no tick")
	time.Sleep(3500 * time.Millisecond)
	b1.kill()
	killed := time.Now()
	time.Sleep(5 * time.Second)
	b2.do(http.MethodPost, "/v1/schedules/every-second/pause", nil, nil)
	ticks := streamTicks(t, rs, subject)
	checkConsecutive(t, ticks, time.Second)
	if len(inWindow(ticks, killed, killed.Add(5*time.Second))) < 4 {
		t.Fatalf("after the kill, the survivor fired %v", ticks)
	}
	if len(ticks) < 8 {
		t.Fatalf("%d ticks in about 9 s", len(ticks))
	}
	redistest.Eventually(t, 15*time.Second, func() bool { return rc.distinct() == len(ticks) }, "pushed %d of %d messages", rc.distinct(), len(ticks))
	pushed := pushedTicks(t, rc)
	checkConsecutive(t, pushed, time.Second)
	if !pushed[0].At.Equal(ticks[0].At) || !pushed[len(pushed)-1].At.Equal(ticks[len(ticks)-1].At) {
		t.Fatalf("pushed %v, stream %v", pushed, ticks)
	}
}

// (3) Time zones in next_runs; a bad cron or zone is 400 invalid_schedule and writes nothing.
func TestScheduleTimeZoneAndValidation(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	v := br.putSchedule("nine-ny", map[string]any{"cron": "0 9 * * *", "timezone": "America/New_York", "subject": "reports", "data": "x"})
	ny, _ := time.LoadLocation("America/New_York")
	if len(v.NextRuns) != 5 || v.Timezone != "America/New_York" {
		t.Fatalf("schedule %+v", v)
	}
	for i, r := range v.NextRuns {
		local := r.In(ny)
		want := time.Date(local.Year(), local.Month(), local.Day(), 9, 0, 0, 0, ny).UTC()
		if !r.Equal(want) || r.Location() != time.UTC || (r.Hour() != 13 && r.Hour() != 14) {
			t.Fatalf("next run %d: %s, want %s (13:00Z in summer, 14:00Z in winter)", i, r, want)
		}
		if _, off := local.Zone(); (off == -4*3600) != (r.Hour() == 13) {
			t.Fatalf("next run %s: offset %d", r, off)
		}
		if i > 0 && r.Sub(v.NextRuns[i-1]) > 25*time.Hour {
			t.Fatalf("next runs are not daily: %v", v.NextRuns)
		}
	}
	paris := br.putSchedule("nine-paris", map[string]any{"cron": "0 9 * * *", "timezone": "Europe/Paris", "subject": "reports", "data": "x"})
	for _, r := range paris.NextRuns {
		if h := r.Hour(); h != 7 && h != 8 {
			t.Fatalf("09:00 in Paris at %s", r)
		}
	}

	time.Sleep(300 * time.Millisecond)
	before := rs.DBSize(t)
	records, _ := rs.Do(t, "HGETALL", "bridge:schedules").AsStrMap()
	for _, c := range []struct {
		name string
		body map[string]any
		want string
	}{
		{"bad cron", map[string]any{"cron": "0 9 * *", "subject": "reports", "data": 1}, "invalid_schedule"},
		{"seconds field", map[string]any{"cron": "0 0 9 * * *", "subject": "reports", "data": 1}, "invalid_schedule"},
		{"unknown zone", map[string]any{"cron": "0 9 * * *", "timezone": "America/Gotham", "subject": "reports", "data": 1}, "invalid_schedule"},
		{"every too short", map[string]any{"cron": "@every 100ms", "subject": "reports", "data": 1}, "invalid_schedule"},
		{"bad subject", map[string]any{"cron": "@hourly", "subject": "bridge:schedules", "data": 1}, "invalid_subject"},
		{"replace with a bad zone", map[string]any{"cron": "0 9 * * *", "timezone": "Mars", "subject": "reports", "data": 1}, "invalid_schedule"},
	} {
		name := "refused"
		if c.name == "replace with a bad zone" {
			name = "nine-ny"
		}
		var p struct {
			Code   string `json:"code"`
			Detail string `json:"detail"`
		}
		if code := br.do(http.MethodPut, "/v1/schedules/"+name, c.body, &p); code != 400 || p.Code != c.want || p.Detail == "" {
			t.Fatalf("%s: %d %+v, want 400 %s", c.name, code, p, c.want)
		}
		t.Logf("%s: %s", c.name, p.Detail)
	}
	after, _ := rs.Do(t, "HGETALL", "bridge:schedules").AsStrMap()
	if rs.DBSize(t) != before || fmt.Sprint(after) != fmt.Sprint(records) {
		t.Fatalf("refused requests wrote: DBSIZE %d -> %d, schedules changed %v", before, rs.DBSize(t), fmt.Sprint(after) != fmt.Sprint(records))
	}
}

// (4) Ticks missed while every process was down: only the latest fires, once, on start.
func TestScheduleMissedTicksFireOnce(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))

	t.Run("every 2s, down across two ticks", func(t *testing.T) {
		subject := uniq("sched.missed")
		br.putSchedule("missed", map[string]any{"cron": "@every 2s", "subject": subject, "data": 1})
		redistest.Eventually(t, 6*time.Second, func() bool { return len(streamTicks(t, rs, subject)) >= 2 }, "no ticks")
		br.kill()
		before := streamTicks(t, rs, subject)
		last := before[len(before)-1].At
		time.Sleep(5 * time.Second) // at least two ticks come due with no process running
		restart := time.Now()
		br.start()
		time.Sleep(4 * time.Second)
		br.do(http.MethodPost, "/v1/schedules/missed/pause", nil, nil)
		after := inWindow(streamTicks(t, rs, subject), last, time.Now().Add(time.Hour))
		if len(after) < 2 {
			t.Fatalf("after the restart: %v", after)
		}
		// One catch-up tick: the latest missed one (or, if a tick came due while the process
		// started, that one); the older missed ticks never fire.
		if caught := inWindow(after, last, restart); len(caught) > 1 {
			t.Fatalf("%d missed ticks fired: %v", len(caught), caught)
		}
		if after[0].At.Sub(last) < 4*time.Second || after[0].At.Before(restart.Add(-2*time.Second)) {
			t.Fatalf("first tick after the restart %s (last before %s, restart %s): not the latest missed one", after[0].At, last, restart)
		}
		checkConsecutive(t, after, 2*time.Second)
	})

	t.Run("hourly, last tick five hours ago", func(t *testing.T) {
		// Away from an hour boundary, so no regular tick comes due during the test.
		if next := time.Now().Truncate(time.Hour).Add(time.Hour); time.Until(next) < 30*time.Second {
			time.Sleep(time.Until(next) + 2*time.Second)
		}
		hour := time.Now().UTC().Truncate(time.Hour)
		subject := uniq("sched.hourly")
		br.putSchedule("hourly", map[string]any{"cron": "@hourly", "subject": subject, "data": 1})
		br.kill()
		// The schedule was made and last fired hours ago, as if every process had been down.
		fiveAgo := time.Now().Add(-5 * time.Hour).UTC()
		raw, err := rs.Do(t, "HGET", "bridge:schedules", "hourly").ToString()
		if err != nil {
			t.Fatal(err)
		}
		var rec map[string]any
		_ = json.Unmarshal([]byte(raw), &rec)
		rec["created_at"], rec["updated_at"] = fiveAgo.Add(-time.Hour), fiveAgo.Add(-time.Hour)
		edited, _ := json.Marshal(rec)
		rs.Do(t, "HSET", "bridge:schedules", "hourly", string(edited))
		rs.Do(t, "SET", "bridge:{"+subject+"}:last-tick:hourly", strconv.FormatInt(fiveAgo.Truncate(time.Hour).UnixMilli(), 10))

		br.start()
		redistest.Eventually(t, 5*time.Second, func() bool { return len(streamTicks(t, rs, subject)) >= 1 }, "no catch-up tick")
		time.Sleep(2 * time.Second)
		ts := streamTicks(t, rs, subject)
		if len(ts) != 1 || !ts[0].At.Equal(hour) {
			t.Fatalf("catch-up: %v, want one tick at %s", ts, hour)
		}
		var v schedView
		br.do(http.MethodGet, "/v1/schedules/hourly", nil, &v)
		if v.LastRun == nil || !v.LastRun.Equal(ts[0].At) {
			t.Fatalf("last_run %v, want %s", v.LastRun, ts[0].At)
		}
		// Started again, it has nothing to catch up: the tick is published already.
		br.restart()
		time.Sleep(2 * time.Second)
		if ts := streamTicks(t, rs, subject); len(ts) != 1 {
			t.Fatalf("after a second start: %v", ts)
		}
	})
}

// (5) schedules:read reads and cannot write; subscriptions:write grants nothing on schedules;
// schedules:write needs the publish scope of the schedule's subject too.
func TestScheduleScopes(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	const (
		admin       = "admin-token-0123456789abcdef"
		reader      = "sched-reader-0123456789abcdef"
		writer      = "sched-writer-0123456789abcdef"
		subsWriter  = "subs-writer-0123456789abcdefg"
		publisher   = "publisher-0123456789abcdefghi"
		writerPub   = "sched-writer-pub-0123456789ab"
		scheduleDoc = `{"cron":"@hourly","subject":"orders","data":1}`
	)
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	yaml := fmt.Sprintf(`tokens:
  - {name: reader, token_sha256: %s, scopes: ["schedules:read"]}
  - {name: writer, token_sha256: %s, scopes: ["schedules:write"]}
  - {name: subs, token_sha256: %s, scopes: ["subscriptions:write", "subscriptions:read"]}
  - {name: publisher, token_sha256: %s, scopes: ["publish:*"]}
  - {name: writerpub, token_sha256: %s, scopes: ["schedules:write", "publish:orders"]}
`, sum(reader), sum(writer), sum(subsWriter), sum(publisher), sum(writerPub))
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	br := startBridge(t, redisURL(rs), "BRIDGE_TOKEN="+admin, "BRIDGE_TOKENS_FILE="+file)
	hostile{name: "admin creates", method: "PUT", path: "/v1/schedules/s", body: scheduleDoc, token: admin, status: 201}.run(t, br)
	time.Sleep(200 * time.Millisecond)
	records := func() string { m, _ := rs.Do(t, "HGETALL", "bridge:schedules").AsStrMap(); return fmt.Sprint(m) }
	before := records()
	for _, h := range []hostile{
		{name: "no token", method: "GET", path: "/v1/schedules", status: 401, code: "unauthorized"},
		{name: "reader creates", method: "PUT", path: "/v1/schedules/x", body: scheduleDoc, token: reader, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "reader replaces", method: "PUT", path: "/v1/schedules/s", body: scheduleDoc, token: reader, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "reader deletes", method: "DELETE", path: "/v1/schedules/s", token: reader, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "reader pauses", method: "POST", path: "/v1/schedules/s/pause", token: reader, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "reader resumes", method: "POST", path: "/v1/schedules/s/resume", token: reader, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "subscriptions writer creates", method: "PUT", path: "/v1/schedules/x", body: scheduleDoc, token: subsWriter, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "subscriptions writer deletes", method: "DELETE", path: "/v1/schedules/s", token: subsWriter, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "subscriptions reader lists", method: "GET", path: "/v1/schedules", token: subsWriter, status: 403, code: "forbidden", scope: "schedules:read"},
		{name: "publisher creates", method: "PUT", path: "/v1/schedules/x", body: scheduleDoc, token: publisher, status: 403, code: "forbidden", scope: "schedules:write"},
		{name: "writer cannot read", method: "GET", path: "/v1/schedules/s", token: writer, status: 403, code: "forbidden", scope: "schedules:read"},
		{name: "writer without the subject's publish scope", method: "PUT", path: "/v1/schedules/x", body: scheduleDoc, token: writer, status: 403, code: "forbidden", scope: "publish:orders"},
		{name: "writer publishing elsewhere", method: "PUT", path: "/v1/schedules/x", body: `{"cron":"@hourly","subject":"payments","data":1}`, token: writerPub, status: 403, code: "forbidden", scope: "publish:payments"},
		{name: "schedules reader reads no subscriptions", method: "GET", path: "/v1/subscriptions", token: reader, status: 403, code: "forbidden", scope: "subscriptions:read"},
		{name: "reader lists", method: "GET", path: "/v1/schedules", token: reader, status: 200},
		{name: "reader gets", method: "GET", path: "/v1/schedules/s", token: reader, status: 200},
	} {
		h.run(t, br)
	}
	if after := records(); after != before {
		t.Fatalf("refused requests changed the schedules:\n%s\n%s", before, after)
	}
	hostile{name: "writer with the publish scope creates", method: "PUT", path: "/v1/schedules/y", body: scheduleDoc, token: writerPub, status: 201}.run(t, br)
	hostile{name: "writer pauses", method: "POST", path: "/v1/schedules/s/pause", token: writer, status: 200}.run(t, br)
	hostile{name: "writer deletes", method: "DELETE", path: "/v1/schedules/s", token: writer, status: 204}.run(t, br)
}
