package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

// Short retention settings, so the tests see trimming within seconds.
var fastRetention = []string{"BRIDGE_RETENTION=1s", "BRIDGE_TRIM_INTERVAL=200ms", "BRIDGE_MAX_RETENTION=0"}

func xlen(t *testing.T, rs *redistest.Server, key string) int64 {
	t.Helper()
	n, err := rs.Do(t, "XLEN", key).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type retentionStats struct {
	Stats struct {
		StreamLength int64 `json:"stream_length"`
		Expired      int64 `json:"expired"`
		Delivered    int64 `json:"delivered"`
		DLQSize      int64 `json:"dlq_size"`
		Lag          int64 `json:"lag"`
	} `json:"stats"`
}

// Two subscriptions on one subject, one paused: once the other acked everything and the
// retention passed, the paused one's backlog is still whole; resumed, every message
// arrives once; then the stream shrinks to nothing.
func TestRetentionKeepsWhatAPausedSubscriptionNeeds(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, append(fastRetention, redisURL(rs))...)
	fast := newReceiver(t, nil)
	slow := newReceiver(t, nil)
	subject := uniq("keep")
	br.subscribe("fast", fastSub(fast.URL, subject, nil))
	br.subscribe("slow", fastSub(slow.URL, subject, map[string]any{"paused": true}))
	const n = 300
	for i := range n {
		if code, _ := br.publish(subject, []byte(strconv.Itoa(i))); code != http.StatusAccepted {
			t.Fatalf("publish: %d", code)
		}
	}
	redistest.Eventually(t, 20*time.Second, func() bool { return fast.distinct() == n }, "fast got %d of %d", fast.distinct(), n)
	time.Sleep(2500 * time.Millisecond) // the retention (1s) passed several times over
	if got := xlen(t, rs, subject); got != n {
		t.Fatalf("stream holds %d of %d entries while a paused subscription has not read them", got, n)
	}
	var st retentionStats
	br.do("GET", "/v1/subscriptions/slow", nil, &st)
	if st.Stats.StreamLength != n || st.Stats.Lag != n {
		t.Fatalf("stats while paused: %+v", st.Stats)
	}
	br.do("POST", "/v1/subscriptions/slow/resume", nil, nil)
	redistest.Eventually(t, 20*time.Second, func() bool { return slow.distinct() == n }, "slow got %d of %d", slow.distinct(), n)
	if slow.count() != n || fast.count() != n {
		t.Fatalf("duplicates: slow %d, fast %d pushes for %d messages", slow.count(), fast.count(), n)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return xlen(t, rs, subject) == 0 }, "stream not trimmed after both acked: %d left", xlen(t, rs, subject))
	redistest.Eventually(t, 5*time.Second, func() bool {
		br.do("GET", "/v1/subscriptions/slow", nil, &st)
		return st.Stats.StreamLength == 0
	}, "stream_length %d", st.Stats.StreamLength)
}

// A subject nobody subscribes to is trimmed once its entries are older than the retention.
func TestRetentionTrimsSubjectsWithoutSubscriptions(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, append(fastRetention, redisURL(rs))...)
	subject := uniq("nobody")
	for i := range 50 {
		br.publish(subject, []byte(strconv.Itoa(i)))
	}
	if got := xlen(t, rs, subject); got != 50 {
		t.Fatalf("XLEN %d", got)
	}
	start := time.Now()
	redistest.Eventually(t, 10*time.Second, func() bool { return xlen(t, rs, subject) == 0 }, "not trimmed: %d left", xlen(t, rs, subject))
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Fatalf("trimmed after %s, before the 1s retention", took)
	}
	body := scrape(t, br)
	if !strings.Contains(body, `bridge_trimmed_total{subject="`+subject+`"} 50`) {
		t.Fatalf("no bridge_trimmed_total for %s:\n%s", subject, grepLines(body, "bridge_trimmed_total"))
	}
}

// Entries pending in a consumer group the bridge did not create (a ruststream-fred worker)
// are never trimmed, however long the retention passed.
func TestRetentionRespectsForeignGroups(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, append(fastRetention, redisURL(rs))...)
	rc := newReceiver(t, nil)
	subject := uniq("foreign")
	br.subscribe("mine", fastSub(rc.URL, subject, nil))
	rs.Do(t, "XGROUP", "CREATE", subject, "rust-workers", "$")
	for i := range 20 {
		br.publish(subject, []byte(strconv.Itoa(i)))
	}
	// The foreign worker reads 5 and acks 2 of them; the bridge delivers all 20.
	read, err := rs.Do(t, "XREADGROUP", "GROUP", "rust-workers", "w1", "COUNT", "5", "STREAMS", subject, ">").AsXRead()
	if err != nil || len(read[subject]) != 5 {
		t.Fatal(err, read)
	}
	var idList []string
	for _, e := range read[subject] {
		idList = append(idList, e.ID)
	}
	rs.Do(t, "XACK", subject, "rust-workers", idList[0], idList[1])
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == 20 }, "not delivered")
	time.Sleep(2500 * time.Millisecond)
	// idList[2] is the oldest entry still pending in the foreign group: it and everything
	// after it stay.
	first, err := rs.Do(t, "XRANGE", subject, "-", "+", "COUNT", "1").ToArray()
	if err != nil || len(first) == 0 {
		t.Fatalf("stream emptied: %v", err)
	}
	arr, _ := first[0].ToArray()
	firstID, _ := arr[0].ToString()
	if firstID != idList[2] || xlen(t, rs, subject) != 18 {
		t.Fatalf("first entry %s (want %s), %d left (want 18)", firstID, idList[2], xlen(t, rs, subject))
	}
}

