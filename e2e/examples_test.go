package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

// The examples under examples/, run the way their README tells a user to run them.

// exampleEnv is the test's environment without the settings an example reads, plus extra.
func exampleEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "BRIDGE_"), name == "RECEIVER_ADDR", name == "WEBHOOK_SECRET",
			name == "HOST", name == "PORT", name == "TMPDIR":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// runQuickstart runs examples/quickstart.sh to completion in its own process group
// (killed whole on timeout, so no bridge outlives the test) and returns its output.
func runQuickstart(t *testing.T, env ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // it runs go build
	defer cancel()
	// Relative to the repository root, as a user types it; the script finds the root itself.
	cmd := exec.CommandContext(ctx, "bash", "../examples/quickstart.sh")
	cmd.Env = exampleEnv(append([]string{"TMPDIR=" + t.TempDir()}, env...)...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	t.Logf("quickstart.sh took %s", time.Since(start).Round(time.Millisecond))
	if ctx.Err() != nil {
		t.Fatalf("quickstart.sh still running after 5 minutes:\n%s", out.String())
	}
	return out.String(), err
}

func assertClosed(t *testing.T, addrs ...string) {
	t.Helper()
	for _, addr := range addrs {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			t.Errorf("%s still accepts connections after quickstart.sh exited", addr)
		}
	}
}

func TestQuickstartScript(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}

	t.Run("embedded redis", func(t *testing.T) {
		t.Parallel()
		bridgeAddr, receiverAddr := freeAddr(t), freeAddr(t)
		out, err := runQuickstart(t, "BRIDGE_LISTEN="+bridgeAddr, "RECEIVER_ADDR="+receiverAddr)
		if err != nil {
			t.Fatalf("quickstart.sh: %v\n%s", err, out)
		}
		for _, want := range []string{
			"Done: message orders:", " subject=orders subscription=demo delivery=1 ", `{"order":42}`, `"delivered":1`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		assertClosed(t, bridgeAddr, receiverAddr)
	})

	t.Run("redis-server with a token, twice", func(t *testing.T) {
		t.Parallel()
		rs := redistest.Start(t, redistest.Options{})
		token := "qs-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-token-1234567890"
		var ids []string
		for run := 1; run <= 2; run++ {
			bridgeAddr, receiverAddr := freeAddr(t), freeAddr(t)
			out, err := runQuickstart(t, "BRIDGE_LISTEN="+bridgeAddr, "RECEIVER_ADDR="+receiverAddr,
				redisURL(rs), "BRIDGE_TOKEN="+token)
			if err != nil {
				t.Fatalf("run %d: quickstart.sh: %v\n%s", run, err, out)
			}
			// The second run replaces "demo" (same secret, same group) and counts on from 1.
			if want := fmt.Sprintf(`"delivered":%d`, run); !strings.Contains(out, want) {
				t.Errorf("run %d: output lacks %s:\n%s", run, want, out)
			}
			if strings.Contains(out, token) {
				t.Errorf("run %d: the output shows the token", run)
			}
			_, rest, _ := strings.Cut(out, "Done: message ")
			id, _, _ := strings.Cut(rest, " ")
			// The second run's PUT changes the URL of the existing "demo": in force when it is
			// answered (SPEC §4), so the first push goes to the new URL, delivery 1.
			if !strings.HasPrefix(id, "orders:") || !strings.Contains(out, "message "+id+" subject=orders subscription=demo delivery=1 ") {
				t.Fatalf("run %d: no verified message in the output:\n%s", run, out)
			}
			ids = append(ids, id)
			assertClosed(t, bridgeAddr, receiverAddr)
		}
		if ids[0] == ids[1] {
			t.Fatalf("both runs report message %s", ids[0])
		}
		// Both messages went through this redis-server, not an embedded one.
		if n, err := rs.Do(t, "XLEN", "orders").AsInt64(); err != nil || n != 2 {
			t.Fatalf("XLEN orders = %d, %v; want 2", n, err)
		}
	})

	t.Run("port in use", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() { _ = http.Serve(ln, http.NotFoundHandler()) }()
		out, err := runQuickstart(t, "BRIDGE_LISTEN="+ln.Addr().String(), "RECEIVER_ADDR="+freeAddr(t))
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("quickstart.sh with its port taken: %v, want a non-zero exit\n%s", err, out)
		}
		if !strings.Contains(out, "quickstart: FAILED: "+ln.Addr().String()+" is already in use") {
			t.Fatalf("no one-line reason:\n%s", out)
		}
	})
}

// exampleProc is an example receiver running as its own process.
type exampleProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startExample runs argv from the repository root with env and waits until addr answers HTTP.
func startExample(t *testing.T, addr string, env []string, argv ...string) *exampleProc {
	t.Helper()
	p := &exampleProc{out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Dir = ".."
	p.cmd.Env = exampleEnv(env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", strings.Join(argv, " "), tail(p.out.String(), 8000))
		}
	})
	redistest.Eventually(t, 20*time.Second, func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited during start:\n%s", strings.Join(argv, " "), p.out.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusMethodNotAllowed
	}, "%s not answering 405 to a GET on %s", argv, addr)
	return p
}

