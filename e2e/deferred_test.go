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

// settleDeferred calls .../messages/{id}/{action} with a lease token and no API token.
func settleDeferred(t *testing.T, br *bridge, sub, id, action, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, br.URL+"/v1/subscriptions/"+sub+"/messages/"+id+"/"+action, strings.NewReader(body))
	req.Header.Set("Bridge-Lease-Token", token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

// deferringReceiver answers the first push of each message 202 with an ack deadline and
// every later one 200, and keeps each first push's lease token.
type deferringReceiver struct {
	*receiver
	mu     sync.Mutex
	tokens map[string]string // message id -> lease token of its first push
}

func newDeferringReceiver(t *testing.T, deadline string) *deferringReceiver {
	d := &deferringReceiver{tokens: map[string]string{}}
	d.receiver = newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		if nth == 0 {
			d.mu.Lock()
			d.tokens[p.ID] = p.Header.Get("Bridge-Lease-Token")
			d.mu.Unlock()
			w.Header().Set("Bridge-Ack-Deadline", deadline)
			w.WriteHeader(http.StatusAccepted)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	return d
}

func (d *deferringReceiver) token(id string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tokens[id]
}

// Deferred acks: twenty messages deferred at once through two push slots (a deferred
// message holds none); half acked with their lease tokens and never pushed again; the
// rest pushed again after the deadline; nack, dead-letter and extend; forged and other
// deliveries' tokens refused; a settled lease answers 409.
func TestDeferredAck(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_TOKEN=admin-token-0123456789abcdef")
	rc := newDeferringReceiver(t, "2s")
	cfg := map[string]any{"subject": "deferred", "url": rc.URL, "max_in_flight": 2, "max_deliveries": 5,
		"retry": map[string]any{"min_backoff": "100ms", "max_backoff": "200ms"}}
	req, _ := http.NewRequest(http.MethodPut, br.URL+"/v1/subscriptions/slow", strings.NewReader(mustJSON(cfg)))
	req.Header.Set("Authorization", "Bearer admin-token-0123456789abcdef")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT: %v %v", err, resp)
	}
	const n = 20
	ids := make([]string, n)
	start := time.Now()
	for i := range n {
		r, _ := http.NewRequest(http.MethodPost, br.URL+"/v1/subjects/deferred/messages", strings.NewReader(fmt.Sprint(i)))
		r.Header.Set("Authorization", "Bearer admin-token-0123456789abcdef")
		resp, err := http.DefaultClient.Do(r)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("publish: %v %v", err, resp)
		}
		var out struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		ids[i] = out.ID
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == n }, "%d of %d first pushes", rc.distinct(), n)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Fatalf("20 deferrals through 2 slots took %s: deferred messages hold their slots", took)
	}
	for _, id := range ids {
		if tok := rc.token(id); len(tok) < 20 {
			t.Fatalf("push of %s carried lease token %q", id, tok)
		}
	}

	// Refusals first: a forged token, another delivery's token, a missing one.
	victim := ids[13]
	for _, c := range []struct {
		token string
		code  int
		want  string
	}{
		{"forged-token-forged-token-x", 403, "invalid_lease_token"},
		{rc.token(ids[0]), 403, "invalid_lease_token"},
		{"", 400, "invalid_header"},
	} {
		if code, body := settleDeferred(t, br, "slow", victim, "ack", c.token, ""); code != c.code || !strings.Contains(body, c.want) {
			t.Fatalf("ack of %s with %q: %d %s", victim, c.token, code, body)
		}
	}
	// Settle: 0-9 acked, 10 nacked for now, 11 dead-lettered, 12 extended to 6 s.
	for _, id := range ids[:10] {
		if code, body := settleDeferred(t, br, "slow", id, "ack", rc.token(id), ""); code != 200 {
			t.Fatalf("ack %s: %d %s", id, code, body)
		}
	}
	if code, body := settleDeferred(t, br, "slow", ids[10], "nack", rc.token(ids[10]), `{"delay":"0s"}`); code != 200 {
		t.Fatalf("nack: %d %s", code, body)
	}
	if code, body := settleDeferred(t, br, "slow", ids[11], "nack", rc.token(ids[11]), `{"dead_letter":true}`); code != 200 {
		t.Fatalf("nack to the DLQ: %d %s", code, body)
	}
	if code, body := settleDeferred(t, br, "slow", ids[12], "extend", rc.token(ids[12]), `{"deadline":"6s"}`); code != 200 {
		t.Fatalf("extend: %d %s", code, body)
	}
	if code, body := settleDeferred(t, br, "slow", ids[0], "ack", rc.token(ids[0]), ""); code != 409 || !strings.Contains(body, "lease_expired") {
		t.Fatalf("second ack: %d %s", code, body)
	}
	// The nacked one comes again at once; the seven left alone after their deadline.
	redistest.Eventually(t, 2*time.Second, func() bool { return len(rc.byID(ids[10])) == 2 }, "nacked message pushed again")
	redistest.Eventually(t, 8*time.Second, func() bool {
		for _, id := range ids[13:] {
			if len(rc.byID(id)) < 2 {
				return false
			}
		}
		return true
	}, "deferred messages pushed again after their deadline")
	for _, id := range ids[13:] {
		ps := rc.byID(id)
		if gap := ps[1].At.Sub(ps[0].At); gap < 1900*time.Millisecond {
			t.Fatalf("%s pushed again %s after being deferred for 2s", id, gap)
		}
		if ps[1].Count != 2 {
			t.Fatalf("%s: second push is delivery %d", id, ps[1].Count)
		}
	}
	if ps := rc.byID(ids[12]); len(ps) != 1 {
		t.Fatalf("the extended message was pushed again after %s", ps[1].At.Sub(ps[0].At))
	}
	redistest.Eventually(t, 8*time.Second, func() bool { return len(rc.byID(ids[12])) == 2 }, "extended message pushed after its new deadline")
	if gap := rc.byID(ids[12])[1].At.Sub(rc.byID(ids[12])[0].At); gap < 5*time.Second {
		t.Fatalf("extended message pushed again after %s, want about 6s", gap)
	}
	time.Sleep(500 * time.Millisecond)
	for _, id := range append(ids[:10:10], ids[11]) {
		if k := len(rc.byID(id)); k != 1 {
			t.Fatalf("settled message %s pushed %d times", id, k)
		}
	}
	var s struct {
		Stats struct {
			DLQSize   int64 `json:"dlq_size"`
			Delivered int64 `json:"delivered"`
			Retrying  int64 `json:"retrying"`
		} `json:"stats"`
	}
	r2, _ := http.NewRequest(http.MethodGet, br.URL+"/v1/subscriptions/slow", nil)
	r2.Header.Set("Authorization", "Bearer admin-token-0123456789abcdef")
	resp, err := http.DefaultClient.Do(r2)
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	if s.Stats.DLQSize != 1 || s.Stats.Retrying != 0 {
		t.Fatalf("stats %+v, want one dead letter and nothing retrying", s.Stats)
	}
	// The attempt log tells the story of an acked one.
	_, raw := apiGet(t, br, "admin-token-0123456789abcdef", "/v1/messages/"+ids[0])
	var m messageJSON
	_ = json.Unmarshal(raw, &m)
	if st, att := m.state("slow"); st != "delivered" || len(att) != 2 || att[0].Outcome != "deferred" || att[1].Outcome != "ack" {
		t.Fatalf("message view of an acked deferred message: %s", raw)
	}
}

