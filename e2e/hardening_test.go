package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bridge-dev/bridge/internal/redistest"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// A webhook that answers 101 Switching Protocols and then says nothing: the push is a
// failed attempt bounded by the timeout and retried, and SIGTERM still exits within the
// grace while such a push is on the wire.
func TestSwitchingProtocolsWebhookIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_SHUTDOWN_GRACE=2s")
	var mu sync.Mutex
	var held []func()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c()
		}
	})
	silent := map[string]bool{}
	rc := newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		mu.Lock()
		hang := nth == 0 || silent[string(p.Body)]
		mu.Unlock()
		if !hang {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: silence\r\n\r\n")
		_ = buf.Flush()
		mu.Lock()
		held = append(held, func() { _ = conn.Close() }) // silent until the test ends
		mu.Unlock()
	})
	subject := uniq("switch")
	br.subscribe("switch", fastSub(rc.URL, subject, map[string]any{"timeout": "1s", "visibility_timeout": "3s"}))
	_, id := br.publish(subject, []byte("first"))
	redistest.Eventually(t, 15*time.Second, func() bool { return len(rc.byID(id)) >= 2 }, "the 101 answer was not retried")
	first := rc.byID(id)
	// A retry after the backoff (100-400ms), not a reclaim after the 3s visibility timeout
	// of a push still stuck on the open connection.
	if gap := first[1].At.Sub(first[0].At); gap > 2500*time.Millisecond {
		t.Fatalf("next push %s after the 101: the attempt was not failed and retried", gap)
	}
	var s struct {
		Stats struct {
			Delivered int64  `json:"delivered"`
			DLQSize   int64  `json:"dlq_size"`
			LastError string `json:"last_error"`
		} `json:"stats"`
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		br.do("GET", "/v1/subscriptions/switch", nil, &s)
		return s.Stats.Delivered == 1
	}, "not acked after the retry: %+v", s.Stats)
	if s.Stats.DLQSize != 0 {
		t.Fatalf("dead-lettered: %+v", s.Stats)
	}

	// Now a message whose every push hangs after the 101, and SIGTERM meanwhile.
	mu.Lock()
	silent["hang"] = true
	mu.Unlock()
	_, hang := br.publish(subject, []byte("hang"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(hang)) >= 1 }, "not pushed")
	code, took := br.terminate(10 * time.Second)
	if code != 0 || took > 4*time.Second {
		t.Fatalf("SIGTERM during a silent 101: exit %d after %s (grace 2s)", code, took)
	}
	t.Logf("101 then silence: retried after %s; SIGTERM exit %d in %s", first[1].At.Sub(first[0].At).Round(time.Millisecond), code, took.Round(time.Millisecond))
}

// An https webhook, its certificate trusted through SSL_CERT_FILE as an operator would: every
// message arrives once over TLS, signed, on kept-alive connections; an answer of status 000
// over TLS is a failed attempt, not an acknowledgement.
func TestHTTPSWebhook(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	var conns, plain atomic.Int64
	rc := &receiver{seen: map[string]int{}}
	rc.answer = func(w http.ResponseWriter, p push, nth int) {
		if string(p.Body) == "zero" && nth == 0 {
			conn, buf, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			_, _ = buf.WriteString("HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n")
			_ = buf.Flush()
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	rc.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			plain.Add(1)
		}
		rc.serve(w, r)
	}))
	rc.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	rc.StartTLS()
	t.Cleanup(rc.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rc.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	br := startBridge(t, redisURL(rs), "SSL_CERT_FILE="+ca)
	subject := uniq("tls")
	rc.setSecret(br.subscribe("tls", fastSub(rc.URL, subject, map[string]any{"max_in_flight": 4})))
	const n = 200
	for i := range n {
		if code, _ := br.publish(subject, []byte(strconv.Itoa(i))); code != http.StatusAccepted {
			t.Fatalf("publish: %d", code)
		}
	}
	redistest.Eventually(t, 20*time.Second, func() bool { return rc.distinct() == n }, "%d of %d delivered over TLS", rc.distinct(), n)
	for _, p := range rc.all() {
		if !p.Verified {
			t.Fatalf("push %s: signature does not verify", p.ID)
		}
	}
	if c := rc.count(); c != n || plain.Load() != 0 {
		t.Fatalf("%d pushes for %d messages, %d without TLS", c, n, plain.Load())
	}
	if c := conns.Load(); c > 8 {
		t.Fatalf("%d TLS connections for %d pushes at max_in_flight 4: not kept alive", c, n)
	}
	_, id := br.publish(subject, []byte("zero"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) >= 2 }, "the 000 answer was not retried")
	t.Logf("https: %d pushes on %d connections; status 000 retried", n, conns.Load())
}

