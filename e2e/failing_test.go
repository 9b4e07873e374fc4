package e2e

import (
	"net/http"
	"strconv"
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