func mustJSON(v any) string {
	raw, _ := json.Marshal(v)
	return string(raw)
}

// A kill -9 of the bridge while messages are deferred loses and duplicates nothing: the
// leases are in Redis; another process settles the acked half and redelivers the rest
// after their deadline, once each.
func TestDeferredSurvivesKill(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	first := startBridge(t, redisURL(rs))
	rc := newDeferringReceiver(t, "3s")
	first.subscribe("slow", map[string]any{"subject": "deferred.kill", "url": rc.URL, "max_deliveries": 5,
		"retry": map[string]any{"min_backoff": "100ms", "max_backoff": "200ms"}})
	const n = 10
	var ids []string
	for i := range n {
		_, id := first.publish("deferred.kill", []byte(fmt.Sprint(i)))
		ids = append(ids, id)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == n }, "first pushes")
	// Killed once every deferral is in Redis (one killed mid-deferral leaves its message
	// pending, delivered again after the visibility timeout: another test's matter).
	redistest.Eventually(t, 10*time.Second, func() bool {
		k, _ := rs.Do(t, "HLEN", "bridge:{deferred.kill}:leases:slow").AsInt64()
		return k == n
	}, "ten leases")
	first.kill()
	second := startBridge(t, redisURL(rs))
	for _, id := range ids[:5] {
		if code, body := settleDeferred(t, second, "slow", id, "ack", rc.token(id), ""); code != 200 {
			t.Fatalf("ack %s through another process: %d %s", id, code, body)
		}
	}
	redistest.Eventually(t, 15*time.Second, func() bool {
		for _, id := range ids[5:] {
			if len(rc.byID(id)) < 2 {
				return false
			}
		}
		return true
	}, "the unacked half pushed again after the deadline")
	time.Sleep(time.Second)
	for i, id := range ids {
		want := 2
		if i < 5 {
			want = 1
		}
		if k := len(rc.byID(id)); k != want {
			t.Fatalf("message %d pushed %d times, want %d", i, k, want)
		}
	}
	if p := pendingCount(t, rs, "deferred.kill", "slow"); p != 0 {
		t.Fatalf("%d entries pending", p)
	}
}