// A hundred dead letters of 1 MiB: a listing of all of them holds each body once, cut at
// 64 KiB, and neither it nor a replay of all of them grows the bridge by more than a few
// pages; one dead letter read by id comes back whole.
func TestDeadLetterListingMemoryIsBounded(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	// The garbage of dead-lettering a hundred 1 MiB messages must not count as the
	// listing's: a low GOGC collects it before it can lift the peak while the suite loads
	// the machine (the bound is about what a listing holds, not about GC pacing).
	br := startBridge(t, redisURL(rs), "GOGC=25")
	var failing atomic.Bool
	failing.Store(true)
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		if failing.Load() {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	subject := uniq("bigdlq")
	br.subscribe("bigdlq", fastSub(rc.URL, subject, map[string]any{"max_in_flight": 4}))
	const n, size = 100, 1 << 20
	text := bytes.Repeat([]byte("é"), size/2) // valid UTF-8: shown as "body", cut on a rune boundary
	for i := range n {
		body := text
		if i%2 == 1 {
			body = bytes.Repeat([]byte{0xff, 0x00}, size/2) // binary: shown as "body_base64"
		}
		if code, _ := br.publish(subject, body); code != http.StatusAccepted {
			t.Fatalf("publish %d: %d", i, code)
		}
	}
	var d struct {
		DeadLetters []struct {
			ID            string  `json:"id"`
			DeadLetterID  string  `json:"dead_letter_id"`
			Body          *string `json:"body"`
			BodyBase64    *string `json:"body_base64"`
			BodySize      int     `json:"body_size"`
			BodyTruncated bool    `json:"body_truncated"`
		} `json:"dead_letters"`
		Next string `json:"next"`
	}
	redistest.Eventually(t, 60*time.Second, func() bool {
		var s subscription
		br.do("GET", "/v1/subscriptions/bigdlq", nil, &s)
		return s.Stats.DLQSize == n
	}, "not all dead-lettered")
	before := br.memStatus("VmHWM")
	resp, err := http.Get(br.URL + "/v1/subscriptions/bigdlq/dead-letters?limit=100")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("listing: %d %s", resp.StatusCode, tail(string(raw), 300))
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	listed := len(d.DeadLetters)
	for after := d.Next; after != ""; {
		var more struct {
			DeadLetters []json.RawMessage `json:"dead_letters"`
			Next        string            `json:"next"`
		}
		br.do("GET", "/v1/subscriptions/bigdlq/dead-letters?limit=100&after="+after, nil, &more)
		listed += len(more.DeadLetters)
		after = more.Next
	}
	grew := br.memStatus("VmHWM") - before
	if listed != n || len(raw) > 8<<20 {
		t.Fatalf("listed %d of %d in pages; the first page is %d bytes", listed, n, len(raw))
	}
	for i, dl := range d.DeadLetters {
		if (dl.Body == nil) == (dl.BodyBase64 == nil) || !dl.BodyTruncated || dl.BodySize != size {
			t.Fatalf("dead letter %d: body %v, base64 %v, truncated %v, size %d", i, dl.Body != nil, dl.BodyBase64 != nil, dl.BodyTruncated, dl.BodySize)
		}
		if dl.Body != nil && (len(*dl.Body) > 64<<10 || len(*dl.Body) < 64<<10-4 || !utf8.ValidString(*dl.Body)) {
			t.Fatalf("text body cut to %d bytes", len(*dl.Body))
		}
	}
	if grew > 100<<10 {
		t.Fatalf("peak RSS grew by %d MiB listing %d dead letters of 1 MiB", grew>>10, n)
	}
	var whole struct {
		ID            string `json:"id"`
		Body          string `json:"body"`
		BodySize      int    `json:"body_size"`
		BodyTruncated bool   `json:"body_truncated"`
	}
	for _, id := range []string{d.DeadLetters[0].DeadLetterID, d.DeadLetters[0].ID} {
		if code := br.do("GET", "/v1/subscriptions/bigdlq/dead-letters/"+id, nil, &whole); code != 200 || len(whole.Body) != size || whole.BodyTruncated {
			t.Fatalf("whole dead letter by %s: %d, %d bytes, truncated %v", id, code, len(whole.Body), whole.BodyTruncated)
		}
	}
	if code := br.do("GET", "/v1/subscriptions/bigdlq/dead-letters/nope:1-0", nil, nil); code != 404 {
		t.Fatalf("unknown dead letter: %d", code)
	}

	failing.Store(false)
	beforeReplay := br.memStatus("VmHWM")
	var replayed struct {
		Replayed int `json:"replayed"`
	}
	if code := br.do("POST", "/v1/subscriptions/bigdlq/dead-letters/replay", nil, &replayed); code != 200 || replayed.Replayed != n {
		t.Fatalf("replay: %d %+v", code, replayed)
	}
	replayGrew := br.memStatus("VmHWM") - beforeReplay
	redistest.Eventually(t, 60*time.Second, func() bool {
		var s struct {
			Stats struct {
				Delivered int64 `json:"delivered"`
			} `json:"stats"`
		}
		br.do("GET", "/v1/subscriptions/bigdlq", nil, &s)
		return s.Stats.Delivered == n
	}, "replayed dead letters not delivered")
	if replayGrew > 100<<10 {
		t.Fatalf("peak RSS grew by %d MiB replaying %d dead letters of 1 MiB", replayGrew>>10, n)
	}
	t.Logf("%d dead letters of 1 MiB: first page %d KiB; peak RSS +%d MiB listing, +%d MiB replaying", n, len(raw)>>10, grew>>10, replayGrew>>10)
}

// A rate limit far below the backlog: no entry waits for the limiter past its visibility
// timeout, so none is reclaimed by the healthy process and pushed twice.
func TestRateLimitNeverDuplicates(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("rate")
	br.subscribe("rate", fastSub(rc.URL, subject, map[string]any{"rate_limit": 2, "timeout": "1s", "visibility_timeout": "2s"}))
	const n = 24
	start := time.Now()
	for i := range n {
		if code, _ := br.publish(subject, []byte(strconv.Itoa(i))); code != http.StatusAccepted {
			t.Fatalf("publish: %d", code)
		}
	}
	redistest.Eventually(t, 30*time.Second, func() bool { return rc.distinct() == n }, "%d of %d pushed", rc.distinct(), n)
	took := time.Since(start)
	time.Sleep(2500 * time.Millisecond) // a reclaim would come after the visibility timeout
	if dups := rc.count() - n; dups != 0 {
		t.Fatalf("%d duplicates from one healthy process", dups)
	}
	if took < 9*time.Second {
		t.Fatalf("%d messages at 2/s took %s", n, took)
	}
	t.Logf("%d messages at rate_limit 2: %s, no duplicate", n, took.Round(100*time.Millisecond))
}

// Connections that announce a 1 MiB body and send 1 KB: the bridge holds what arrived,
// not what was announced. Two waves, so that the second reuses (and must clear) the heap
// the first one freed.
func TestAnnouncedBodyDoesNotReserveMemory(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	beforeRSS, beforeHeap := br.memStatus("VmRSS"), br.heapInuse()
	const conns = 300
	var peakHeap int64
	for range 2 {
		var open []net.Conn
		for range conns {
			c, err := net.Dial("tcp", br.addr)
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, c)
			req := fmt.Sprintf("POST /v1/subjects/slow/messages HTTP/1.1\r\nHost: bridge\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", 1<<20)
			if _, err := c.Write(append([]byte(req), bytes.Repeat([]byte("x"), 1000)...)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Second) // every handler is reading its body by now
		peakHeap = max(peakHeap, br.heapInuse())
		for _, c := range open {
			_ = c.Close()
		}
	}
	rss := br.memStatus("VmRSS")
	if grew := peakHeap - beforeHeap; grew > 64<<20 {
		t.Fatalf("heap in use grew by %d MiB for %d connections that sent 1 KB each", grew>>20, conns)
	}
	t.Logf("2 x %d connections announcing 1 MiB, sending 1 KB: heap in use %d -> %d MiB, RSS %d -> %d MiB",
		conns, beforeHeap>>20, peakHeap>>20, beforeRSS>>10, rss>>10)
}

// DELETE while failing pushes are in flight: they settle without writing anything of the
// deleted subscription, and one created again under the same name starts clean.
func TestDeleteDuringFailingPushesLeavesNothing(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	var inFlight atomic.Int64
	failing := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		time.Sleep(400 * time.Millisecond)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	subject := uniq("delfly")
	br.subscribe("delfly", fastSub(failing.URL, subject, map[string]any{
		"max_in_flight": 16, "retry": map[string]any{"min_backoff": "200ms", "max_backoff": "200ms"},
	}))
	for i := range 16 {
		br.publish(subject, []byte(strconv.Itoa(i)))
	}
	// Some are retrying already, 16 are on the wire.
	redistest.Eventually(t, 10*time.Second, func() bool { return failing.count() > 16 && inFlight.Load() == 16 }, "pushes not in flight: %d pushes, %d in flight", failing.count(), inFlight.Load())
	if code := br.do("DELETE", "/v1/subscriptions/delfly", nil, nil); code != http.StatusNoContent {
		t.Fatalf("delete: %d", code)
	}
	redistest.Eventually(t, 5*time.Second, func() bool { return inFlight.Load() == 0 }, "pushes did not finish")
	time.Sleep(300 * time.Millisecond) // their settlements ran by now
	keys, _ := rs.Do(t, "KEYS", "bridge:{"+subject+"}:*").AsStrSlice()
	if len(keys) != 0 {
		t.Fatalf("the deleted subscription left keys behind: %v", keys)
	}
	ok := newReceiver(t, nil)
	br.subscribe("delfly", fastSub(ok.URL, subject, nil))
	_, fresh := br.publish(subject, []byte("after"))
	redistest.Eventually(t, 10*time.Second, func() bool { return ok.count() >= 1 }, "nothing delivered after re-creation")
	time.Sleep(time.Second) // anything old would show up by now
	if ok.count() != 1 || len(ok.byID(fresh)) != 1 {
		t.Fatalf("re-created subscription got %d pushes (%d old messages)", ok.count(), ok.count()-len(ok.byID(fresh)))
	}
}

// A "*" pattern Pub/Sub subscription receives what is published, never the bridge's own
// change notifications.
func TestPatternSubscriptionSkipsInternalChannels(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	br.subscribe("all", map[string]any{"subject": "*", "url": rc.URL, "transport": "pubsub", "pattern": true})
	time.Sleep(500 * time.Millisecond) // subscribed
	for i := range 3 {
		br.subscribe(fmt.Sprint("other", i), fastSub(rc.URL, uniq("x"), nil))
		br.do("POST", fmt.Sprintf("/v1/subscriptions/other%d/pause", i), nil, nil)
	}
	req, _ := http.NewRequest("POST", br.URL+"/v1/subjects/ev.one/messages?transport=pubsub", bytes.NewReader([]byte("hi")))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	redistest.Eventually(t, 5*time.Second, func() bool { return rc.count() >= 1 }, "published message not pushed")
	time.Sleep(500 * time.Millisecond)
	for _, p := range rc.all() {
		if subj := p.Header.Get("Bridge-Subject"); subj != "ev.one" {
			t.Fatalf("pushed a message of %q", subj)
		}
	}
	if rc.count() != 1 {
		t.Fatalf("%d pushes, want 1", rc.count())
	}
}

// Two processes; every management change answered 2xx by one is in force in both at once:
// nothing is pushed after a pause, a push right after a rotation verifies with the new
// secret, a push right after a URL change goes to the new URL. In a loop.
func TestManagementChangesInForceAcrossProcesses(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	a := startBridge(t, redisURL(rs))
	b := startBridge(t, redisURL(rs))
	first := newReceiver(t, nil)
	second := newReceiver(t, nil)
	subject := uniq("inforce")
	cfg := fastSub(first.URL, subject, nil)
	a.subscribe("inforce", cfg)
	time.Sleep(500 * time.Millisecond) // both deliver it
	violations := 0
	const rounds = 3
	for round := range rounds {
		// Pause through one process, publish through the other at once.
		if code := a.do("POST", "/v1/subscriptions/inforce/pause", nil, nil); code != 200 {
			t.Fatalf("pause: %d", code)
		}
		before := first.count() + second.count()
		var ids []string
		for i := range 25 {
			_, id := b.publish(subject, []byte(fmt.Sprintf("r%d-%d", round, i)))
			ids = append(ids, id)
		}
		time.Sleep(1500 * time.Millisecond)
		if n := first.count() + second.count() - before; n != 0 {
			t.Errorf("round %d: %d of 25 pushed after pause answered", round, n)
			violations += n
		}
		if code := b.do("POST", "/v1/subscriptions/inforce/resume", nil, nil); code != 200 {
			t.Fatalf("resume: %d", code)
		}
		redistest.Eventually(t, 15*time.Second, func() bool {
			for _, id := range ids {
				if len(first.byID(id))+len(second.byID(id)) == 0 {
					return false
				}
			}
			return true
		}, "round %d: messages not delivered after resume", round)

		// Rotate through one, publish through the other at once.
		var sv struct {
			Secret string `json:"secret"`
		}
		if code := b.do("POST", "/v1/subscriptions/inforce/secret/rotate", nil, &sv); code != 200 {
			t.Fatalf("rotate: %d", code)
		}
		_, id := a.publish(subject, []byte(fmt.Sprint("rotated-", round)))
		redistest.Eventually(t, 10*time.Second, func() bool { return len(first.byID(id))+len(second.byID(id)) > 0 }, "not pushed")
		p := append(first.byID(id), second.byID(id)...)[0]
		if !verifies(sv.Secret, p) {
			t.Errorf("round %d: push right after rotate does not verify with the new secret (%s)", round, p.Header.Get("Webhook-Signature"))
			violations++
		}

		// Move the URL through one, publish through the other at once.
		target, other := second, first
		if round%2 == 1 {
			target, other = first, second
		}
		cfg["url"] = target.URL
		if code := a.do("PUT", "/v1/subscriptions/inforce", cfg, nil); code != 200 {
			t.Fatalf("put: %d", code)
		}
		_, id = b.publish(subject, []byte(fmt.Sprint("moved-", round)))
		redistest.Eventually(t, 10*time.Second, func() bool { return len(target.byID(id))+len(other.byID(id)) > 0 }, "not pushed")
		if n := len(other.byID(id)); n != 0 {
			t.Errorf("round %d: push right after the URL change went to the old URL", round)
			violations++
		}
	}
	t.Logf("%d rounds of pause/publish/resume, rotate/publish, move/publish across 2 processes: %d violations", rounds, violations)
}

func verifies(secret string, p push) bool {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return false
	}
	for _, sig := range strings.Fields(p.Header.Get("Webhook-Signature")) {
		h := p.Header.Clone()
		h.Set("Webhook-Signature", sig)
		if wh.Verify(p.Body, h) == nil {
			return true
		}
	}
	return false
}

