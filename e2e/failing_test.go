package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

// A failed answer with Bridge-Retry: false is dead-lettered at once (one push, one dead
// letter, reason dropped), whatever its status; retries carry the failure context of the
// attempt before them.
func TestNonRetryableAnswersAndFailureContext(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	final := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		w.Header().Set("Bridge-Retry", "false")
		w.WriteHeader(http.StatusServiceUnavailable) // retryable by the table, not by the webhook's word
	})
	flaky := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		switch nth {
		case 0:
			w.WriteHeader(http.StatusBadGateway)
		case 1:
			time.Sleep(400 * time.Millisecond) // longer than the timeout: no status, an error
		default:
			w.WriteHeader(http.StatusOK)
		}
	})
	retry := map[string]any{"min_backoff": "50ms", "max_backoff": "100ms"}
	br.subscribe("final", map[string]any{"subject": "fail.final", "url": final.URL, "retry": retry})
	br.subscribe("flaky", map[string]any{"subject": "fail.flaky", "url": flaky.URL, "retry": retry, "timeout": "200ms", "visibility_timeout": "1s"})

	_, id := br.publish("fail.final", []byte("x"))
	var s subscription
	redistest.Eventually(t, 10*time.Second, func() bool {
		br.do(http.MethodGet, "/v1/subscriptions/final", nil, &s)
		return s.Stats.DLQSize == 1
	}, "dead letter of a Bridge-Retry: false answer")
	time.Sleep(300 * time.Millisecond) // a retry would have come by now
	if n := len(final.byID(id)); n != 1 {
		t.Fatalf("%d pushes of a message answered Bridge-Retry: false, want 1", n)
	}
	var dl struct {
		DeadLetters []struct {
			Reason     string `json:"reason"`
			LastStatus int    `json:"last_status"`
		} `json:"dead_letters"`
	}
	br.do(http.MethodGet, "/v1/subscriptions/final/dead-letters", nil, &dl)
	if len(dl.DeadLetters) != 1 || dl.DeadLetters[0].Reason != "dropped" || dl.DeadLetters[0].LastStatus != 503 {
		t.Fatalf("dead letters: %+v", dl)
	}

	_, id = br.publish("fail.flaky", []byte("y"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(flaky.byID(id)) >= 3 }, "three pushes")
	ps := flaky.byID(id)
	if h := ps[0].Header; h.Get("Bridge-First-Attempt") != "" || h.Get("Bridge-Last-Status") != "" || h.Get("Bridge-Last-Error") != "" {
		t.Fatalf("first push carries failure context: %v", h)
	}
	first, err := time.Parse(time.RFC3339, ps[1].Header.Get("Bridge-First-Attempt"))
	if err != nil || first.After(ps[1].At) || ps[0].At.Sub(first) > 2*time.Second {
		t.Fatalf("second push: bridge-first-attempt %q (%v), first push at %v", ps[1].Header.Get("Bridge-First-Attempt"), err, ps[0].At)
	}
	if got := ps[1].Header.Get("Bridge-Last-Status"); got != strconv.Itoa(http.StatusBadGateway) || ps[1].Header.Get("Bridge-Last-Error") != "" {
		t.Fatalf("second push: last status %q, last error %q", got, ps[1].Header.Get("Bridge-Last-Error"))
	}
	if ps[2].Header.Get("Bridge-First-Attempt") != ps[1].Header.Get("Bridge-First-Attempt") {
		t.Fatalf("first attempt moved: %q then %q", ps[1].Header.Get("Bridge-First-Attempt"), ps[2].Header.Get("Bridge-First-Attempt"))
	}
	if e := ps[2].Header.Get("Bridge-Last-Error"); e == "" || len(e) > 256 || ps[2].Header.Get("Bridge-Last-Status") != "" {
		t.Fatalf("third push: last error %q, last status %q", e, ps[2].Header.Get("Bridge-Last-Status"))
	}
}

