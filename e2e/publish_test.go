package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

type batchResults struct {
	Results []struct {
		ID        string `json:"id"`
		Duplicate bool   `json:"duplicate"`
		Error     *struct {
			Code   string `json:"code"`
			Status int    `json:"status"`
		} `json:"error"`
	} `json:"results"`
}

// A batch of 1000 becomes 1000 pushes; a batch with bad items writes the others and
// returns a problem for each bad one.
func TestBatchPublish(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("batch")
	rc.setSecret(br.subscribe("batch", fastSub(rc.URL, subject, map[string]any{"max_in_flight": 64})))

	msgs := make([]map[string]any, 1000)
	for i := range msgs {
		msgs[i] = map[string]any{"data": map[string]any{"n": i}, "headers": map[string]string{"X-N": fmt.Sprint(i)}}
	}
	var res batchResults
	if code := br.do("POST", "/v1/subjects/"+subject+"/batch", map[string]any{"messages": msgs}, &res); code != 202 || len(res.Results) != 1000 {
		t.Fatalf("batch: %d, %d results", code, len(res.Results))
	}
	redistest.Eventually(t, 30*time.Second, func() bool { return rc.distinct() == 1000 }, "%d of 1000 pushed", rc.distinct())
	time.Sleep(300 * time.Millisecond)
	if rc.count() != 1000 {
		t.Fatalf("%d pushes for 1000 messages", rc.count())
	}
	for _, p := range rc.all() {
		var body struct{ N int }
		if json.Unmarshal(p.Body, &body) != nil || p.Header.Get("X-N") != fmt.Sprint(body.N) ||
			p.Header.Get("Content-Type") != "application/json" || !p.Verified {
			t.Fatalf("push %s: %q %v", p.ID, p.Body, p.Header)
		}
	}

	mixed := []map[string]any{
		{"data": "ok-1"},
		{"data_base64": "not base64!"},
		{"data": "x", "data_base64": "eA=="},
		{"data_base64": "AAEC", "content_type": "application/x-bin", "partition_key": "p"},
		{"data": "x", "headers": map[string]string{"Host": "evil"}},
		{},
		{"data": "late", "delay": "1s"},
	}
	res = batchResults{}
	if code := br.do("POST", "/v1/subjects/"+subject+"/batch", map[string]any{"messages": mixed}, &res); code != 202 {
		t.Fatalf("mixed batch: %d", code)
	}
	wantErr := []string{"", "invalid_json", "invalid_json", "", "invalid_header", "invalid_json", ""}
	for i, r := range res.Results {
		got := ""
		if r.Error != nil {
			got = r.Error.Code
		}
		if got != wantErr[i] || (got == "" && r.ID == "") {
			t.Fatalf("item %d: error %q id %q, want error %q", i, got, r.ID, wantErr[i])
		}
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 1003 }, "%d pushes", rc.count())
	bin := rc.byID(res.Results[3].ID)
	if len(bin) != 1 || !bytes.Equal(bin[0].Body, []byte{0, 1, 2}) || bin[0].Header.Get("Content-Type") != "application/x-bin" ||
		bin[0].Header.Get("Redis-Partition-Key") != "p" {
		t.Fatalf("base64 item pushed as %+v", bin)
	}

	// Malformed or oversized batches write nothing.
	before := rs.DBSize(t)
	xlen, _ := rs.Do(t, "XLEN", subject).AsInt64()
	for _, c := range []struct {
		body   string
		status int
	}{
		{`{"messages": [`, 400},
		{`{"messages": [], "extra": 1}`, 400},
		{`{"messages": []}`, 400},
		{`{"messages": [{"data": 1, "colour": "red"}]}`, 400},
		{`{"messages": [` + strings.Repeat(`{"data":1},`, 1000) + `{"data":1}]}`, 413},
	} {
		resp, err := http.Post(br.URL+"/v1/subjects/"+subject+"/batch", "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Fatalf("%.40s: %d, want %d", c.body, resp.StatusCode, c.status)
		}
	}
	if after, _ := rs.Do(t, "XLEN", subject).AsInt64(); after != xlen || rs.DBSize(t) != before {
		t.Fatal("a refused batch wrote something")
	}
}

