package e2e

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

// With no BRIDGE_REDIS_URL the binary runs on its embedded server and does the whole job:
// publish, push, retry, dead-letter.
func TestEmbeddedDefault(t *testing.T) {
	t.Parallel()
	br := startBridge(t)
	if !strings.Contains(br.log.String(), "EMBEDDED") {
		t.Fatal("no loud warning about the embedded, non-durable server")
	}
	rc := newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		switch {
		case string(p.Body) == "poison":
			w.WriteHeader(400)
		case nth == 0:
			w.WriteHeader(503)
		default:
			w.WriteHeader(200)
		}
	})
	rc.setSecret(br.subscribe("emb", fastSub(rc.URL, "embedded.orders", nil)))
	_, id := br.publish("embedded.orders", []byte("hello"))
	br.publish("embedded.orders", []byte("poison"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 2 }, "no retry on embedded")
	ps := rc.byID(id)
	if !ps[0].Verified || !ps[1].Verified || ps[1].Count != 2 {
		t.Fatalf("pushes %+v", ps)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(br.deadLetters("emb").DeadLetters) == 1 }, "no dead letter on embedded")
	// Lag is what is left to read: nothing, once everything was pushed (the embedded server
	// reports the stream's length as lag; the bridge counts instead).
	for i := range 50 {
		br.publish("embedded.orders", []byte(strings.Repeat("x", i)))
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == 52 }, "not delivered")
	var s struct {
		Stats struct {
			Lag int64 `json:"lag"`
		} `json:"stats"`
	}
	// Pushed means read: lag is 0 at once (a moment for the last ack is allowed).
	redistest.Eventually(t, time.Second, func() bool {
		br.do("GET", "/v1/subscriptions/emb", nil, &s)
		return s.Stats.Lag == 0
	}, "lag %d after every message was read", s.Stats.Lag)
	br.do("POST", "/v1/subscriptions/emb/pause", nil, nil)
	for range 7 {
		br.publish("embedded.orders", []byte("waiting"))
	}
	br.do("GET", "/v1/subscriptions/emb", nil, &s)
	if s.Stats.Lag != 7 {
		t.Fatalf("lag %d with 7 messages waiting", s.Stats.Lag)
	}
}

// Entries XADDed by ruststream-fred (or redis-cli in its layout) are pushed with body and
// headers; foreign entries arrive as a JSON object of their fields.
func TestInteropWithRuststreamLayout(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("rust")
	rc.setSecret(br.subscribe("interop", fastSub(rc.URL, subject, nil)))
	rustID, err := rs.Do(t, "XADD", subject, "*", "_payload", "\x00\x01binary", "h:content-type", "application/octet-stream",
		"h:X-Custom", "v", "h:redis-partition-key", "k").ToString()
	if err != nil {
		t.Fatal(err)
	}
	foreignID, err := rs.Do(t, "XADD", subject, "*", "order", "42", "state", "paid").ToString()
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 2 }, "got %d pushes", rc.count())
	rp := rc.byID(strings.ReplaceAll(subject, ".", "~") + ":" + rustID)
	if len(rp) != 1 || string(rp[0].Body) != "\x00\x01binary" || rp[0].Header.Get("X-Custom") != "v" ||
		rp[0].Header.Get("Content-Type") != "application/octet-stream" || rp[0].Header.Get("Redis-Partition-Key") != "k" || !rp[0].Verified {
		t.Fatalf("ruststream entry pushed as %+v", rp)
	}
	fp := rc.byID(strings.ReplaceAll(subject, ".", "~") + ":" + foreignID)
	var obj map[string]string
	if len(fp) != 1 || json.Unmarshal(fp[0].Body, &obj) != nil || obj["order"] != "42" || obj["state"] != "paid" ||
		fp[0].Header.Get("Content-Type") != "application/json" {
		t.Fatalf("foreign entry pushed as %+v", fp)
	}
}

