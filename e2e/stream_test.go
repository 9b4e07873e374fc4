package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func fastSub(url, subject string, extra map[string]any) map[string]any {
	cfg := map[string]any{
		"subject": subject, "url": url, "timeout": "2s",
		"retry": map[string]any{"min_backoff": "100ms", "max_backoff": "400ms"},
	}
	for k, v := range extra {
		cfg[k] = v
	}
	return cfg
}

// Publish N with curl-like requests: N pushes, once each, signatures verify, nothing pending.
func TestPublishDeliversEachOnceSigned(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("orders.eu")
	rc.setSecret(br.subscribe("once", fastSub(rc.URL, subject, nil)))

	const n = 500
	ids := make(map[string]bool, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 10 {
				code, id := br.publish(subject, []byte(fmt.Sprintf("message %d", i)), "Bridge-Forward-X-Tenant", "acme", "Bridge-Partition-Key", "p1",
					"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
				if code != http.StatusAccepted || id == "" || strings.Contains(id, ".") {
					t.Errorf("publish %d: %d %q", i, code, id)
					return
				}
				mu.Lock()
				ids[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	redistest.Eventually(t, 30*time.Second, func() bool { return rc.count() >= n }, "got %d of %d pushes", rc.count(), n)
	time.Sleep(300 * time.Millisecond) // let any duplicate show up
	pushes := rc.all()
	if len(pushes) != n || rc.distinct() != n {
		t.Fatalf("pushes %d distinct %d, want %d once each", len(pushes), rc.distinct(), n)
	}
	for _, p := range pushes {
		if !ids[p.ID] {
			t.Fatalf("push with unknown id %q", p.ID)
		}
		if !p.Verified {
			t.Fatalf("signature of %s does not verify", p.ID)
		}
		if p.Count != 1 || p.Header.Get("Content-Type") != "text/plain" || p.Header.Get("X-Tenant") != "acme" ||
			p.Header.Get("Redis-Partition-Key") != "p1" || p.Header.Get("Bridge-Subject") != subject ||
			p.Header.Get("Bridge-Subscription") != "once" ||
			p.Header.Get("Traceparent") != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
			t.Fatalf("push headers wrong: %v", p.Header)
		}
	}
	redistest.Eventually(t, 5*time.Second, func() bool { return pendingCount(t, rs, subject, "once") == 0 }, "entries still pending")
}

// 500, 500, 200: three deliveries counted 1, 2, 3, one webhook-id, a backoff between.
func TestRetryThenAck(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		if nth < 2 {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(200)
	})
	subject := uniq("retry")
	rc.setSecret(br.subscribe("r", fastSub(rc.URL, subject, nil)))
	_, id := br.publish(subject, []byte("x"))
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() >= 3 }, "got %d pushes", rc.count())
	time.Sleep(500 * time.Millisecond)
	ps := rc.byID(id)
	if len(ps) != 3 {
		t.Fatalf("got %d pushes of %s, want 3", len(ps), id)
	}
	for i, p := range ps {
		if p.Count != i+1 || !p.Verified {
			t.Fatalf("push %d: count %d verified %v", i, p.Count, p.Verified)
		}
		if i > 0 && p.At.Sub(ps[i-1].At) < 90*time.Millisecond {
			t.Fatalf("push %d came %s after the previous one, before min_backoff", i, p.At.Sub(ps[i-1].At))
		}
		if i > 0 && p.Header.Get("Webhook-Timestamp") == "" {
			t.Fatal("no timestamp")
		}
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		var s subscription
		br.do("GET", "/v1/subscriptions/r", nil, &s)
		return s.Stats.Pending == 0 && s.Stats.Retrying == 0 && s.Stats.DLQSize == 0
	}, "retry state left behind")
}

// 429 with Retry-After: 2 is not retried before 2 s.
func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		if nth == 0 {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(429)
			return
		}
		w.WriteHeader(204)
	})
	subject := uniq("throttle")
	br.subscribe("t", fastSub(rc.URL, subject, nil))
	_, id := br.publish(subject, []byte("x"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) >= 2 }, "no retry")
	ps := rc.byID(id)
	if gap := ps[1].At.Sub(ps[0].At); gap < 2*time.Second {
		t.Fatalf("retried %s after a 429 with Retry-After: 2", gap)
	}
}

type deadLetters struct {
	DeadLetters []struct {
		ID            string            `json:"id"`
		Reason        string            `json:"reason"`
		LastStatus    int               `json:"last_status"`
		LastError     string            `json:"last_error"`
		DeliveryCount int               `json:"delivery_count"`
		Body          string            `json:"body"`
		Headers       map[string]string `json:"headers"`
	} `json:"dead_letters"`
}