// Redis restarted without persistence loses the registry: the subscriptions file is
// applied again (with a warning) and delivery goes on.
func TestSubscriptionsFileReappliedAfterDataLoss(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{}) // no persistence
	rc := newReceiver(t, nil)
	subject := uniq("lost")
	file := filepath.Join(t.TempDir(), "subs.yaml")
	yaml := fmt.Sprintf("subscriptions:\n  - name: survives\n    subject: %s\n    url: %s\n", subject, rc.URL)
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	br := startBridge(t, redisURL(rs), "BRIDGE_SUBSCRIPTIONS_FILE="+file)
	_, id := br.publish(subject, []byte("before"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed")
	rs.Restart(t) // no persistence: everything is gone, the registry included
	var code int
	redistest.Eventually(t, 15*time.Second, func() bool {
		code = br.do("GET", "/v1/subscriptions/survives", nil, nil)
		return code == 200
	}, "subscription not restored from the file: %d", code)
	_, id = br.publish(subject, []byte("after"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed after Redis lost its data")
	if !strings.Contains(br.log.String(), "Redis lost its data") {
		t.Fatal("no warning that Redis lost its data")
	}
}

// SIGTERM while pushes wait to be settled and Redis is gone: the exit still comes within
// the grace (settlements and the final ack flush are bounded by it).
func TestShutdownWithinGraceWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_SHUTDOWN_GRACE=2s")
	release := make(chan struct{})
	var once sync.Once
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		<-release
		w.WriteHeader(http.StatusNoContent)
	})
	// After the receiver's own cleanup was registered, so it runs first: its Close waits
	// for these handlers.
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	subject := uniq("downstop")
	br.subscribe("downstop", fastSub(rc.URL, subject, map[string]any{"timeout": "20s", "max_in_flight": 8}))
	for i := range 8 {
		br.publish(subject, []byte(strconv.Itoa(i)))
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 8 }, "%d of 8 pushes in flight", rc.count())
	rs.Kill(t)
	_ = br.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond)
	once.Do(func() { close(release) }) // pushes finish; their acks cannot reach Redis
	start := time.Now()
	select {
	case <-br.done:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10s after SIGTERM")
	}
	if took := time.Since(start) + 300*time.Millisecond; took > 3500*time.Millisecond {
		t.Fatalf("exit %s after SIGTERM with a 2s grace", took)
	}
	if code := br.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// A gzip body is stored and pushed with its Content-Encoding, byte for byte.