type exampleStats struct {
	Stats struct {
		Delivered    int64  `json:"delivered"`
		DeadLettered int64  `json:"dead_lettered"`
		DLQSize      int64  `json:"dlq_size"`
		Pending      int64  `json:"pending"`
		Retrying     int64  `json:"retrying"`
		LastStatus   int64  `json:"last_status"`
		LastError    string `json:"last_error"`
	} `json:"stats"`
}

func signV1(secret, id string, ts int64, body []byte) string {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		panic(err)
	}
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%d.", id, ts)
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// sendSigned posts body to url as a push with the given headers (nil values are left out).
func sendSigned(t *testing.T, url string, body []byte, hdr map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// testReceiverExample runs an example receiver (argv, from the repository root; it reads
// WEBHOOK_SECRET, HOST and PORT) behind a real bridge and checks what it verifies.
func testReceiverExample(t *testing.T, name string, argv ...string) {
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	url := "http://" + addr + "/"
	subject := uniq("examples." + name)
	secret := br.subscribe(name, fastSub(url, subject, map[string]any{"timeout": "10s"}))
	p := startExample(t, addr, []string{"WEBHOOK_SECRET=" + secret, "HOST=" + host, "PORT=" + port}, argv...)

	// Through the bridge: JSON, a forwarded header, and bytes that are not UTF-8 (the
	// signature covers the raw body).
	type published struct{ id, body, line string }
	var msgs []published
	publish := func(body []byte, line string, headers ...string) {
		t.Helper()
		code, id := br.publish(subject, body, headers...)
		if code != http.StatusAccepted || id == "" {
			t.Fatalf("publish %q: %d", body, code)
		}
		msgs = append(msgs, published{id, string(body), line})
	}
	publish([]byte(`{"order":1,"text":"ünïcødé ✓"}`), `content-type="application/json"`, "Content-Type", "application/json")
	publish([]byte(`{"order":2}`), `content-type="application/json" tenant=acme`,
		"Content-Type", "application/json", "Bridge-Forward-X-Tenant", "acme")
	publish([]byte{0xff, 0xfe, 0x80, 0xc3, 0x28, '\n', 'b', 'i', 'n'}, `content-type="application/octet-stream"`,
		"Content-Type", "application/octet-stream")

	var st exampleStats
	redistest.Eventually(t, 20*time.Second, func() bool {
		st = exampleStats{}
		return br.do(http.MethodGet, "/v1/subscriptions/"+name, nil, &st) == http.StatusOK &&
			st.Stats.Delivered == int64(len(msgs)) && st.Stats.Pending == 0 && st.Stats.Retrying == 0
	}, "stats %+v, want %d delivered", &st.Stats, len(msgs))
	if s := st.Stats; s.DeadLettered != 0 || s.DLQSize != 0 || s.LastStatus < 200 || s.LastStatus > 299 {
		t.Fatalf("stats %+v: want nothing dead-lettered and a 2xx last status", s)
	}
	out := p.out.String()
	for _, m := range msgs {
		head := fmt.Sprintf("message %s subject=%s subscription=%s delivery=", m.id, subject, name)
		i := strings.Index(out, head)
		if i < 0 {
			t.Fatalf("%s did not print %s:\n%s", name, m.id, out)
		}
		line, rest, _ := strings.Cut(out[i+len(head):], "\n")
		if _, attrs, _ := strings.Cut(line, " "); attrs != m.line {
			t.Errorf("%s: printed %q, want %q", m.id, line, "<n> "+m.line)
		}
		if m.body[0] == '{' && !strings.HasPrefix(rest, m.body+"\n") {
			t.Errorf("%s: body printed as %q, want %q", m.id, tail(rest, 200), m.body)
		}
	}

	// Pushes sent directly, as a forger (or a misconfigured sender) would.
	body := []byte(`{"direct":true}`)
	now := time.Now().Unix()
	good := func(id string, ts int64) map[string]string {
		return map[string]string{"webhook-id": id, "webhook-timestamp": strconv.FormatInt(ts, 10), "webhook-signature": signV1(secret, id, ts, body)}
	}
	for _, c := range []struct {
		name string
		hdr  map[string]string
		body []byte
	}{
		{"wrong secret", map[string]string{"webhook-id": "forged-1", "webhook-timestamp": strconv.FormatInt(now, 10),
			"webhook-signature": signV1(newSecret(), "forged-1", now, body)}, body},
		{"tampered body", good("forged-2", now), []byte(`{"direct":false}`)},
		{"signature of another id", map[string]string{"webhook-id": "forged-3", "webhook-timestamp": strconv.FormatInt(now, 10),
			"webhook-signature": signV1(secret, "forged-x", now, body)}, body},
		{"timestamp 6 minutes old", good("forged-4", now-360), body},
		{"timestamp 6 minutes ahead", good("forged-5", now+360), body},
		{"no signature", map[string]string{"webhook-id": "forged-6", "webhook-timestamp": strconv.FormatInt(now, 10)}, body},
		{"no id", map[string]string{"webhook-timestamp": strconv.FormatInt(now, 10), "webhook-signature": signV1(secret, "", now, body)}, body},
		{"v2 scheme only", map[string]string{"webhook-id": "forged-8", "webhook-timestamp": strconv.FormatInt(now, 10),
			"webhook-signature": strings.Replace(signV1(secret, "forged-8", now, body), "v1,", "v2,", 1)}, body},
	} {
		if code := sendSigned(t, url, c.body, c.hdr); code != http.StatusUnauthorized {
			t.Errorf("%s: answered %d, want 401", c.name, code)
		}
	}
	// Any one matching v1 entry among several is enough (a rotation sends two); a repeat is acked again.
	hdr := good("direct-ok", now-60)
	hdr["webhook-signature"] = "v1a,AAAA v2,AAAA v1,!!notbase64 " + signV1(newSecret(), "direct-ok", now-60, body) + " " + hdr["webhook-signature"]
	for i := 0; i < 2; i++ {
		if code := sendSigned(t, url, body, hdr); code != http.StatusNoContent {
			t.Fatalf("valid direct push (attempt %d): answered %d, want 204", i+1, code)
		}
	}
	if resp, err := http.Get(url); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %v %v, want 405", resp, err)
	} else {
		_ = resp.Body.Close()
	}
	redistest.Eventually(t, 5*time.Second, func() bool { return strings.Contains(p.out.String(), "message direct-ok ") },
		"the valid direct push was not printed")
	out = p.out.String()
	if n := strings.Count(out, "message direct-ok "); n != 1 {
		t.Errorf("the direct push printed %d times, want once (the repeat is a duplicate)", n)
	}
	if strings.Contains(out, "message forged-") || strings.Contains(out, `{"direct":false}`) {
		t.Errorf("a rejected push was printed:\n%s", out)
	}
	if !strings.Contains(out, "rejected forged-1") {
		t.Errorf("no rejection logged for the wrong secret:\n%s", out)
	}
}