// BRIDGE_MAX_RETENTION removes a paused subscription's backlog and counts it as expired.
func TestMaxRetentionExpiresAPausedBacklog(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_RETENTION=500ms", "BRIDGE_TRIM_INTERVAL=200ms", "BRIDGE_MAX_RETENTION=2s")
	rc := newReceiver(t, nil)
	subject := uniq("expire")
	br.subscribe("stuck", fastSub(rc.URL, subject, map[string]any{"paused": true}))
	for i := range 40 {
		br.publish(subject, []byte(strconv.Itoa(i)))
	}
	var st retentionStats
	redistest.Eventually(t, 15*time.Second, func() bool {
		br.do("GET", "/v1/subscriptions/stuck", nil, &st)
		return st.Stats.Expired == 40 && st.Stats.StreamLength == 0
	}, "stats %+v", st.Stats)
	if !strings.Contains(scrape(t, br), `bridge_expired_total{subscription="stuck"} 40`) {
		t.Fatal("no bridge_expired_total")
	}
	if !strings.Contains(br.log.String(), "BRIDGE_MAX_RETENTION") {
		t.Fatal("no warning naming BRIDGE_MAX_RETENTION")
	}
	br.do("POST", "/v1/subscriptions/stuck/resume", nil, nil)
	_, id := br.publish(subject, []byte("new"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "new message not delivered after the expiry")
	if rc.count() != 1 {
		t.Fatalf("%d pushes: expired messages were delivered", rc.count())
	}
}

// Dead letters leave after their subscription's dlq_retention.
func TestDeadLettersLeaveAfterTheirRetention(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, append(fastRetention, redisURL(rs))...)
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) { w.WriteHeader(http.StatusBadRequest) })
	subject := uniq("dlqret")
	br.subscribe("dlqret", fastSub(rc.URL, subject, map[string]any{"dlq_retention": "2s"}))
	for i := range 5 {
		br.publish(subject, []byte(strconv.Itoa(i)))
	}
	var st retentionStats
	redistest.Eventually(t, 10*time.Second, func() bool {
		br.do("GET", "/v1/subscriptions/dlqret", nil, &st)
		return st.Stats.DLQSize == 5
	}, "not dead-lettered")
	start := time.Now()
	redistest.Eventually(t, 10*time.Second, func() bool {
		br.do("GET", "/v1/subscriptions/dlqret", nil, &st)
		return st.Stats.DLQSize == 0
	}, "dead letters kept: %d", st.Stats.DLQSize)
	if took := time.Since(start); took < 1*time.Second {
		t.Fatalf("dead letters gone after %s, before their 2s retention", took)
	}
}

// kill -9 of the bridge while it trims a stream under load loses nothing unacknowledged:
// every message is delivered, and the stream ends up trimmed.
func TestKill9DuringTrimmingLosesNothing(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_RETENTION=0", "BRIDGE_TRIM_INTERVAL=100ms", "BRIDGE_MAX_RETENTION=0")
	rc := newReceiver(t, nil)
	subject := uniq("killtrim")
	br.subscribe("killtrim", fastSub(rc.URL, subject, map[string]any{"timeout": "1s", "visibility_timeout": "2s", "max_in_flight": 8}))
	const n = 2000
	for i := range n {
		if _, err := rs.Do(t, "XADD", subject, "*", "_payload", strconv.Itoa(i)).ToString(); err != nil {
			t.Fatal(err)
		}
	}
	for kill := range 3 {
		target := (kill + 1) * n / 4
		redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() >= target }, "stalled at %d", rc.distinct())
		br.kill()
		br.start()
	}
	redistest.Eventually(t, 60*time.Second, func() bool { return rc.distinct() == n }, "%d of %d delivered", rc.distinct(), n)
	redistest.Eventually(t, 10*time.Second, func() bool { return xlen(t, rs, subject) == 0 }, "%d left", xlen(t, rs, subject))
	var st retentionStats
	br.do("GET", "/v1/subscriptions/killtrim", nil, &st)
	t.Logf("kill -9 x3 while trimming %d messages: %d pushes, %d distinct; stream empty", n, rc.count(), rc.distinct())
}

func scrape(t *testing.T, br *bridge) string {
	t.Helper()
	resp, err := http.Get(br.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return fmt.Sprint(out)
}