func TestContentEncodingIsKept(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("gzip")
	br.subscribe("gzip", fastSub(rc.URL, subject, nil))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(`{"order":42}`))
	_ = zw.Close()
	_, id := br.publish(subject, gz.Bytes(), "Content-Type", "application/json", "Content-Encoding", "gzip")
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed")
	p := rc.byID(id)[0]
	if p.Header.Get("Content-Encoding") != "gzip" || p.Header.Get("Content-Type") != "application/json" || !bytes.Equal(p.Body, gz.Bytes()) {
		t.Fatalf("push: encoding %q, type %q, body intact %v", p.Header.Get("Content-Encoding"), p.Header.Get("Content-Type"), bytes.Equal(p.Body, gz.Bytes()))
	}
	// Durations in logs carry their unit.
	br.terminate(10 * time.Second)
	if !strings.Contains(br.log.String(), `"grace":"30s"`) {
		t.Fatalf("shutdown log does not give the grace with its unit:\n%s", tail(br.log.String(), 500))
	}
}

// A connection that a client's pool opened and left unused for longer than the 5-s header
// timeout still takes a publish (it used to be closed at 5 s, and a POST sent on it as it
// closed failed with a bare EOF that no client retries); a connection that starts a
// request and stalls is still cut at 5 s, and an unused connection does not hold up
// SIGTERM.
func TestUnusedConnectionStillTakesAPublish(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("pooled")
	br.subscribe("pooled", fastSub(rc.URL, subject, nil))
	dialBridge := func() net.Conn {
		c, err := net.Dial("tcp", br.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	silent, stalled := dialBridge(), dialBridge()
	if _, err := io.WriteString(stalled, "POST /v1/subjects/"+subject+"/messages HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)

	body := `{"pooled":true}`
	req := fmt.Sprintf("POST /v1/subjects/%s/messages HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", subject, len(body), body)
	if _, err := io.WriteString(silent, req); err != nil {
		t.Fatal(err)
	}
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(silent), nil)
	if err != nil {
		t.Fatalf("publish on a connection unused for 6 s: %v", err)
	}
	var out struct {
		ID string `json:"id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || out.ID == "" {
		t.Fatalf("publish on a connection unused for 6 s: %d, id %q", resp.StatusCode, out.ID)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(out.ID)) == 1 }, "not pushed")

	_ = stalled.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadAll(stalled); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a request whose headers stalled for 6 s is still open")
	}

	// Nor does an unused connection hold up a shutdown (net/http waits up to 5 s for a
	// connection that has not sent its first request).
	dialBridge()
	time.Sleep(100 * time.Millisecond)
	if code, took := br.terminate(10 * time.Second); code != 0 || took > 2*time.Second {
		t.Fatalf("SIGTERM with an unused connection open: exit %d in %s", code, took)
	}
}