func (b *bridge) deadLetters(name string) deadLetters {
	var d deadLetters
	if code := b.do("GET", "/v1/subscriptions/"+name+"/dead-letters", nil, &d); code != 200 {
		b.t.Fatalf("dead-letters: %d", code)
	}
	return d
}

// 400 → dead-lettered "dropped" after one push; always 503 → "max-deliveries" after exactly
// max_deliveries pushes; 410 → dead-lettered and the subscription paused.
func TestDeadLetterVerdicts(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	cases := []struct {
		name    string
		status  int
		pushes  int
		reason  string
		paused  bool
		maxDeli int
	}{
		{"bad-request", 400, 1, "dropped", false, 5},
		{"always-503", 503, 4, "max-deliveries", false, 4},
		{"gone", 410, 1, "dropped", true, 5},
		{"redirect", 302, 1, "dropped", false, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
				if tc.status == 302 {
					w.Header().Set("Location", "http://127.0.0.1:1/")
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte("nope"))
			})
			subject := uniq("dl." + tc.name)
			br.subscribe(tc.name, fastSub(rc.URL, subject, map[string]any{"max_deliveries": tc.maxDeli}))
			_, id := br.publish(subject, []byte("payload-"+tc.name), "Bridge-Forward-X-Trace", "t1")
			var d deadLetters
			redistest.Eventually(t, 15*time.Second, func() bool {
				d = br.deadLetters(tc.name)
				return len(d.DeadLetters) == 1
			}, "not dead-lettered")
			time.Sleep(700 * time.Millisecond)
			if got := len(rc.byID(id)); got != tc.pushes {
				t.Fatalf("%d pushes, want %d", got, tc.pushes)
			}
			dl := d.DeadLetters[0]
			if dl.ID != id || dl.Reason != tc.reason || dl.LastStatus != tc.status || dl.DeliveryCount != tc.pushes ||
				dl.Body != "payload-"+tc.name || dl.Headers["x-trace"] != "t1" || dl.Headers["x-dead-letter-reason"] != tc.reason ||
				!strings.Contains(dl.LastError, fmt.Sprint(tc.status)) {
				t.Fatalf("dead letter %+v", dl)
			}
			var s subscription
			br.do("GET", "/v1/subscriptions/"+tc.name, nil, &s)
			if s.Paused != tc.paused || (tc.paused && !strings.Contains(s.Reason, "410")) {
				t.Fatalf("paused=%v reason=%q", s.Paused, s.Reason)
			}
			if s.Stats.Pending != 0 || s.Stats.Retrying != 0 {
				t.Fatalf("left pending %d retrying %d", s.Stats.Pending, s.Stats.Retrying)
			}
		})
	}
}

// Replay moves dead letters back to their own subscription only, with the same id.
func TestReplayReachesOnlyItsSubscription(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	var failing sync.Mutex
	fail := true
	bad := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		failing.Lock()
		defer failing.Unlock()
		if fail {
			w.WriteHeader(422)
			return
		}
		w.WriteHeader(200)
	})
	good := newReceiver(t, nil)
	subject := uniq("replay")
	br.subscribe("bad", fastSub(bad.URL, subject, nil))
	br.subscribe("good", fastSub(good.URL, subject, nil))
	_, id1 := br.publish(subject, []byte("one"))
	_, id2 := br.publish(subject, []byte("two"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(br.deadLetters("bad").DeadLetters) == 2 }, "not dead-lettered")
	redistest.Eventually(t, 10*time.Second, func() bool { return good.count() == 2 }, "good subscription got %d", good.count())
	failing.Lock()
	fail = false
	failing.Unlock()

	var res struct {
		Replayed int `json:"replayed"`
	}
	if code := br.do("POST", "/v1/subscriptions/bad/dead-letters/replay", map[string]any{"ids": []string{id2}}, &res); code != 200 || res.Replayed != 1 {
		t.Fatalf("replay one: %d %+v", code, res)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(bad.byID(id2)) == 2 }, "replayed message not pushed again")
	if code := br.do("POST", "/v1/subscriptions/bad/dead-letters/replay", nil, &res); code != 200 || res.Replayed != 1 {
		t.Fatalf("replay all: %d %+v", code, res)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(bad.byID(id1)) == 2 }, "replayed message not pushed again")
	time.Sleep(500 * time.Millisecond)
	if good.count() != 2 {
		t.Fatalf("the other subscription got %d pushes, want 2", good.count())
	}
	if n := len(br.deadLetters("bad").DeadLetters); n != 0 {
		t.Fatalf("%d dead letters left", n)
	}
	if p := bad.byID(id2)[1]; p.Count != 1 || p.Header.Get("Webhook-Id") != id2 {
		t.Fatalf("replayed push: count %d id %s", p.Count, p.Header.Get("Webhook-Id"))
	}
}

