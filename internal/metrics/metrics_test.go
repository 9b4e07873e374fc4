package metrics

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A subscription's recorder caches the series of the last (status, outcome) pair: every
// push must still land in the series of its own status and outcome, from any number of
// workers at once, and a subscription that never pushed must have no series.
func TestForSubscriptionCountsEveryPush(t *testing.T) {
	m := New()
	rec := m.ForSubscription("orders")
	_ = m.ForSubscription("idle")
	pushes := []struct {
		status  int
		outcome string
	}{{200, "ack"}, {200, "ack"}, {500, "retry"}, {200, "ack"}, {0, "retry"}, {410, "dead_letter"}, {200, "ack"}}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				for _, p := range pushes {
					rec.Pushed(p.status, p.outcome, time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	m.ForSubscription("orders").Pushed(200, "ack", time.Millisecond) // a second recorder (a recreated subscription) lands in the same series
	want := map[[2]string]float64{{"orders", "ack"}: 3201, {"orders", "retry"}: 1600, {"orders", "dead_letter"}: 800}
	for k, n := range want {
		if got := testutil.ToFloat64(m.pushes.WithLabelValues(k[0], k[1])); got != n {
			t.Errorf("pushes%v = %v, want %v", k, got, n)
		}
	}
	codes := map[string]float64{"200": 3201, "500": 800, "0": 800, "410": 800}
	for code, n := range codes {
		if got := testutil.ToFloat64(m.responses.WithLabelValues("orders", code)); got != n {
			t.Errorf("responses[%s] = %v, want %v", code, got, n)
		}
	}
	if n := testutil.CollectAndCount(m.pushDuration); n != 1 {
		t.Errorf("%d push duration series, want 1 (none for the idle subscription)", n)
	}
	if n := testutil.CollectAndCount(m.pushes); n != 3 {
		t.Errorf("%d push series, want 3", n)
	}
	var nilM *Metrics
	nilM.ForSubscription("x").Pushed(200, "ack", 0) // records nothing, does not panic
}

// Published caches a subject's counter of its last transport: every count must land in
// its own subject and transport, from many publishers at once, with one subject switching
// transports on every call.
func TestPublishedCountsEverySubjectAndTransport(t *testing.T) {
	m := New()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				m.Published("orders", "stream", 1)
				m.Published("orders", "list", 2)
				m.Published("events", "pubsub", 1)
				m.Published("events", "stream", 0) // nothing, and no series
				m.Published("odd", "other", 1)
			}
		})
	}
	wg.Wait()
	want := map[[2]string]float64{{"orders", "stream"}: 800, {"orders", "list"}: 1600, {"events", "pubsub"}: 800, {"odd", "other"}: 800}
	for k, n := range want {
		if got := testutil.ToFloat64(m.published.WithLabelValues(k[0], k[1])); got != n {
			t.Errorf("published%v = %v, want %v", k, got, n)
		}
	}
	if n := testutil.CollectAndCount(m.published); n != len(want) {
		t.Errorf("%d published series, want %d", n, len(want))
	}
	var nilM *Metrics
	nilM.Published("x", "stream", 1)
}

func BenchmarkPublished(b *testing.B) {
	m := New()
	b.ReportAllocs()
	for b.Loop() {
		m.Published("orders.created", "stream", 1)
	}
}