// Reliable lists defer too: the message leaves its processing list when deferred; an acked
// one is never pushed again, one left alone is pushed again after its deadline.
func TestDeferredAckOnReliableList(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newDeferringReceiver(t, "1s")
	br.subscribe("jobs", map[string]any{"subject": "deferred.jobs", "url": rc.URL, "transport": "list",
		"retry": map[string]any{"min_backoff": "100ms", "max_backoff": "200ms"}})
	var ids []string
	for i := range 2 {
		req, _ := http.NewRequest(http.MethodPost, br.URL+"/v1/subjects/deferred.jobs/messages?transport=list", strings.NewReader(fmt.Sprint(i)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("publish: %v %v", err, resp)
		}
		var out struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		ids = append(ids, out.ID)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == 2 }, "first pushes")
	// Deferred, the messages left their processing list: they hold no slot there either.
	redistest.Eventually(t, 2*time.Second, func() bool {
		keys, _ := rs.Do(t, "KEYS", "bridge:{deferred.jobs}:processing:*").AsStrSlice()
		for _, k := range keys {
			if n, _ := rs.Do(t, "LLEN", k).AsInt64(); n != 0 {
				return false
			}
		}
		return true
	}, "processing lists empty while the messages are deferred")
	if code, body := settleDeferred(t, br, "jobs", ids[0], "ack", rc.token(ids[0]), ""); code != 200 {
		t.Fatalf("ack: %d %s", code, body)
	}
	redistest.Eventually(t, 5*time.Second, func() bool { return len(rc.byID(ids[1])) == 2 }, "the unacked message pushed again")
	time.Sleep(300 * time.Millisecond)
	if k := len(rc.byID(ids[0])); k != 1 {
		t.Fatalf("acked list message pushed %d times", k)
	}
}

// A handler that acks at once, racing the bridge's recording of its deferral (the 202 and
// the ack cross), is answered 200 and its message is not pushed again.
func TestDeferredAckRightAway(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	rc := newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		token := p.Header.Get("Bridge-Lease-Token")
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := settleDeferred(t, br, "fast", p.ID, "ack", token, "")
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
		w.Header().Set("Bridge-Ack-Deadline", "2s")
		w.WriteHeader(http.StatusAccepted)
	})
	br.subscribe("fast", map[string]any{"subject": "deferred.fast", "url": rc.URL})
	const n = 20
	for i := range n {
		br.publish("deferred.fast", []byte(fmt.Sprint(i)))
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == n }, "pushes")
	wg.Wait()
	time.Sleep(2500 * time.Millisecond) // past the deadline: nothing comes again
	mu.Lock()
	defer mu.Unlock()
	if codes[200] != n || rc.count() != n {
		t.Fatalf("ack answers %v, %d pushes of %d messages", codes, rc.count(), n)
	}
}
