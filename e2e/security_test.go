package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// randHex returns n random bytes as 2n hex characters.
func randHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// authDo is bridge.do with an Authorization header (auth "" sends none).
func authDo(t testing.TB, b *bridge, auth, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, b.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// authPublish posts one message with a bearer token and returns the status and id.
func authPublish(t testing.TB, b *bridge, token, subject string, body []byte, contentType string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.URL+"/v1/subjects/"+subject+"/messages", bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		ID string `json:"id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.ID
}

// A client that sends its headers one byte per second is cut off by ReadHeaderTimeout
// (5 s) while other clients are served promptly.
func TestSlowlorisIsCutOff(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))

	const slowConns = 20
	const limit = 10 * time.Second
	type outcome struct {
		err     error
		elapsed time.Duration
		read    int
	}
	results := make(chan outcome, slowConns)
	start := time.Now()
	for range slowConns {
		conn, err := net.DialTimeout("tcp", br.addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "); err != nil {
			t.Fatal(err)
		}
		closed := make(chan struct{})
		// Writer: one header byte per second, bounded; stops once the server hung up.
		go func() {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for range 15 {
				select {
				case <-closed:
					return
				case <-tick.C:
				}
				_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := conn.Write([]byte{'a'}); err != nil {
					return
				}
			}
		}()
		// Reader: waits (bounded by our own deadline) for the server to close the connection.
		go func() {
			defer close(closed)
			_ = conn.SetReadDeadline(start.Add(limit + 5*time.Second))
			buf := make([]byte, 512)
			n := 0
			for {
				k, err := conn.Read(buf)
				n += k
				if err != nil {
					results <- outcome{err: err, elapsed: time.Since(start), read: n}
					return
				}
			}
		}()
	}

	// Meanwhile 20 ordinary requests from another client must each succeed within 1 s.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 20 {
		t0 := time.Now()
		resp, err := client.Get(br.URL + "/healthz")
		d := time.Since(t0)
		if err != nil {
			t.Fatalf("healthz %d during the slow clients: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || d >= time.Second {
			t.Fatalf("healthz %d: status %d in %s", i, resp.StatusCode, d)
		}
		time.Sleep(200 * time.Millisecond)
	}

	for range slowConns {
		o := <-results
		var ne net.Error
		if errors.As(o.err, &ne) && ne.Timeout() {
			t.Fatalf("slow connection still open after %s (server never closed it)", o.elapsed)
		}
		if !errors.Is(o.err, io.EOF) && !errors.Is(o.err, net.ErrClosed) && !isConnReset(o.err) {
			t.Fatalf("slow connection ended with %v after %s", o.err, o.elapsed)
		}
		if o.elapsed > limit {
			t.Fatalf("slow connection closed only after %s, want within %s", o.elapsed, limit)
		}
		if o.elapsed < 3*time.Second {
			t.Logf("note: slow connection closed early, after %s (%d bytes read)", o.elapsed, o.read)
		}
	}
	// The server is still healthy afterwards.
	if code := br.do("GET", "/healthz", nil, nil); code != 200 {
		t.Fatalf("healthz after the slow clients: %d", code)
	}
}

func isConnReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// capturedPush is what the Node verifier reads.
type capturedPush struct {
	ID        string   `json:"id"`
	Timestamp string   `json:"timestamp"`
	Signature string   `json:"signature"`
	BodyB64   string   `json:"body_b64"`
	Secrets   []string `json:"secrets"`
}

const nodeVerifier = `'use strict';
const fs = require('fs');
const crypto = require('crypto');
const { Webhook } = require('standardwebhooks');
const pushes = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
let ok = 0, rejected = 0;
for (const p of pushes) {
  const payload = Buffer.from(p.body_b64, 'base64').toString('utf8');
  const headers = { 'webhook-id': p.id, 'webhook-timestamp': p.timestamp, 'webhook-signature': p.signature };
  for (const secret of p.secrets) {
    const wh = new Webhook(secret);
    // Default options: the package JSON-parses the payload (the bodies here are JSON).
    wh.verify(payload, headers);
    wh.verify(payload, headers, { jsonParse: false });
    ok++;
    for (const bad of [
      [payload + ' ', headers],
      [payload, Object.assign({}, headers, { 'webhook-id': p.id + 'x' })],
      [payload, Object.assign({}, headers, { 'webhook-timestamp': String(Number(p.timestamp) + 1) })],
    ]) {
      try { wh.verify(bad[0], bad[1], { jsonParse: false }); console.log('tampered push verified: ' + p.id); process.exit(2); }
      catch (e) { rejected++; }
    }
  }
  const stranger = new Webhook('whsec_' + crypto.randomBytes(32).toString('base64'));
  try { stranger.verify(payload, headers, { jsonParse: false }); console.log('verified with a wrong secret: ' + p.id); process.exit(3); }
  catch (e) { rejected++; }
}
console.log('ok ' + ok);
console.log('rejected ' + rejected);
`

// Pushes verify with the reference Node.js verifier (npm standardwebhooks) and the
// official Go library, before and after a secret rotation, with the old and the new secret.
func TestNodeStandardWebhooksVerifier(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm not installed")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	inst := exec.CommandContext(ctx, npm, "install", "standardwebhooks@1", "--no-audit", "--no-fund", "--loglevel=error")
	inst.Dir = dir
	inst.WaitDelay = 5 * time.Second
	if out, err := inst.CombinedOutput(); err != nil {
		t.Skipf("npm install standardwebhooks@1 failed (no access to the npm registry?): %v\n%s", err, tail(string(out), 2000))
	}
	script := filepath.Join(dir, "verify.cjs")
	if err := os.WriteFile(script, []byte(nodeVerifier), 0o644); err != nil {
		t.Fatal(err)
	}

	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	subject := uniq("node.verify")
	oldSecret := br.subscribe("nodeverify", fastSub(rc.URL, subject, nil))

	bodies := []string{
		`{"order":1}`, `{"text":"ünïcødé ✓ 日本語","nested":{"a":[1,2,{"b":null}]}}`, `[]`, `"a string"`, `12.5`,
		`{"quote":"\"","backslash":"\\","tab":"\t","nl":"\n"}`,
	}
	var ids []string
	publishJSON := func(body string) string {
		code, id := br.publish(subject, []byte(body), "Content-Type", "application/json")
		if code != 202 || id == "" {
			t.Fatalf("publish %s: %d", body, code)
		}
		ids = append(ids, id)
		return id
	}
	for _, b := range bodies {
		publishJSON(b)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == len(ids) }, "got %d of %d pushes", rc.distinct(), len(ids))

	var sv struct {
		Secret         string `json:"secret"`
		PreviousSecret string `json:"previous_secret"`
	}
	if code := br.do("POST", "/v1/subscriptions/nodeverify/secret/rotate", nil, &sv); code != 200 || sv.Secret == "" || sv.Secret == oldSecret || sv.PreviousSecret != oldSecret {
		t.Fatalf("rotate: %d %+v", code, sv)
	}
	newSecret := sv.Secret
	// The rotation reaches the delivery engine within 2 s: publish until a push carries two signatures.
	deadline := time.Now().Add(10 * time.Second)
	for {
		id := publishJSON(fmt.Sprintf(`{"after_rotation":%d}`, len(ids)))
		redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) > 0 }, "push %s missing", id)
		if len(strings.Fields(rc.byID(id)[0].Header.Get("Webhook-Signature"))) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no push signed with both secrets within 10 s of the rotation")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, b := range bodies {
		publishJSON(b)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return rc.distinct() == len(ids) }, "got %d of %d pushes", rc.distinct(), len(ids))

	var captured []capturedPush
	var wantOK, dual int
	for _, p := range rc.all() {
		sig := p.Header.Get("Webhook-Signature")
		secrets := []string{oldSecret}
		switch n := len(strings.Fields(sig)); n {
		case 1:
		case 2:
			secrets = append(secrets, newSecret)
			dual++
		default:
			t.Fatalf("push %s has %d signatures: %q", p.ID, n, sig)
		}
		if p.Header.Get("Webhook-Id") != p.ID || p.Header.Get("Webhook-Timestamp") == "" {
			t.Fatalf("push %s headers %v", p.ID, p.Header)
		}
		// The official Go library, with each live secret.
		for _, s := range secrets {
			wh, err := standardwebhooks.NewWebhook(s)
			if err != nil {
				t.Fatal(err)
			}
			if err := wh.Verify(p.Body, p.Header); err != nil {
				t.Fatalf("Go standardwebhooks: push %s (%q) does not verify with the %s secret: %v", p.ID, p.Body, map[bool]string{true: "old", false: "new"}[s == oldSecret], err)
			}
			wantOK++
		}
		captured = append(captured, capturedPush{
			ID: p.ID, Timestamp: p.Header.Get("Webhook-Timestamp"), Signature: sig,
			BodyB64: base64.StdEncoding.EncodeToString(p.Body), Secrets: secrets,
		})
	}
	if dual < len(bodies) {
		t.Fatalf("only %d pushes signed with both secrets after the rotation", dual)
	}
	raw, _ := json.Marshal(captured)
	pushesFile := filepath.Join(dir, "pushes.json")
	if err := os.WriteFile(pushesFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	run := exec.CommandContext(ctx, node, script, pushesFile)
	run.Dir = dir
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("node verifier failed: %v\n%s", err, out)
	}
	wantRejected := wantOK*3 + len(captured)
	if !strings.Contains(string(out), fmt.Sprintf("ok %d\n", wantOK)) || !strings.Contains(string(out), fmt.Sprintf("rejected %d\n", wantRejected)) {
		t.Fatalf("node verifier: %q, want ok %d and rejected %d", out, wantOK, wantRejected)
	}
	t.Logf("node standardwebhooks verified %d signatures over %d pushes (%d signed with both secrets)", wantOK, len(captured), dual)
}

// A retried push keeps its webhook-id and gets a fresh timestamp and signature.
func TestRetryTimestampFreshIDStable(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		if nth == 0 {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(200)
	})
	subject := uniq("retry.ts")
	// A backoff of exactly 1 s puts the retry in a later second than the first push.
	rc.setSecret(br.subscribe("retryts", fastSub(rc.URL, subject, map[string]any{
		"retry": map[string]any{"min_backoff": "1s", "max_backoff": "1s"},
	})))
	code, id := br.publish(subject, []byte(`{"retry":"me"}`), "Content-Type", "application/json")
	if code != 202 {
		t.Fatalf("publish: %d", code)
	}
	redistest.Eventually(t, 15*time.Second, func() bool { return len(rc.byID(id)) >= 2 }, "no retry: %d pushes", len(rc.byID(id)))
	time.Sleep(500 * time.Millisecond) // a third push would be a bug: the second was acked
	ps := rc.byID(id)
	if len(ps) != 2 {
		t.Fatalf("%d pushes, want 2", len(ps))
	}
	first, second := ps[0], ps[1]
	if first.Header.Get("Webhook-Id") != id || second.Header.Get("Webhook-Id") != id {
		t.Fatalf("webhook-id changed across the retry: %q, %q (published %q)", first.Header.Get("Webhook-Id"), second.Header.Get("Webhook-Id"), id)
	}
	ts1, err1 := strconv.ParseInt(first.Header.Get("Webhook-Timestamp"), 10, 64)
	ts2, err2 := strconv.ParseInt(second.Header.Get("Webhook-Timestamp"), 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("timestamps %q, %q", first.Header.Get("Webhook-Timestamp"), second.Header.Get("Webhook-Timestamp"))
	}
	if ts2 < ts1 || ts2 == ts1 {
		t.Fatalf("retry timestamp %d, first %d: want a fresh, later one", ts2, ts1)
	}
	if now := time.Now().Unix(); ts2 > now+1 || now-ts1 > 60 {
		t.Fatalf("timestamps %d, %d far from now %d", ts1, ts2, now)
	}
	if first.Header.Get("Webhook-Signature") == second.Header.Get("Webhook-Signature") {
		t.Fatal("the retry reused the first push's signature")
	}
	if !first.Verified || !second.Verified {
		t.Fatalf("verified: first %v, second %v", first.Verified, second.Verified)
	}
	if first.Count != 1 || second.Count != 2 || !bytes.Equal(first.Body, second.Body) {
		t.Fatalf("pushes %+v", ps)
	}
}

// With a token, a Redis password, static auth headers and signing secrets in play, and the
// log at debug, no secret ever appears in the bridge's log.
func TestLogsHoldNoSecrets(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	// redistest's readiness probe PINGs without AUTH, so the password is set once the server
	// is up; the shared client used by rs.Do stays authenticated.
	redisPW := "rpw" + randHex(t, 12)
	if err := rs.Do(t, "CONFIG", "SET", "requirepass", redisPW).Error(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", rs.Addr, time.Second); err == nil {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.WriteString(c, "PING\r\n")
		line := make([]byte, 64)
		n, _ := c.Read(line)
		_ = c.Close()
		if !strings.Contains(string(line[:n]), "NOAUTH") {
			t.Fatalf("redis answers without a password: %q", line[:n])
		}
	}
	token := randHex(t, 16) // 32 characters
	wrongToken := randHex(t, 16)
	staticAuth := "Bearer fn-secret-" + randHex(t, 16)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	givenSecret := "whsec_" + base64.StdEncoding.EncodeToString(key)

	br := startBridge(t,
		"BRIDGE_REDIS_URL=redis://:"+redisPW+"@"+rs.Addr,
		"BRIDGE_TOKEN="+token,
		"BRIDGE_LOG_LEVEL=debug",
	)
	bearer := "Bearer " + token

	var gotStatic sync.Map
	rc := newReceiver(t, func(w http.ResponseWriter, p push, _ int) {
		gotStatic.Store(p.Header.Get("Authorization"), true)
		if string(p.Body) == `"poison"` {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(204)
	})
	subject := uniq("logs.secret")
	cfg := fastSub(rc.URL, subject, map[string]any{
		"headers": map[string]string{"Authorization": staticAuth},
		"secret":  givenSecret,
	})
	var created subscription
	if code := authDo(t, br, bearer, "PUT", "/v1/subscriptions/logsecret", cfg, &created); code != 201 {
		t.Fatalf("PUT subscription: %d", code)
	}
	// A second subscription with a generated secret.
	var gen subscription
	if code := authDo(t, br, bearer, "PUT", "/v1/subscriptions/logsecret2", fastSub(rc.URL, subject, map[string]any{
		"headers": map[string]string{"X-Api-Key": staticAuth},
	}), &gen); code != 201 || gen.Secret == "" {
		t.Fatalf("PUT subscription 2: %d", code)
	}
	rc.setSecret(givenSecret)

	code, id := authPublish(t, br, token, subject, []byte(`{"hello":"world"}`), "application/json")
	if code != 202 {
		t.Fatalf("publish: %d", code)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 2 }, "push not received")
	// The receiver records a push before it calls the answer that notes the header.
	redistest.Eventually(t, 5*time.Second, func() bool { _, ok := gotStatic.Load(staticAuth); return ok },
		"the static Authorization header did not reach the receiver")
	for _, p := range rc.byID(id) {
		if p.Header.Get("Bridge-Subscription") == "logsecret" && !p.Verified {
			t.Fatal("push does not verify with the given secret")
		}
	}

	// 401s: a wrong token, and the right token under the wrong scheme.
	for _, auth := range []string{"Bearer " + wrongToken, "Basic " + token, "bearer" + token, token} {
		if code := authDo(t, br, auth, "GET", "/v1/subscriptions", nil, nil); code != 401 {
			t.Fatalf("auth %q…: %d, want 401", auth[:8], code)
		}
	}
	// A dead letter.
	if code, _ := authPublish(t, br, token, subject, []byte(`"poison"`), "application/json"); code != 202 {
		t.Fatalf("publish poison: %d", code)
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		var d deadLetters
		authDo(t, br, bearer, "GET", "/v1/subscriptions/logsecret/dead-letters", nil, &d)
		return len(d.DeadLetters) == 1
	}, "no dead letter")
	// A rotation, then a push signed with both secrets.
	var rot struct {
		Secret string `json:"secret"`
	}
	if code := authDo(t, br, bearer, "POST", "/v1/subscriptions/logsecret/secret/rotate", nil, &rot); code != 200 || rot.Secret == "" {
		t.Fatalf("rotate: %d", code)
	}
	var rot2 struct {
		Secret string `json:"secret"`
	}
	if code := authDo(t, br, bearer, "POST", "/v1/subscriptions/logsecret2/secret/rotate", nil, &rot2); code != 200 || rot2.Secret == "" {
		t.Fatalf("rotate 2: %d", code)
	}
	authDo(t, br, bearer, "GET", "/v1/subscriptions/logsecret/secret", nil, nil)
	time.Sleep(1500 * time.Millisecond)
	code, id2 := authPublish(t, br, token, subject, []byte(`{"after":"rotation"}`), "application/json")
	if code != 202 {
		t.Fatalf("publish: %d", code)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id2)) == 2 }, "push after rotation not received")
	// A graceful stop logs its shutdown lines too.
	if code, _ := br.terminate(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}

	log := br.log.String()
	if !strings.Contains(log, `"level":"debug"`) && !strings.Contains(log, "DEBUG") {
		t.Fatalf("no debug lines in the log; BRIDGE_LOG_LEVEL=debug not in effect?\n%s", tail(log, 2000))
	}
	secrets := map[string]string{
		"BRIDGE_TOKEN":                 token,
		"rejected bearer token":        wrongToken,
		"redis password":               redisPW,
		"static header value":          staticAuth,
		"static header secret part":    strings.TrimPrefix(staticAuth, "Bearer "),
		"given secret":                 givenSecret,
		"generated secret":             gen.Secret,
		"rotated secret":               rot.Secret,
		"rotated generated secret":     rot2.Secret,
		"given secret, base64 part":    strings.TrimPrefix(givenSecret, "whsec_"),
		"generated secret, base64":     strings.TrimPrefix(gen.Secret, "whsec_"),
		"rotated secret, base64":       strings.TrimPrefix(rot.Secret, "whsec_"),
		"rotated generated, base64":    strings.TrimPrefix(rot2.Secret, "whsec_"),
		"given secret, base64url form": base64.RawURLEncoding.EncodeToString(key),
		"given secret, hex key":        hex.EncodeToString(key),
	}
	for what, s := range secrets {
		if s == "" {
			t.Fatalf("%s is empty", what)
		}
		if strings.Contains(log, s) {
			i := strings.Index(log, s)
			t.Errorf("the log holds the %s: …%s…", what, log[max(0, i-200):min(len(log), i+len(s)+50)])
		}
	}

	// A bad BRIDGE_REDIS_URL with a password in it is refused with one line that does not
	// repeat the password.
	//
	// KNOWN BUG (reported, not fixed here): the first two URLs fail in url.Parse, whose
	// error quotes the whole URL, and broker.clientOptions wraps it as is, so the start-up
	// error line prints the Redis password. Kept failing on purpose until the product
	// redacts it (for example with url.URL.Redacted or by dropping url.Error.URL).
	t.Run("bad redis url error", func(t *testing.T) {
		badRedisURLErrors(t, redisPW)
	})
}

func badRedisURLErrors(t *testing.T, redisPW string) {
	for _, u := range []string{
		"redis://:" + redisPW + "@127.0.0.1:notaport",
		"redis://user:" + redisPW + "@[::1",
		"redis://:" + redisPW + "@127.0.0.1:6379/notadb",
		"http://:" + redisPW + "@127.0.0.1:6379",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bridgeBin)
		cmd.Env = append(os.Environ(), "BRIDGE_LISTEN="+freeAddr(t), "BRIDGE_REDIS_URL="+u, "BRIDGE_LOG_LEVEL=debug")
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			t.Errorf("bridge started with BRIDGE_REDIS_URL=%s", strings.ReplaceAll(u, redisPW, "***"))
			continue
		}
		if strings.Contains(string(out), redisPW) {
			t.Errorf("the error for a bad BRIDGE_REDIS_URL repeats the password: %s", strings.TrimSpace(string(out)))
		}
	}
}

// hostsEntries are the names the namespaced bridge resolves, with the address each must be
// refused at connect time for.
var hostsEntries = []struct{ name, addr string }{
	{"meta.test", "169.254.169.254"},
	{"ten.test", "10.0.0.1"},
	{"cgnat.test", "100.64.0.1"},
	{"mapped.test", "::ffff:127.0.0.1"},
	{"loop.test", "127.0.0.1"},
	{"ula.test", "fd00::1"},
}

// startInHostsNamespace runs the bridge in a private mount namespace where hostsFile is
// bind-mounted over /etc/hosts; the machine's own /etc/hosts is never touched.
func startInHostsNamespace(t *testing.T, hostsFile string, env ...string) *bridge {
	t.Helper()
	addr := freeAddr(t)
	b := &bridge{t: t, addr: addr, URL: "http://" + addr, log: &syncBuffer{}}
	b.env = append([]string{"BRIDGE_LISTEN=" + addr, "BRIDGE_LOG_LEVEL=" + logLevel()}, env...)
	// unshare and sh exec in place, so the process started here ends up being the bridge.
	cmd := exec.Command("unshare", "--mount", "--propagation", "private",
		"sh", "-c", `mount --bind "$0" /etc/hosts && exec "$1"`, hostsFile, bridgeBin)
	cmd.Env = append(os.Environ(), b.env...)
	cmd.Stdout, cmd.Stderr = b.log, b.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.cmd, b.done = cmd, make(chan struct{})
	go func() {
		b.err = cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		b.kill()
		if t.Failed() {
			t.Logf("bridge log:\n%s", tail(b.log.String(), 8000))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-b.done:
			t.Fatalf("namespaced bridge exited during start: %v\n%s", b.err, b.log.String())
		default:
		}
		if resp, err := http.Get(b.URL + "/readyz"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return b
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("namespaced bridge not ready in time\n%s", b.log.String())
	return nil
}

// A webhook given as a DNS name that resolves only to denied addresses is refused at
// registration; and since DNS can change after registration, what a name resolves to is
// checked again when the connection is made, and denied addresses are never reached.
func TestSSRFNamesResolvedAtConnect(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind-mount a hosts file in a private mount namespace")
	}
	for _, tool := range []string{"unshare", "mount", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	hostsFile := filepath.Join(dir, "hosts")
	var hb strings.Builder
	hb.WriteString("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
	for _, e := range hostsEntries {
		fmt.Fprintf(&hb, "%s %s\n", e.addr, e.name)
	}
	if err := os.WriteFile(hostsFile, []byte(hb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile("/etc/hosts")
	t.Cleanup(func() {
		if after, _ := os.ReadFile("/etc/hosts"); !bytes.Equal(before, after) {
			t.Error("the machine's /etc/hosts changed")
		}
	})
	probe, err := exec.Command("unshare", "--mount", "--propagation", "private",
		"sh", "-c", `mount --bind "$0" /etc/hosts && cat /etc/hosts`, hostsFile).CombinedOutput()
	if err != nil || !strings.Contains(string(probe), "meta.test") {
		t.Skipf("cannot bind-mount a hosts file in a private mount namespace: %v %s", err, strings.TrimSpace(string(probe)))
	}

	rs := redistest.Start(t, redistest.Options{})
	canary := newReceiver(t, nil)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(canary.URL, "http://"))
	br := startInHostsNamespace(t, hostsFile, redisURL(rs),
		"BRIDGE_TARGET_ALLOW_CIDRS=", // loopback denied as well
		"GODEBUG=netdns=go",          // the pure-Go resolver reads /etc/hosts
	)
	// Literal addresses are refused at registration in this bridge too (allow list empty).
	var prob struct {
		Code string `json:"code"`
	}
	if code := br.do("PUT", "/v1/subscriptions/literal", map[string]any{"subject": "s", "url": canary.URL}, &prob); code != 400 || prob.Code != "target_not_allowed" {
		t.Fatalf("literal loopback URL: %d %s", code, prob.Code)
	}

	subject := uniq("ssrf.names")
	for i, e := range hostsEntries {
		url := "http://" + e.name + ":" + port + "/hook"
		if code := br.do("PUT", fmt.Sprintf("/v1/subscriptions/name%d", i), fastSub(url, subject, nil), &prob); code != 400 || prob.Code != "target_not_allowed" {
			t.Fatalf("%s (%s) at registration: %d %s", e.name, e.addr, code, prob.Code)
		}
	}
	// Registered through a process that allows every address (paused, and stopped before it
	// could push), as if the names had resolved elsewhere at registration.
	permissive := startInHostsNamespace(t, hostsFile, redisURL(rs), "BRIDGE_TARGET_ALLOW_CIDRS=0.0.0.0/0,::/0", "GODEBUG=netdns=go")
	for i, e := range hostsEntries {
		url := "http://" + e.name + ":" + port + "/hook"
		permissive.subscribe(fmt.Sprintf("name%d", i), fastSub(url, subject, map[string]any{"max_deliveries": 1, "paused": true}))
	}
	permissive.kill()
	for i := range hostsEntries {
		if code := br.do("POST", fmt.Sprintf("/v1/subscriptions/name%d/resume", i), nil, nil); code != 200 {
			t.Fatalf("resume: %d", code)
		}
	}
	if code, _ := br.publish(subject, []byte("knock")); code != 202 {
		t.Fatalf("publish: %d", code)
	}
	for i, e := range hostsEntries {
		name := fmt.Sprintf("name%d", i)
		var d deadLetters
		redistest.Eventually(t, 15*time.Second, func() bool {
			d = br.deadLetters(name)
			return len(d.DeadLetters) == 1
		}, "%s (%s): not dead-lettered", e.name, e.addr)
		dl := d.DeadLetters[0]
		if dl.LastStatus != 0 || !strings.Contains(dl.LastError, "not allowed") || dl.Reason != "max-deliveries" {
			t.Errorf("%s → %s: dead letter %+v", e.name, e.addr, dl)
			continue
		}
		// The error names the address the name resolved to: proof the hosts file was used.
		want := strings.TrimPrefix(e.addr, "::ffff:")
		if !strings.Contains(dl.LastError, want) {
			t.Errorf("%s: last error %q does not name %s", e.name, dl.LastError, want)
		}
		t.Logf("%s → %s: refused at connect: %s", e.name, e.addr, dl.LastError)
	}
	if n := canary.count(); n != 0 {
		t.Fatalf("the canary on 127.0.0.1 was reached %d times", n)
	}
}

// Registration refuses every denied range given as a literal address, and malformed or
// non-HTTP URLs, without writing anything to Redis.
func TestHostileURLsAtRegistration(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs), "BRIDGE_TARGET_ALLOW_CIDRS=")
	before, err := rs.Do(t, "DBSIZE").AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	put := func(u string) (int, string) {
		var prob struct {
			Code string `json:"code"`
		}
		code := br.do("PUT", "/v1/subscriptions/hostile", map[string]any{"subject": "hostile", "url": u}, &prob)
		return code, prob.Code
	}
	denied := []string{
		"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
		"198.18.0.1", "240.0.0.1", "224.0.0.1", "255.255.255.255", "127.255.255.254", "172.31.255.255",
		"[::1]", "[fd00::1]", "[fe80::1]", "[fe80::1%25eth0]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::ffff:10.0.0.1]",
		"[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]", "[::]", "[::127.0.0.1]", "[ff02::1]",
	}
	for _, host := range denied {
		for _, u := range []string{"http://" + host + "/", "https://" + host + ":8443/hook?x=1"} {
			if code, pc := put(u); code != 400 || pc != "target_not_allowed" {
				t.Errorf("%s: %d %q, want 400 target_not_allowed", u, code, pc)
			}
		}
	}
	for _, u := range []string{
		"ftp://x", "http://u:p@example.com", "http://u@example.com/", "javascript:alert(1)", "http://", "/relative",
		"", "example.com/hook", "file:///etc/passwd", "gopher://127.0.0.1:6379/_PING", "http://:80/",
		"http://example.com:0/", "http://example.com:65536/", "http:///path", "http://exa mple.com/",
	} {
		if code, pc := put(u); code != 400 || (pc != "invalid_url" && pc != "invalid_subscription") {
			t.Errorf("%q: %d %q, want 400 invalid_url or invalid_subscription", u, code, pc)
		}
	}
	// Spellings some resolvers read as IPv4 addresses cannot be checked as names: refused too.
	for _, u := range []string{"http://2130706433/", "http://0x7f.1/", "http://127.1/", "http://0177.0.0.1/", "http://10.1/"} {
		if code, pc := put(u); code != 400 || (pc != "invalid_url" && pc != "target_not_allowed") {
			t.Errorf("%q: %d %q, want 400 invalid_url or target_not_allowed", u, code, pc)
		}
	}
	after, err := rs.Do(t, "DBSIZE").AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		keys, _ := rs.Do(t, "KEYS", "*").AsStrSlice()
		t.Fatalf("refused registrations changed DBSIZE from %d to %d: %v", before, after, keys)
	}
	if code := br.do("GET", "/v1/subscriptions/hostile", nil, nil); code != 404 {
		t.Fatalf("GET the refused subscription: %d, want 404", code)
	}
}
