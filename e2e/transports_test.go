package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func publishTo(t *testing.T, br *bridge, subject, query string, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(br.URL+"/v1/subjects/"+subject+"/messages?"+query, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = jsonDecode(resp.Body, &out)
	return resp.StatusCode, out
}

// Reliable list: N published -> N pushed, with retries and dead letters as for streams; a
// process kill -9'd mid-delivery has its processing list returned and pushed, none lost.
func TestListReliable(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		switch {
		case string(p.Body) == "flaky" && nth == 0:
			w.WriteHeader(503)
		case string(p.Body) == "bad":
			w.WriteHeader(422)
		default:
			w.WriteHeader(204)
		}
	})
	subject := uniq("jobs")
	rc.setSecret(br.subscribe("jobs", fastSub(rc.URL, subject, map[string]any{
		"transport": "list", "timeout": "1s", "visibility_timeout": "2s", "max_in_flight": 16, "max_deliveries": 20,
	})))
	code, out := publishTo(t, br, subject, "transport=list", "flaky")
	if code != 202 || out["id"] == "" {
		t.Fatalf("list publish: %d %v", code, out)
	}
	flakyID := out["id"].(string)
	publishTo(t, br, subject, "transport=list", "bad")
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(flakyID)) == 2 }, "flaky not retried")
	if ps := rc.byID(flakyID); ps[0].Count != 1 || ps[1].Count != 2 || !ps[1].Verified || ps[0].Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("list retry pushes %+v", ps)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(br.deadLetters("jobs").DeadLetters) == 1 }, "bad not dead-lettered")

	const n = 2000
	before := rc.distinct()
	for i := range n {
		if code, _ := publishTo(t, br, subject, "transport=list", strconv.Itoa(i)); code != 202 {
			t.Fatalf("publish %d: %d", i, code)
		}
	}
	for kill := range 3 {
		target := before + (kill+1)*n/5
		redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() >= target }, "kill %d: stalled below %d", kill, target)
		br.kill()
		br.start()
	}
	redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() == before+n }, "%d of %d list messages pushed", rc.distinct()-before, n)
	redistest.Eventually(t, 10*time.Second, func() bool {
		keys, _ := rs.Do(t, "KEYS", "bridge:{"+subject+"}:processing:*").AsStrSlice()
		total := int64(0)
		for _, k := range keys {
			l, _ := rs.Do(t, "LLEN", k).AsInt64()
			total += l
		}
		ll, _ := rs.Do(t, "LLEN", subject).AsInt64()
		return total == 0 && ll == 0
	}, "processing lists or the queue not empty")
	t.Logf("reliable list, kill -9 x3 over %d messages: %d pushes, %d duplicates", n, rc.count()-before-1, rc.count()-(before+n)-1)
}

// Simple list: at-most-once; each message pushed at most once, a failure dead-lettered.
func TestListSimple(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, func(w http.ResponseWriter, p push, _ int) {
		if string(p.Body) == "fail" {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(200)
	})
	subject := uniq("simple")
	br.subscribe("simple", fastSub(rc.URL, subject, map[string]any{"transport": "list", "list_mode": "simple"}))
	for i := range 100 {
		publishTo(t, br, subject, "transport=list", strconv.Itoa(i))
	}
	publishTo(t, br, subject, "transport=list", "fail")
	// A foreign producer's plain value is delivered as it is.
	rs.Do(t, "LPUSH", subject, "raw-value")
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() >= 102 }, "%d pushes", rc.count())
	time.Sleep(time.Second)
	if rc.count() != 102 || rc.distinct() != 102 {
		t.Fatalf("%d pushes, %d distinct: at-most-once means 102 exactly", rc.count(), rc.distinct())
	}
	d := br.deadLetters("simple")
	if len(d.DeadLetters) != 1 || d.DeadLetters[0].Body != "fail" || d.DeadLetters[0].Reason != "max-deliveries" {
		t.Fatalf("dead letters %+v", d)
	}
}

// Pub/Sub classic, pattern and sharded: pushes arrive, publish reports receivers, and a
// Redis restart is followed by a resubscription.
func TestPubSub(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{AOF: true}) // the registry must survive the restart
	br := startBridge(t, redisURL(rs))
	second := startBridge(t, redisURL(rs)) // two processes: each message still pushed once
	rc := newReceiver(t, nil)
	base := uniq("ps")
	rc.setSecret(br.subscribe("classic", fastSub(rc.URL, base+".classic", map[string]any{"transport": "pubsub"})))
	br.subscribe("pattern", fastSub(rc.URL, base+".pat.*", map[string]any{"transport": "pubsub", "pattern": true}))
	br.subscribe("sharded", fastSub(rc.URL, base+".sharded", map[string]any{"transport": "pubsub", "pubsub_mode": "sharded"}))
	_ = second

	waitReceivers := func(subject, query string, want float64) map[string]any {
		var out map[string]any
		redistest.Eventually(t, 10*time.Second, func() bool {
			_, out = publishTo(t, br, subject, query, "probe")
			return out["receivers"] == want
		}, "%s: receivers %v, want %v", subject, &out, want)
		return out
	}
	waitReceivers(base+".classic", "transport=pubsub", 2)
	waitReceivers(base+".pat.x", "transport=pubsub", 2)
	waitReceivers(base+".sharded", "transport=pubsub&mode=sharded", 2)
	time.Sleep(300 * time.Millisecond)
	start := rc.count()
	var ids []string
	for i, c := range []struct{ subject, query string }{
		{base + ".classic", "transport=pubsub"},
		{base + ".pat.eu", "transport=pubsub"},
		{base + ".sharded", "transport=pubsub&mode=sharded"},
	} {
		code, out := publishTo(t, br, c.subject, c.query, fmt.Sprint("m", i))
		if code != 202 {
			t.Fatalf("%s: %d", c.subject, code)
		}
		ids = append(ids, out["id"].(string))
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		for _, id := range ids {
			if len(rc.byID(id)) != 1 {
				return false
			}
		}
		return true
	}, "pubsub pushes missing")
	time.Sleep(500 * time.Millisecond)
	for _, id := range ids {
		if len(rc.byID(id)) != 1 {
			t.Fatalf("%s pushed %d times by two processes", id, len(rc.byID(id)))
		}
	}
	if p := rc.byID(ids[1])[0]; p.Header.Get("Bridge-Subject") != base+".pat.eu" {
		t.Fatalf("pattern push subject %q", p.Header.Get("Bridge-Subject"))
	}
	if p := rc.byID(ids[0])[0]; !p.Verified {
		t.Fatal("pubsub push not verified")
	}
	_ = start

	rs.Kill(t)
	time.Sleep(500 * time.Millisecond)
	rs.Restart(t)
	waitReceivers(base+".classic", "transport=pubsub", 2)
	waitReceivers(base+".sharded", "transport=pubsub&mode=sharded", 2)
	var got atomic.Int64
	_, out := publishTo(t, br, base+".classic", "transport=pubsub", "after-restart")
	id := out["id"].(string)
	redistest.Eventually(t, 10*time.Second, func() bool { got.Store(int64(len(rc.byID(id)))); return got.Load() == 1 }, "no push after Redis restart")
}