// DELETE stops delivery for good: nothing is pushed again, no group or retry key remains,
// and a new subscription of the same name starts fresh.
func TestDeleteStopsDelivery(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("del")
	br.subscribe("del", fastSub(rc.URL, subject, nil))
	for i := range 20 {
		br.publish(subject, []byte(fmt.Sprint(i)))
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 20 }, "got %d", rc.count())
	if code := br.do("DELETE", "/v1/subscriptions/del", nil, nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	time.Sleep(2500 * time.Millisecond)
	if rc.count() != 20 {
		t.Fatalf("%d pushes after delete, want 20", rc.count())
	}
	if groups, _ := rs.Do(t, "XINFO", "GROUPS", subject).ToArray(); len(groups) != 0 {
		t.Fatalf("%d consumer groups left after delete", len(groups))
	}
	br.subscribe("del", fastSub(rc.URL, subject, nil)) // start: new
	_, id := br.publish(subject, []byte("fresh"))
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 21 }, "got %d", rc.count())
	if len(rc.byID(id)) != 1 {
		t.Fatal("the new subscription did not start at new")
	}
}

// ordered: per partition key, message n+1 is not pushed before message n is acked or
// dead-lettered, through retries and while the delivering process is kill -9'd and another
// takes over. Messages of different keys still go concurrently.
func TestOrderedPerPartitionKey(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	a := startBridge(t, redisURL(rs))
	b := startBridge(t, redisURL(rs))
	var mu sync.Mutex
	inFlight := map[string]bool{}
	violations := 0
	rc := newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		key := p.Header.Get("Redis-Partition-Key")
		mu.Lock()
		if inFlight[key] {
			violations++ // two messages of one key in flight at once
		}
		inFlight[key] = true
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(4)) * time.Millisecond)
		mu.Lock()
		inFlight[key] = false
		mu.Unlock()
		var seq int
		fmt.Sscanf(string(p.Body), "%d", &seq)
		if nth == 0 && seq%7 == 3 {
			w.WriteHeader(503) // some messages need a retry, which must hold their key
			return
		}
		w.WriteHeader(204)
	})
	subject := uniq("ordered")
	a.subscribe("ord", fastSub(rc.URL, subject, map[string]any{
		"ordered": true, "max_in_flight": 16, "timeout": "1s", "visibility_timeout": "2s",
		"retry": map[string]any{"min_backoff": "50ms", "max_backoff": "100ms"},
	}))
	const keys, per = 5, 60
	killed := false
	for i := range per {
		for k := range keys {
			// Straight into Redis (ruststream-fred layout), so publishing does not depend on
			// the process about to be killed.
			if err := rs.Do(t, "XADD", subject, "*", "_payload", fmt.Sprint(i), "h:redis-partition-key", fmt.Sprint("k", k)).Error(); err != nil {
				t.Fatal(err)
			}
		}
		if i == per/2 {
			// Kill whichever process holds the lease, mid-delivery; the other takes over.
			redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() > 20 }, "ordered delivery did not start")
			holder, _ := rs.Do(t, "GET", "bridge:{"+subject+"}:leader:ord").ToString()
			switch {
			case strings.HasPrefix(holder, consumerPrefixOf(t, a)):
				a.kill()
				killed = true
			case strings.HasPrefix(holder, consumerPrefixOf(t, b)):
				b.kill()
				killed = true
			}
		}
	}
	if !killed {
		t.Fatal("no process held the lease")
	}
	redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() == keys*per }, "%d of %d pushed", rc.distinct(), keys*per)
	// First pushes per key come in publish order.
	next := map[string]int{}
	seen := map[string]bool{}
	for _, p := range rc.all() {
		if seen[p.ID] {
			continue
		}
		seen[p.ID] = true
		key := p.Header.Get("Redis-Partition-Key")
		var seq int
		fmt.Sscanf(string(p.Body), "%d", &seq)
		if seq != next[key] {
			t.Fatalf("key %s: message %d pushed first when %d was due", key, seq, next[key])
		}
		next[key]++
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("ordered: %d messages over %d keys, %d pushes, %d concurrent pushes of one key", keys*per, keys, rc.count(), violations)
	if violations > 2 { // a takeover may overlap one push per key at most once
		t.Fatalf("%d times two messages of one key were in flight together", violations)
	}
}

// consumerPrefixOf is the consumer name prefix (host-pid-) of a bridge process.
func consumerPrefixOf(t *testing.T, b *bridge) string {
	t.Helper()
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d-", host, b.cmd.Process.Pid)
}