// 50 concurrent publishes with one Idempotency-Key write exactly one message.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	subject := uniq("idem")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]int{}
	dups := 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", br.URL+"/v1/subjects/"+subject+"/messages", strings.NewReader("once"))
			req.Header.Set("Idempotency-Key", "order-42")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var out struct {
				ID        string `json:"id"`
				Duplicate bool   `json:"duplicate"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&out)
			mu.Lock()
			defer mu.Unlock()
			if resp.StatusCode != 202 {
				t.Errorf("status %d", resp.StatusCode)
			}
			ids[out.ID]++
			if out.Duplicate {
				dups++
			}
		}()
	}
	wg.Wait()
	if n, _ := rs.Do(t, "XLEN", subject).AsInt64(); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}
	if len(ids) != 1 || dups != 49 {
		t.Fatalf("ids %v, %d answered duplicate", ids, dups)
	}
	// Another key, and the same key on another subject, are new messages.
	if _, id := br.publish(subject, []byte("x"), "Idempotency-Key", "order-43"); id == "" || ids[id] != 0 {
		t.Fatal("a new key was treated as a duplicate")
	}
	if code, _ := br.publish(subject+"x", []byte("x"), "Idempotency-Key", "order-42"); code != 202 {
		t.Fatal("same key, other subject")
	}
	if n, _ := rs.Do(t, "XLEN", subject+"x").AsInt64(); n != 1 {
		t.Fatal("keys are per subject")
	}
}

// A message delayed 2 s is not pushed before 2 s, is pushed after, and survives a restart
// of the bridge in between.
func TestScheduledPublishSurvivesRestart(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("later")
	rc.setSecret(br.subscribe("later", fastSub(rc.URL, subject, nil)))
	start := time.Now()
	code, id := br.publish(subject, []byte("in two seconds"), "Bridge-Delay", "2s", "Bridge-Forward-X-A", "1")
	if code != 202 || id == "" || strings.Contains(id, ".") {
		t.Fatalf("delayed publish: %d %q", code, id)
	}
	code, id2 := br.publish(subject, []byte("at a time"), "Bridge-Not-Before", time.Now().Add(3*time.Second).UTC().Format(time.RFC3339))
	if code != 202 {
		t.Fatalf("not-before publish: %d", code)
	}
	br.kill()
	time.Sleep(500 * time.Millisecond)
	br.start()
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 && len(rc.byID(id2)) == 1 }, "scheduled messages not pushed")
	p := rc.byID(id)[0]
	if early := p.At.Sub(start); early < 2*time.Second {
		t.Fatalf("pushed after %s, before its 2s delay", early)
	}
	if late := p.At.Sub(start); late > 5*time.Second {
		t.Fatalf("pushed %s after publish: more than a second late (restart included)", late)
	}
	if string(p.Body) != "in two seconds" || p.Header.Get("X-A") != "1" || !p.Verified {
		t.Fatalf("push %+v", p)
	}
	if n, _ := rs.Do(t, "ZCARD", "bridge:{scheduled}:due").AsInt64(); n != 0 {
		t.Fatalf("%d scheduled left", n)
	}
	for _, bad := range [][]string{
		{"Bridge-Delay", "soon"}, {"Bridge-Delay", "-5s"}, {"Bridge-Not-Before", "tomorrow"},
		{"Bridge-Delay", "1s", "Bridge-Not-Before", "2030-01-01T00:00:00Z"},
	} {
		if code, _ := br.publish(subject, []byte("x"), bad...); code != 400 {
			t.Fatalf("%v: %d", bad, code)
		}
	}
}