// A pending id whose entry was trimmed is acked and counted as lost (no crash, no hot
// loop); a deleted stream (NOGROUP) gets its group back and delivery goes on.
func TestTrimmedAndDeletedStreams(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("trim")
	// Paused while the test plays a consumer that dies holding an entry.
	br.subscribe("trim", fastSub(rc.URL, subject, map[string]any{"timeout": "1s", "visibility_timeout": "2s", "max_in_flight": 1, "paused": true}))
	// Simulate a consumer that died holding an entry, then the entry trimmed away.
	if _, err := rs.Do(t, "XADD", subject, "*", "_payload", "gone").ToString(); err != nil {
		t.Fatal(err)
	}
	if err := rs.Do(t, "XREADGROUP", "GROUP", "bridge:trim", "dead-consumer", "COUNT", "1", "STREAMS", subject, ">").Error(); err != nil {
		t.Fatal(err)
	}
	if err := rs.Do(t, "XTRIM", subject, "MAXLEN", "0").Error(); err != nil {
		t.Fatal(err)
	}
	br.do("POST", "/v1/subscriptions/trim/resume", nil, nil)
	redistest.Eventually(t, 15*time.Second, func() bool { return pendingCount(t, rs, subject, "trim") == 0 }, "trimmed pending entry not cleared")
	redistest.Eventually(t, 5*time.Second, func() bool { return strings.Contains(br.log.String(), "counted as lost") }, "loss not logged")

	// Delete the stream with its group: the bridge recreates the group and keeps delivering.
	if err := rs.Do(t, "DEL", subject).Error(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	_, id := br.publish(subject, []byte("after-delete"))
	redistest.Eventually(t, 15*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "no delivery after the stream was deleted")
	redistest.Eventually(t, 5*time.Second, func() bool { return strings.Contains(br.log.String(), "recreated") }, "group recreation not logged")
}

// Webhook targets in loopback/private ranges are refused: a literal IP at registration, a
// name at connect time (the receiver gets nothing). Redirects are never followed.
func TestSSRFGuard(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_TARGET_ALLOW_CIDRS=")
	rc := newReceiver(t, nil)
	var prob struct {
		Code string `json:"code"`
	}
	var prob2 struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	}
	// Literal addresses, and a name that resolves only to loopback, are refused at PUT.
	url := strings.Replace(rc.URL, "127.0.0.1", "localhost", 1)
	for _, u := range []string{rc.URL, "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/", "http://10.0.0.1/", "http://[::ffff:127.0.0.1]/", url} {
		if code := br.do("PUT", "/v1/subscriptions/ssrf", map[string]any{"subject": "s", "url": u}, &prob2); code != 400 || prob2.Code != "target_not_allowed" ||
			!strings.Contains(prob2.Detail, "BRIDGE_TARGET_ALLOW_CIDRS") {
			t.Fatalf("%s: %d %+v", u, code, prob2)
		}
	}
	keys, _ := rs.Do(t, "KEYS", "*").AsStrSlice()
	for _, k := range keys {
		if k != "bridge:processes" { // the engine's own liveness report
			t.Fatalf("refused registrations wrote keys: %v", keys)
		}
	}
	_ = prob
	// DNS can change after registration: a process that allows loopback registers the name,
	// one that does not refuses it at connect time and says how to allow it.
	allowing := startBridge(t, redisURL(rs), "BRIDGE_TARGET_ALLOW_CIDRS=127.0.0.1/32,::1/128")
	subject := uniq("ssrf")
	allowing.subscribe("ssrf", fastSub(url, subject, map[string]any{"max_deliveries": 2, "paused": true}))
	allowing.kill()
	br.do("POST", "/v1/subscriptions/ssrf/resume", nil, nil)
	br.publish(subject, []byte("x"))
	var d deadLetters
	redistest.Eventually(t, 15*time.Second, func() bool {
		d = br.deadLetters("ssrf")
		return len(d.DeadLetters) == 1
	}, "not dead-lettered")
	if rc.count() != 0 {
		t.Fatal("the guarded receiver was reached")
	}
	if le := d.DeadLetters[0].LastError; !strings.Contains(le, "not allowed") || !strings.Contains(le, "BRIDGE_TARGET_ALLOW_CIDRS") || d.DeadLetters[0].LastStatus != 0 {
		t.Fatalf("dead letter %+v", d.DeadLetters[0])
	}
}

func TestRedirectIsNotFollowed(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	target := newReceiver(t, nil)
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) {
		w.Header().Set("Location", target.URL)
		w.WriteHeader(307)
	})
	subject := uniq("redir")
	br.subscribe("redir", fastSub(rc.URL, subject, nil))
	br.publish(subject, []byte("x"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(br.deadLetters("redir").DeadLetters) == 1 }, "307 not dead-lettered")
	if target.count() != 0 {
		t.Fatal("redirect followed")
	}
}

// BRIDGE_TOKEN: every /v1 route needs the bearer token; health stays open.
func TestBearerToken(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	const token = "s3cret-token-0123456789"
	br := startBridge(t, redisURL(rs), "BRIDGE_TOKEN="+token)
	for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Basic Zm9vOmJhcg==", "Bearer "} {
		req, _ := http.NewRequest("POST", br.URL+"/v1/subjects/a/messages", strings.NewReader("x"))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") ||
			resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("auth %q: %d %v", auth, resp.StatusCode, resp.Header)
		}
	}
	req, _ := http.NewRequest("POST", br.URL+"/v1/subjects/a/messages", strings.NewReader("x"))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("with the token: %d", resp.StatusCode)
	}
	if n, _ := rs.Do(t, "XLEN", "a").AsInt64(); n != 1 {
		t.Fatalf("stream has %d entries, want 1 (refused requests must write nothing)", n)
	}
	if code := br.do("GET", "/healthz", nil, nil); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	if strings.Contains(br.log.String(), token) {
		t.Fatal("the token appears in the log")
	}
}

// Invalid configuration stops the start with one clear line naming the variable.
func TestInvalidConfiguration(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"BRIDGE_MAX_BODY=lots":            "BRIDGE_MAX_BODY",
		"BRIDGE_SHUTDOWN_GRACE=soon":      "BRIDGE_SHUTDOWN_GRACE",
		"BRIDGE_LISTEN=0.0.0.0:0":         "BRIDGE_TOKEN",
		"BRIDGE_LOG_LEVEL=loud":           "BRIDGE_LOG_LEVEL",
		"BRIDGE_TARGET_ALLOW_CIDRS=10.0/": "BRIDGE_TARGET_ALLOW_CIDRS",
		"BRIDGE_REDIS_URL=http://x":       "BRIDGE_REDIS_URL",
		"BRIDGE_AUTH=maybe":               "BRIDGE_AUTH",
	}
	for env, name := range cases {
		cmd := exec.Command(bridgeBin)
		cmd.Env = []string{env}
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("%s: started", env)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.Contains(lines[0], name) {
			t.Fatalf("%s: want one line naming %s, got %q", env, name, out)
		}
	}
}
