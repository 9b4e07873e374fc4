package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

// redisInfo reads one integer field of INFO <section>.
func redisInfo(t *testing.T, rs *redistest.Server, section, field string) int64 {
	t.Helper()
	raw, err := rs.Do(t, "INFO", section).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(raw, "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in INFO %s", field, section)
	return 0
}

func metricValue(t *testing.T, br *bridge, name string) float64 {
	t.Helper()
	v, ok := metricLookup(t, br, name)
	if !ok {
		t.Fatalf("no %s in /metrics", name)
	}
	return v
}

// metricOrZero is metricValue, or 0 for a series the bridge has not written yet.
func metricOrZero(t *testing.T, br *bridge, name string) float64 {
	t.Helper()
	v, _ := metricLookup(t, br, name)
	return v
}

// metricLookup finds the sample of name (with its labels, as /metrics writes them).
func metricLookup(t *testing.T, br *bridge, name string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(scrape(t, br), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, true
		}
	}
	return 0, false
}

// Hundreds of idle subscriptions cost next to nothing: a handful of Redis connections, no
// goroutine each, a fraction of a Redis command a second each; and the first message
// after idle is pushed at once.
func TestIdleSubscriptionsCostLittle(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	// Retention looks at each subject once more after its traffic (one script of a dozen
	// Redis commands per subject), then only every retention/4: a short interval puts that
	// pass before the measured window instead of, by chance, inside it.
	br := startBridge(t, redisURL(rs), "BRIDGE_TRIM_INTERVAL=500ms")
	rc := newReceiver(t, nil)
	const n = 300
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			br.subscribe(fmt.Sprint("idle", i), fastSub(rc.URL, fmt.Sprint("idle.", i), nil))
		}()
	}
	wg.Wait()
	for i := range n {
		if code, _ := br.publish(fmt.Sprint("idle.", i), []byte("x")); code != http.StatusAccepted {
			t.Fatalf("publish: %d", code)
		}
	}
	redistest.Eventually(t, 30*time.Second, func() bool { return rc.distinct() == n }, "%d of %d delivered", rc.distinct(), n)
	time.Sleep(3 * time.Second) // readers and workers end once idle
	before := redisInfo(t, rs, "stats", "total_commands_processed")
	const window = 5 * time.Second
	time.Sleep(window)
	cmds := redisInfo(t, rs, "stats", "total_commands_processed") - before - 1
	perSub := float64(cmds) / window.Seconds() / n
	clients := redisInfo(t, rs, "clients", "connected_clients") - 1 // this test's own
	goroutines := metricValue(t, br, "go_goroutines")
	t.Logf("%d idle subscriptions: %.3f Redis commands/s each (%d in %s), %d Redis connections, %.0f goroutines",
		n, perSub, cmds, window, clients, goroutines)
	if perSub > 0.2 || clients > 10 || goroutines > 200 {
		t.Fatalf("idle cost too high: %.3f commands/s per subscription, %d connections, %.0f goroutines", perSub, clients, goroutines)
	}
	// The first message after idle is pushed at once.
	var lat []time.Duration
	for k := range 20 {
		i := k * 13 % n
		start := time.Now()
		_, id := br.publish(fmt.Sprint("idle.", i), []byte("again"))
		redistest.Eventually(t, 5*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed")
		lat = append(lat, rc.byID(id)[0].At.Sub(start))
	}
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	t.Logf("first push after idle: median %s, max %s", lat[len(lat)/2], lat[len(lat)-1])
	if lat[len(lat)/2] > 250*time.Millisecond {
		t.Fatalf("first push after idle took %s (median)", lat[len(lat)/2])
	}
}

// Entries another producer writes (redis-cli, ruststream-fred) reach an idle
// subscription within about BRIDGE_POLL_INTERVAL, streams and lists alike.
func TestOtherProducersReachIdleSubscriptions(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_POLL_INTERVAL=500ms")
	rc := newReceiver(t, nil)
	stream, list := uniq("foreign.stream"), uniq("foreign.list")
	br.subscribe("fs", fastSub(rc.URL, stream, nil))
	br.subscribe("fl", fastSub(rc.URL, list, map[string]any{"transport": "list"}))
	time.Sleep(2 * time.Second) // both idle, no reader left
	for round := range 3 {
		start := time.Now()
		rs.Do(t, "XADD", stream, "*", "_payload", fmt.Sprint("s", round))
		rs.Do(t, "LPUSH", list, fmt.Sprint("raw list value ", round))
		redistest.Eventually(t, 5*time.Second, func() bool { return rc.count() == 2*(round+1) }, "round %d: %d pushes", round, rc.count())
		took := time.Since(start)
		t.Logf("round %d: both pushed %s after another producer wrote them", round, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Fatalf("round %d: %s, want about the 500ms poll interval", round, took)
		}
		time.Sleep(1500 * time.Millisecond)
	}
}

// A busy subscription reads by waiting in Redis (XREADGROUP BLOCK) while messages keep
// coming, and stops once they stop: no connection stays blocked for a quiet subscription.
// BRIDGE_HOT_WAIT=0 never blocks.
func TestBusySubscriptionWaitsInRedis(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env     string
		blocked bool
	}{{"BRIDGE_HOT_WAIT=50ms", true}, {"BRIDGE_HOT_WAIT=0", false}} {
		rs := redistest.Start(t, redistest.Options{})
		br := startBridge(t, redisURL(rs), tc.env)
		rc := newReceiver(t, nil)
		br.subscribe("busy", fastSub(rc.URL, "busy.orders", nil))
		const n = 100
		var maxBlocked int64
		for i := range n {
			if code, _ := br.publish("busy.orders", []byte(fmt.Sprint(i))); code != http.StatusAccepted {
				t.Fatalf("publish: %d", code)
			}
			time.Sleep(5 * time.Millisecond)
			maxBlocked = max(maxBlocked, redisInfo(t, rs, "clients", "blocked_clients"))
		}
		redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == n }, "%d of %d delivered", rc.distinct(), n)
		if tc.blocked != (maxBlocked > 0) {
			t.Fatalf("%s: at most %d blocked clients while messages came every ~5 ms", tc.env, maxBlocked)
		}
		// Quiet again: within hotWindow plus one wait, nothing waits in Redis.
		redistest.Eventually(t, 2*time.Second, func() bool { return redisInfo(t, rs, "clients", "blocked_clients") == 0 },
			"%s: a quiet subscription still blocks a connection", tc.env)
		if rc.count() != n {
			t.Fatalf("%s: %d pushes for %d messages", tc.env, rc.count(), n)
		}
	}
}