// A webhook down (503) for 15 s behind three bridge processes, max_deliveries 3: with the
// circuit breaker nothing is dead-lettered, the pushes during the outage are the opening
// failures plus about one probe per cooldown in all, and every message arrives after
// recovery; opening and closing are published to bridge.events. The same outage without
// the breaker, side by side, dead-letters everything.
func TestCircuitBreakerRidesOutAnOutage(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	bridges := []*bridge{startBridge(t, redisURL(rs)), startBridge(t, redisURL(rs)), startBridge(t, redisURL(rs))}
	br := bridges[0]
	const outage, n = 15 * time.Second, 30
	var upAt atomic.Int64
	upAt.Store(time.Now().Add(time.Hour).UnixNano()) // set when the publishing is done
	down := func(w http.ResponseWriter, _ push, _ int) {
		if time.Now().UnixNano() < upAt.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}
	guarded, plain := newReceiver(t, down), newReceiver(t, down)
	cfg := func(url, subject string, failures int) map[string]any {
		return map[string]any{"subject": subject, "url": url, "max_deliveries": 3, "max_in_flight": 4, "timeout": "2s",
			"retry":           map[string]any{"min_backoff": "200ms", "max_backoff": "1s"},
			"circuit_breaker": map[string]any{"failures": failures, "cooldown": "2s"}}
	}
	br.subscribe("guarded", cfg(guarded.URL, "cb.guarded", 5))
	br.subscribe("plain", cfg(plain.URL, "cb.plain", 0))
	events := newReceiver(t, nil)
	br.subscribe("events", map[string]any{"subject": "bridge.events", "url": events.URL, "start": "beginning"})

	start := time.Now()
	upAt.Store(start.Add(outage).UnixNano())
	for i := range n {
		for _, subject := range []string{"cb.guarded", "cb.plain"} {
			if code, _ := bridges[i%3].publish(subject, []byte(strconv.Itoa(i))); code != http.StatusAccepted {
				t.Fatalf("publish: %d", code)
			}
		}
	}
	var s struct {
		Stats struct {
			Circuit  string `json:"circuit"`
			DLQSize  int64  `json:"dlq_size"`
			Retrying int64  `json:"retrying"`
		} `json:"stats"`
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		br.do(http.MethodGet, "/v1/subscriptions/guarded", nil, &s)
		return s.Stats.Circuit == "open" || s.Stats.Circuit == "half_open"
	}, "circuit open (stats say %q)", s.Stats.Circuit)
	if v := metricValue(t, bridges[1], `bridge_circuit_open{subscription="guarded"}`); v != 1 {
		t.Fatalf("bridge_circuit_open = %v during the outage", v)
	}
	redistest.Eventually(t, outage+30*time.Second, func() bool { return guarded.distinct() == n && plainSettled(t, br, n) }, "recovery")
	redistest.Eventually(t, 10*time.Second, func() bool {
		br.do(http.MethodGet, "/v1/subscriptions/guarded", nil, &s)
		return s.Stats.Circuit == "closed" && s.Stats.Retrying == 0
	}, "circuit closed after recovery (stats %+v)", s.Stats)

	// What the outage cost, with and without the breaker.
	up := time.Unix(0, upAt.Load())
	count := func(rc *receiver) (during int, afterOpen []time.Time) {
		for _, p := range rc.all() {
			if p.At.Before(up) {
				during++
				afterOpen = append(afterOpen, p.At)
			}
		}
		return during, afterOpen
	}
	gDuring, gTimes := count(guarded)
	pDuring, _ := count(plain)
	var ps struct {
		Stats struct {
			DLQSize int64 `json:"dlq_size"`
		} `json:"stats"`
	}
	br.do(http.MethodGet, "/v1/subscriptions/plain", nil, &ps)
	t.Logf("15 s outage, %d messages, 3 processes: with the breaker %d pushes during the outage, %d dead-lettered; without it %d pushes, %d dead-lettered",
		n, gDuring, s.Stats.DLQSize, pDuring, ps.Stats.DLQSize)
	if s.Stats.DLQSize != 0 {
		t.Fatalf("%d dead-lettered behind the breaker, want 0", s.Stats.DLQSize)
	}
	if ps.Stats.DLQSize != n {
		t.Fatalf("without the breaker %d dead-lettered, want all %d (the outage outlasts 3 deliveries)", ps.Stats.DLQSize, n)
	}
	// The opening failures: 5, plus what the three processes had in flight (4 each) when
	// it opened. Then probes: cooldowns of 2, 4, 8 s fit in 15 s, so 3 or 4 in all.
	opened := gTimes[min(len(gTimes)-1, 5+12)]
	probes := 0
	for _, at := range gTimes {
		if at.After(opened.Add(time.Second)) {
			probes++
		}
	}
	if gDuring > 5+12+6 || probes > 5 {
		t.Fatalf("%d pushes during the outage (%d after the circuit opened), want at most %d and 5", gDuring, probes, 5+12+6)
	}
	// Events: opened once and closed once, as JSON on bridge.events.
	redistest.Eventually(t, 10*time.Second, func() bool { return events.count() >= 2 }, "events")
	var kinds []string
	for _, p := range events.all() {
		var ev struct {
			Type, Subscription string
		}
		if err := json.Unmarshal(p.Body, &ev); err != nil || ev.Subscription != "guarded" {
			t.Fatalf("event %s: %v", p.Body, err)
		}
		kinds = append(kinds, ev.Type)
	}
	if fmt.Sprint(kinds) != "[circuit.opened circuit.closed]" {
		t.Fatalf("events %v, want opened then closed", kinds)
	}
}

// plainSettled reports whether every message of the breaker-less subscription is settled.
func plainSettled(t *testing.T, br *bridge, n int) bool {
	var s struct {
		Stats struct {
			DLQSize   int64 `json:"dlq_size"`
			Delivered int64 `json:"delivered"`
		} `json:"stats"`
	}
	br.do(http.MethodGet, "/v1/subscriptions/plain", nil, &s)
	return s.Stats.DLQSize+s.Stats.Delivered >= int64(n)
}
