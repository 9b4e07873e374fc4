package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
)

// kill -9 of the binary, several times, while it delivers thousands of messages: every
// message is pushed afterwards, none lost; duplicates are counted and reported.
func TestKill9LosesNothing(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		w.WriteHeader(204)
	})
	subject := uniq("crash")
	br.subscribe("crash", fastSub(rc.URL, subject, map[string]any{
		"timeout": "1s", "visibility_timeout": "2s", "max_in_flight": 32, "max_deliveries": 50,
	}))
	const n = 3000
	// Publish straight into Redis so publishing does not depend on the process being killed.
	ids := make([]string, 0, n)
	for i := range n {
		id, err := rs.Client(t).Do(ctxTODO, rs.Client(t).B().Xadd().Key(subject).Id("*").FieldValue().
			FieldValue("_payload", strconv.Itoa(i)).FieldValue("h:content-type", "text/plain").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for kill := range 4 {
		target := (kill + 1) * n / 6
		redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() >= target }, "stalled at %d before kill %d", rc.distinct(), kill)
		br.kill()
		br.start()
	}
	redistest.Eventually(t, 90*time.Second, func() bool { return rc.distinct() == n }, "only %d of %d messages pushed", rc.distinct(), n)
	// Not just as many: exactly the entries written.
	for _, id := range ids {
		if len(rc.byID(core.MessageID(subject, id))) == 0 {
			t.Fatalf("entry %s was never pushed", id)
		}
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return pendingCount(t, rs, subject, "crash") == 0 }, "entries left pending")
	dups := rc.count() - n
	t.Logf("kill -9 x4 while delivering %d messages: %d pushes, %d distinct, %d duplicates (%.2f%%)",
		n, rc.count(), rc.distinct(), dups, 100*float64(dups)/n)
	if len(br.deadLetters("crash").DeadLetters) != 0 {
		t.Fatal("messages were dead-lettered")
	}
}

// Redis (AOF always) killed and restarted mid-stream: publishes during the outage get 503,
// everything answered 202 is delivered, and the bridge recovers by itself.
func TestRedisRestartMidStream(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{AOF: true})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("outage")
	br.subscribe("outage", fastSub(rc.URL, subject, map[string]any{"timeout": "1s", "visibility_timeout": "3s"}))

	var accepted sync.Map
	var nAccepted, n503, nOther atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, id := br.publish(subject, []byte(fmt.Sprintf("%d-%d", w, i)))
				switch code {
				case http.StatusAccepted:
					accepted.Store(id, true)
					nAccepted.Add(1)
				case http.StatusServiceUnavailable:
					n503.Add(1)
				default:
					nOther.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Second)
	rs.Kill(t)
	time.Sleep(2 * time.Second)
	rs.Restart(t)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	if n503.Load() == 0 {
		t.Fatal("no publish was answered 503 during the outage")
	}
	if nOther.Load() != 0 {
		t.Fatalf("%d publishes got an answer other than 202 or 503", nOther.Load())
	}
	want := int(nAccepted.Load())
	redistest.Eventually(t, 60*time.Second, func() bool {
		missing := 0
		accepted.Range(func(k, _ any) bool {
			if len(rc.byID(k.(string))) == 0 {
				missing++
			}
			return missing == 0
		})
		return missing == 0
	}, "not every accepted message was delivered (%d accepted, %d distinct pushed)", want, rc.distinct())
	t.Logf("redis restart: %d accepted, %d answered 503, %d pushes (%d distinct)", want, n503.Load(), rc.count(), rc.distinct())
	code, _ := br.publish(subject, []byte("after"))
	if code != http.StatusAccepted {
		t.Fatalf("publish after recovery: %d", code)
	}
}

// SIGTERM during in-flight pushes: they finish, the process exits 0 within the grace, and a
// restart pushes nothing twice.
func TestSigtermFinishesInFlight(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_SHUTDOWN_GRACE=5s")
	var started atomic.Int64
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		started.Add(1)
		time.Sleep(800 * time.Millisecond)
		w.WriteHeader(204)
	})
	subject := uniq("term")
	br.subscribe("term", fastSub(rc.URL, subject, map[string]any{"timeout": "3s", "max_in_flight": 8}))
	const n = 40
	for i := range n {
		if code, _ := br.publish(subject, []byte(strconv.Itoa(i))); code != http.StatusAccepted {
			t.Fatalf("publish: %d", code)
		}
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return started.Load() >= 8 }, "pushes did not start")
	code, took := br.terminate(10 * time.Second)
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if took > 5*time.Second {
		t.Fatalf("exit took %s, beyond the 5s grace", took)
	}
	before := rc.count()
	if before < 8 {
		t.Fatalf("only %d pushes finished", before)
	}
	br.start()
	redistest.Eventually(t, 30*time.Second, func() bool { return rc.distinct() == n }, "%d of %d delivered after restart", rc.distinct(), n)
	time.Sleep(time.Second)
	if rc.count() != n {
		t.Fatalf("%d pushes for %d messages: duplicates after a clean shutdown", rc.count(), n)
	}
	t.Logf("SIGTERM: exit 0 in %s with %d pushes done; %d delivered after restart, no duplicate", took.Round(time.Millisecond), before, n-before)
}