// node20 is the node binary, or skips the test when there is none of version 20 or later.
func node20(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	out, err := exec.Command(node, "-p", "process.versions.node.split('.')[0]").Output()
	if v, _ := strconv.Atoi(strings.TrimSpace(string(out))); err != nil || v < 20 {
		t.Skipf("node %s: the example needs Node 20 or later", strings.TrimSpace(string(out)))
	}
	return node
}

func TestNodeServerlessExample(t *testing.T) {
	t.Parallel()
	node := node20(t)
	testReceiverExample(t, "node-serverless", node, filepath.Join("examples", "node-serverless", "run.mjs"))
}

func TestPythonReceiverExample(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	// -u: unbuffered, so the test reads what it printed at once (the receiver flushes too).
	testReceiverExample(t, "python-receiver", python, "-u", filepath.Join("examples", "python-receiver", "receiver.py"))
}

// The deferring Node.js function: it answers 202 with Bridge-Ack-Deadline at once, works
// longer than the subscription's timeout, then acks with its lease token. Every message
// is delivered once and counted delivered; none is pushed again.
func TestNodeDeferredExample(t *testing.T) {
	t.Parallel()
	node := node20(t)
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	subject := uniq("examples.deferred")
	// The work (1.5 s) outlasts the push timeout (500 ms): only deferring gets it done.
	secret := br.subscribe("deferred", fastSub("http://"+addr+"/", subject, map[string]any{"timeout": "500ms", "visibility_timeout": "2s"}))
	p := startExample(t, addr, []string{"WEBHOOK_SECRET=" + secret, "BRIDGE_URL=" + br.URL, "WORK_MS=1500", "HOST=" + host, "PORT=" + port},
		node, filepath.Join("examples", "node-deferred", "run.mjs"))
	var ids []string
	for i := range 3 {
		code, id := br.publish(subject, []byte(fmt.Sprintf(`{"job":%d}`, i)), "Content-Type", "application/json")
		if code != http.StatusAccepted {
			t.Fatalf("publish: %d", code)
		}
		ids = append(ids, id)
	}
	var s struct {
		Stats struct {
			Delivered int64 `json:"delivered"`
			Deferred  int64 `json:"deferred"`
			Retried   int64 `json:"retried"`
			DLQSize   int64 `json:"dlq_size"`
		} `json:"stats"`
	}
	redistest.Eventually(t, 15*time.Second, func() bool {
		br.do(http.MethodGet, "/v1/subscriptions/deferred", nil, &s)
		return s.Stats.Delivered == 3 && s.Stats.Deferred == 0
	}, "three acked by the function (stats %+v)", s.Stats)
	time.Sleep(500 * time.Millisecond)
	outText := p.out.String()
	for _, id := range ids {
		if strings.Count(outText, "worked 1500 ms on "+id) != 1 || !strings.Contains(outText, "ack "+id+": 200") {
			t.Fatalf("%s: not worked on and acked exactly once:\n%s", id, outText)
		}
	}
	if s.Stats.Retried != 0 || s.Stats.DLQSize != 0 {
		t.Fatalf("stats %+v: nothing should be retried or dead-lettered", s.Stats)
	}
}
