package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Pause: nothing is pushed and messages wait; resume: they arrive. Seek to the beginning
// replays the stream.
func TestPauseResumeSeek(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("pause")
	br.subscribe("p", fastSub(rc.URL, subject, nil))
	br.publish(subject, []byte("first"))
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 1 }, "first not pushed")

	var s subscription
	if code := br.do("POST", "/v1/subscriptions/p/pause", nil, &s); code != 200 || !s.Paused {
		t.Fatalf("pause: %d %+v", code, s)
	}
	time.Sleep(1500 * time.Millisecond) // every process sees the change within 2 s
	for i := range 5 {
		br.publish(subject, []byte(fmt.Sprint("waiting-", i)))
	}
	time.Sleep(1500 * time.Millisecond)
	if rc.count() != 1 {
		t.Fatalf("%d pushes while paused", rc.count())
	}
	br.do("GET", "/v1/subscriptions/p", nil, &s)
	if !s.Paused || s.Reason == "" {
		t.Fatalf("paused=%v reason=%q", s.Paused, s.Reason)
	}
	if code := br.do("POST", "/v1/subscriptions/p/resume", nil, &s); code != 200 || s.Paused {
		t.Fatalf("resume: %d", code)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 6 }, "%d pushes after resume", rc.count())

	var out struct {
		To string `json:"to"`
	}
	if code := br.do("POST", "/v1/subscriptions/p/seek", map[string]string{"to": "beginning"}, &out); code != 200 {
		t.Fatalf("seek: %d", code)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.count() == 12 }, "%d pushes after seek to beginning", rc.count())
	if rc.distinct() != 6 {
		t.Fatalf("%d distinct ids after replay, want 6", rc.distinct())
	}
	// Seek to the end skips what is there; a time seeks by entry time.
	br.do("POST", "/v1/subscriptions/p/pause", nil, nil)
	time.Sleep(1500 * time.Millisecond)
	br.publish(subject, []byte("skipped"))
	time.Sleep(5 * time.Millisecond) // entry ids have millisecond resolution
	mark := time.Now()
	time.Sleep(5 * time.Millisecond)
	_, keep := br.publish(subject, []byte("kept"))
	if code := br.do("POST", "/v1/subscriptions/p/seek", map[string]string{"to": mark.UTC().Format(time.RFC3339Nano)}, nil); code != 200 {
		t.Fatalf("seek time: %d", code)
	}
	br.do("POST", "/v1/subscriptions/p/resume", nil, nil)
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(keep)) == 1 }, "message after the seek time not pushed")
	time.Sleep(500 * time.Millisecond)
	if rc.count() != 13 {
		t.Fatalf("%d pushes, want 13 (the message before the seek time is skipped)", rc.count())
	}
}

// After a rotation pushes carry two signatures, each verifying with its own secret.
func TestSecretRotation(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("rotate")
	oldSecret := br.subscribe("rot", fastSub(rc.URL, subject, nil))
	var sv struct {
		Secret         string `json:"secret"`
		PreviousSecret string `json:"previous_secret"`
		Until          string `json:"previous_secret_until"`
	}
	if code := br.do("POST", "/v1/subscriptions/rot/secret/rotate", nil, &sv); code != 200 || sv.PreviousSecret != oldSecret || sv.Secret == oldSecret || sv.Until == "" {
		t.Fatalf("rotate: %d %+v", code, sv)
	}
	time.Sleep(1500 * time.Millisecond)
	_, id := br.publish(subject, []byte(`{"rotated":true}`))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed")
	p := rc.byID(id)[0]
	sigs := strings.Fields(p.Header.Get("Webhook-Signature"))
	if len(sigs) != 2 {
		t.Fatalf("signature header %q, want two", p.Header.Get("Webhook-Signature"))
	}
	for _, secret := range []string{oldSecret, sv.Secret} {
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			t.Fatal(err)
		}
		for _, sig := range sigs {
			h := p.Header.Clone()
			h.Set("Webhook-Signature", sig)
			if wh.Verify(p.Body, h) == nil {
				goto verified
			}
		}
		t.Fatalf("no signature verifies with %s…", secret[:10])
	verified:
	}
	var got struct {
		Secret         string `json:"secret"`
		PreviousSecret string `json:"previous_secret"`
	}
	br.do("GET", "/v1/subscriptions/rot/secret", nil, &got)
	if got.Secret != sv.Secret || got.PreviousSecret != oldSecret {
		t.Fatalf("GET secret after rotation: %+v", got)
	}
}