// SIGTERM while a webhook holds a push with a long timeout: past the grace the push is cut
// (the process does not wait out the 10 s timeout), the message stays unacknowledged, and
// the restarted process delivers it once its visibility timeout has passed.
func TestSigtermPastGraceCutsAHeldPush(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_SHUTDOWN_GRACE=1s")
	release := make(chan struct{})
	var held atomic.Bool
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		if nth == 0 {
			held.Store(true)
			<-release // answers only when the test ends
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	t.Cleanup(func() { close(release) }) // before the receiver's Close, which waits for it
	subject := uniq("held")
	br.subscribe("held", fastSub(rc.URL, subject, map[string]any{"timeout": "10s", "visibility_timeout": "11s"}))
	_, id := br.publish(subject, []byte("held"))
	redistest.Eventually(t, 10*time.Second, held.Load, "not pushed")
	code, took := br.terminate(15 * time.Second)
	if code != 0 || took > 4*time.Second {
		t.Fatalf("SIGTERM with a held push: exit %d after %s (grace 1s, push timeout 10s)", code, took)
	}
	br.start()
	redistest.Eventually(t, 30*time.Second, func() bool { return len(rc.byID(id)) >= 2 }, "not delivered after the restart")
	t.Logf("held push: SIGTERM exit %d in %s; delivered again after the restart", code, took.Round(time.Millisecond))
}

// Three bridge processes on one Redis share a subscription: 3000 messages pushed once each
// in normal operation; when one is kill -9'd mid-run the others reclaim its work.
func TestThreeProcessesShareWork(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	procs := []*bridge{startBridge(t, redisURL(rs)), startBridge(t, redisURL(rs)), startBridge(t, redisURL(rs))}
	rc := newReceiver(t, func(w http.ResponseWriter, p push, _ int) {
		time.Sleep(time.Millisecond)
		w.WriteHeader(204)
	})
	subject := uniq("shared")
	procs[0].subscribe("shared", fastSub(rc.URL, subject, map[string]any{"timeout": "1s", "visibility_timeout": "2s", "max_in_flight": 8}))
	time.Sleep(300 * time.Millisecond)

	publishN := func(n int, via *bridge) {
		for i := range n {
			if code, _ := via.publish(subject, []byte(strconv.Itoa(i))); code != 202 {
				t.Errorf("publish: %d", code)
				return
			}
		}
	}
	// Normal operation: every message exactly once across the three.
	publishN(3000, procs[1])
	redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() == 3000 }, "%d of 3000", rc.distinct())
	time.Sleep(500 * time.Millisecond)
	if rc.count() != 3000 {
		t.Fatalf("%d pushes for 3000 messages with three processes: duplicates in normal operation", rc.count())
	}
	// A process dies mid-run: nothing is lost.
	first := rc.count()
	done := make(chan struct{})
	go func() { defer close(done); publishN(3000, procs[1]) }()
	defer func() { <-done }()
	redistest.Eventually(t, 30*time.Second, func() bool { return rc.distinct() >= 3000+1000 }, "second run stalled")
	procs[2].kill()
	redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() == 6000 }, "%d of 6000 after a kill -9", rc.distinct())
	t.Logf("three processes: 3000 once each; with one killed: %d pushes for 3000 more (%d duplicates)", rc.count()-first, rc.count()-first-3000)
}

// A read whose reply is lost (the connection dropped after Redis ran XREADGROUP) leaves
// entries pending with the bridge's own consumer, and nothing announces them. After a
// Redis connection failure the bridge checks every subscription once they can be
// reclaimed (a visibility timeout later), not at its five-minute safety net.
func TestLostReadReplyIsReclaimed(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{AOF: true})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("lostreply")
	br.subscribe("lost", fastSub(rc.URL, subject, map[string]any{"timeout": "1s", "visibility_timeout": "2s"}))
	var consumer string
	redistest.Eventually(t, 5*time.Second, func() bool {
		_, rest, ok := strings.Cut(br.log.String(), `"msg":"delivery engine started","consumer":"`)
		consumer, _, _ = strings.Cut(rest, `"`)
		return ok && consumer != ""
	}, "the bridge's consumer name in its log")
	// What a lost reply leaves: entries read into the bridge's consumer, never pushed.
	// XADD and XREADGROUP in one script: the bridge never sees the entries as new.
	if err := rs.Do(t, "EVAL", `for i = 1, 3 do redis.call('XADD', KEYS[1], '*', '_payload', 'lost ' .. i) end
redis.call('XREADGROUP', 'GROUP', 'bridge:lost', ARGV[1], 'COUNT', 3, 'STREAMS', KEYS[1], '>')
return 1`, "1", subject, consumer).Error(); err != nil {
		t.Fatal(err)
	}
	// The outage that lost the reply: Redis goes away for a moment and comes back.
	rs.Kill(t)
	time.Sleep(2500 * time.Millisecond)
	rs.Restart(t)
	dropped := time.Now()
	redistest.Eventually(t, 20*time.Second, func() bool { return rc.distinct() == 3 }, "%d of 3 lost entries pushed", rc.distinct())
	redistest.Eventually(t, 5*time.Second, func() bool { return pendingCount(t, rs, subject, "lost") == 0 }, "entries left pending")
	t.Logf("pushed %s after the drop", time.Since(dropped))
}