// Stats are shared by every process, and /metrics shows what the engine does.
func TestStatsAndMetrics(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	other := startBridge(t, redisURL(rs))
	rc := newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		switch string(p.Body) {
		case "bad":
			w.WriteHeader(400)
		case "flaky":
			if nth == 0 {
				w.WriteHeader(503)
				return
			}
			w.WriteHeader(200)
		default:
			w.WriteHeader(200)
		}
	})
	subject := uniq("stats")
	br.subscribe("st", fastSub(rc.URL, subject, nil))
	for _, b := range []string{"a", "b", "c", "bad", "flaky"} {
		other.publish(subject, []byte(b))
	}
	var s struct {
		Stats struct {
			Delivered    int64  `json:"delivered"`
			Retried      int64  `json:"retried"`
			DeadLettered int64  `json:"dead_lettered"`
			DLQSize      int64  `json:"dlq_size"`
			LastStatus   int    `json:"last_status"`
			LastError    string `json:"last_error"`
		} `json:"stats"`
	}
	redistest.Eventually(t, 15*time.Second, func() bool {
		br.do("GET", "/v1/subscriptions/st", nil, &s)
		return s.Stats.Delivered == 4 && s.Stats.Retried == 1 && s.Stats.DeadLettered == 1 && s.Stats.DLQSize == 1
	}, "stats %+v", &s.Stats)
	resp, err := http.Get(br.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp2, err := http.Get(other.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw2, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	all := string(raw) + string(raw2)
	for _, want := range []string{
		`bridge_published_total{subject="` + subject + `",transport="stream"} 5`,
		`bridge_pushes_total{outcome="ack",subscription="st"}`,
		`bridge_pushes_total{outcome="retry",subscription="st"}`,
		`bridge_pushes_total{outcome="dead_letter",subscription="st"}`,
		`bridge_webhook_responses_total{code="503",subscription="st"}`,
		`bridge_push_duration_seconds_bucket{subscription="st"`,
		`bridge_subscription_dead_letters{subscription="st"} 1`,
		`bridge_subscription_pending{subscription="st"} 0`,
		`bridge_subscription_lag{subscription="st"}`,
		`bridge_in_flight{subscription="st"}`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// BRIDGE_SUBSCRIPTIONS_FILE is applied at start, idempotently: a restart with the same file
// changes nothing and keeps the secret; the subscription delivers.
func TestSubscriptionsFile(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	rc := newReceiver(t, nil)
	subject := uniq("file")
	file := filepath.Join(t.TempDir(), "subs.yaml")
	yaml := fmt.Sprintf(`subscriptions:
  - name: from-file
    subject: %s
    url: %s
    max_deliveries: 3
    retry: {min_backoff: 100ms, max_backoff: 1s}
    headers: {X-Fn-Key: k1}
`, subject, rc.URL)
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	br := startBridge(t, redisURL(rs), "BRIDGE_SUBSCRIPTIONS_FILE="+file)
	var sv struct {
		Secret string `json:"secret"`
	}
	br.do("GET", "/v1/subscriptions/from-file/secret", nil, &sv)
	rc.setSecret(sv.Secret)
	version, _ := rs.Do(t, "HGET", "bridge:subscriptions", "_version").ToString()
	br.restart()
	if v, _ := rs.Do(t, "HGET", "bridge:subscriptions", "_version").ToString(); v != version {
		t.Fatalf("restart with the same file changed the registry (%s -> %s)", version, v)
	}
	_, id := br.publish(subject, []byte("via file"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed")
	if p := rc.byID(id)[0]; !p.Verified || p.Header.Get("X-Fn-Key") != "k1" {
		t.Fatalf("push %+v", p)
	}
	// A bad file stops the start with one line naming the variable.
	if err := os.WriteFile(file, []byte("subscriptions:\n  - name: x\n    subject: s\n    url: ftp://nope/\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	br.kill()
	out, err := runOnce(append(br.env, redisURL(rs)))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := lines[len(lines)-1]; err == nil || !strings.HasPrefix(last, "bridge: BRIDGE_SUBSCRIPTIONS_FILE") || !strings.Contains(last, "ftp") {
		t.Fatalf("bad subscriptions file: err=%v out=%q", err, out)
	}
}

// With BRIDGE_SECRET_KEY the signing secret and static headers are stored encrypted; the
// bridge still signs with them, and a process without the key cannot read them.
func TestSecretsEncryptedAtRest(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // base64 of 32 bytes
	br := startBridge(t, redisURL(rs), "BRIDGE_SECRET_KEY="+key)
	rc := newReceiver(t, nil)
	subject := uniq("sealed")
	secret := br.subscribe("sealed", fastSub(rc.URL, subject, map[string]any{"headers": map[string]string{"Authorization": "Bearer fn-credential-xyz"}}))
	rc.setSecret(secret)
	raw, _ := rs.Do(t, "HGET", "bridge:subscriptions", "sealed").ToString()
	if strings.Contains(raw, secret) || strings.Contains(raw, "fn-credential-xyz") || !strings.Contains(raw, "enc:v1:") {
		t.Fatalf("stored in plain text: %s", raw)
	}
	_, id := br.publish(subject, []byte("x"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed")
	if p := rc.byID(id)[0]; !p.Verified || p.Header.Get("Authorization") != "Bearer fn-credential-xyz" {
		t.Fatalf("push %+v", p)
	}
	var sv struct {
		Secret string `json:"secret"`
	}
	br.do("GET", "/v1/subscriptions/sealed/secret", nil, &sv)
	if sv.Secret != secret {
		t.Fatal("the API does not return the decrypted secret")
	}
	keyless := startBridge(t, redisURL(rs))
	if code := keyless.do("GET", "/v1/subscriptions/sealed/secret", nil, nil); code != 500 {
		t.Fatalf("a process without the key answered %d", code)
	}
}
