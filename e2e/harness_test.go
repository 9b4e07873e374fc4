// Package e2e drives the built bridge binary against a real redis-server and real HTTP
// receivers: what a user runs, including kill -9, Redis restarts and SIGTERM.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

var bridgeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bridge-e2e-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bridgeBin = filepath.Join(dir, "bridge")
	// E2E_BRIDGE_BIN runs the tests against a binary built elsewhere (for example without
	// the race detector, to read memory figures as a user would see them).
	if bin := os.Getenv("E2E_BRIDGE_BIN"); bin != "" {
		bridgeBin = bin
	} else if out, err := exec.Command("go", "build", "-race", "-o", bridgeBin, "../cmd/bridge").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build bridge: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// bridge is one running bridge process.
type bridge struct {
	t    testing.TB
	URL  string
	addr string
	env  []string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freeAddr returns a free loopback address for a process a test starts, and restarts on
// the same address. Its port lies below Linux's ephemeral range (32768 and up), so no
// outgoing connection or ":0" listener of the tests can take it while its process is down
// for a restart; and no two calls in this test binary return the same port.
func freeAddr(t testing.TB) string {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if portsTaken[port] {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		_ = ln.Close()
		portsTaken[port] = true
		return addr
	}
	t.Fatal("no free port in 20000-31999")
	return ""
}

var (
	portsMu    sync.Mutex
	portsTaken = map[int]bool{}
)

// startBridge runs the binary with the given BRIDGE_* settings (plus loopback targets
// allowed and debug-free logs) and waits until /readyz answers 200.
func startBridge(t testing.TB, env ...string) *bridge {
	t.Helper()
	addr := freeAddr(t)
	b := &bridge{t: t, addr: addr, URL: "http://" + addr, log: &syncBuffer{}}
	b.env = append([]string{
		"BRIDGE_LISTEN=" + addr,
		"BRIDGE_TARGET_ALLOW_CIDRS=127.0.0.1/32",
		"BRIDGE_LOG_LEVEL=" + logLevel(),
	}, env...)
	b.start()
	t.Cleanup(func() {
		b.kill()
		if t.Failed() {
			t.Logf("bridge log:\n%s", tail(b.log.String(), 8000))
		}
	})
	return b
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func (b *bridge) start() {
	b.t.Helper()
	cmd := exec.Command(bridgeBin)
	cmd.Env = append(os.Environ(), b.env...)
	cmd.Stdout, cmd.Stderr = b.log, b.log
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.cmd, b.done = cmd, make(chan struct{})
	go func() {
		b.err = cmd.Wait()
		close(b.done)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-b.done:
			b.t.Fatalf("bridge exited during start: %v\n%s", b.err, b.log.String())
		default:
		}
		resp, err := http.Get(b.URL + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("bridge not ready in time\n%s", b.log.String())
}

func (b *bridge) running() bool {
	select {
	case <-b.done:
		return false
	default:
		return b.cmd != nil
	}
}

// kill sends SIGKILL and waits.
func (b *bridge) kill() {
	if b.running() {
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

// restart starts the same configuration again (same address) after the process ended.
func (b *bridge) restart() {
	b.t.Helper()
	b.kill()
	b.start()
}

// terminate sends SIGTERM and returns the exit code and how long the exit took.
func (b *bridge) terminate(timeout time.Duration) (int, time.Duration) {
	b.t.Helper()
	start := time.Now()
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(timeout):
		b.t.Fatalf("bridge did not exit within %s of SIGTERM", timeout)
	}
	return b.cmd.ProcessState.ExitCode(), time.Since(start)
}

// do sends a JSON request (body may be nil) and decodes a JSON answer into out (may be nil).
func (b *bridge) do(method, path string, body any, out any) int {
	b.t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			b.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, b.URL+path, rd)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			b.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// publish posts one message and returns the status and the message id.
func (b *bridge) publish(subject string, body []byte, headers ...string) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, b.URL+"/v1/subjects/"+subject+"/messages", bytes.NewReader(body))
	req.Header.Set("Content-Type", "text/plain")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	var out struct {
		ID string `json:"id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.ID
}

type subscription struct {
	Name   string `json:"name"`
	Secret string `json:"secret"`
	Paused bool   `json:"paused"`
	Reason string `json:"paused_reason"`
	Stats  struct {
		Pending  int64 `json:"pending"`
		DLQSize  int64 `json:"dlq_size"`
		Retrying int64 `json:"retrying"`
	} `json:"stats"`
}

// subscribe creates a subscription and returns its secret.
func (b *bridge) subscribe(name string, cfg map[string]any) string {
	b.t.Helper()
	var s subscription
	if code := b.do(http.MethodPut, "/v1/subscriptions/"+name, cfg, &s); code != http.StatusCreated && code != http.StatusOK {
		b.t.Fatalf("PUT subscription %s: %d", name, code)
	}
	if s.Secret == "" {
		b.t.Fatalf("PUT subscription %s returned no secret", name)
	}
	return s.Secret
}

// push is one request the receiver got.
type push struct {
	ID       string
	Count    int
	Header   http.Header
	Body     []byte
	At       time.Time
	Verified bool
}

// receiver is a real HTTP server on 127.0.0.1 whose answer a test scripts.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	pushes []push
	secret string
	// answer decides the response to the n-th push (0-based) of a message id.
	answer func(w http.ResponseWriter, p push, nth int)
	seen   map[string]int
}

func newReceiver(t testing.TB, answer func(w http.ResponseWriter, p push, nth int)) *receiver {
	t.Helper()
	rc := &receiver{answer: answer, seen: map[string]int{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) setSecret(s string) {
	rc.mu.Lock()
	rc.secret = s
	rc.mu.Unlock()
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	p := push{ID: r.Header.Get("Webhook-Id"), Header: r.Header.Clone(), Body: body, At: time.Now()}
	p.Count, _ = strconv.Atoi(r.Header.Get("Redis-Delivery-Count"))
	rc.mu.Lock()
	secret := rc.secret
	rc.mu.Unlock()
	if secret != "" {
		if wh, err := standardwebhooks.NewWebhook(secret); err == nil {
			p.Verified = wh.Verify(body, r.Header) == nil
		}
	}
	rc.mu.Lock()
	nth := rc.seen[p.ID]
	rc.seen[p.ID]++
	rc.pushes = append(rc.pushes, p)
	rc.mu.Unlock()
	if rc.answer != nil {
		rc.answer(w, p, nth)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) all() []push {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]push(nil), rc.pushes...)
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.pushes)
}

// distinct is how many different message ids arrived.
func (rc *receiver) distinct() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.seen)
}

func (rc *receiver) byID(id string) []push {
	var out []push
	for _, p := range rc.all() {
		if p.ID == id {
			out = append(out, p)
		}
	}
	return out
}

func redisURL(s *redistest.Server) string { return "BRIDGE_REDIS_URL=" + s.URL }

var ctxTODO = context.Background()

func pendingCount(t testing.TB, s *redistest.Server, subject, sub string) int64 {
	t.Helper()
	arr, err := s.Do(t, "XPENDING", subject, "bridge:"+sub).ToArray()
	if err != nil || len(arr) == 0 {
		return -1
	}
	n, _ := arr[0].AsInt64()
	return n
}

func uniq(prefix string) string {
	return fmt.Sprintf("%s.%d", prefix, time.Now().UnixNano()%1e9)
}

func logLevel() string {
	if l := os.Getenv("E2E_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}

// runOnce runs the binary to completion with env and returns its stderr (stdout ignored).
func runOnce(env []string) (string, error) {
	cmd := exec.Command(bridgeBin)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	return stderr.String(), err
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }

// memStatus reads a field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
func (b *bridge) memStatus(field string) int64 {
	b.t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid))
	if err != nil {
		b.t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	b.t.Fatalf("%s not in /proc status", field)
	return 0
}

// heapInuse reads go_memstats_heap_inuse_bytes from the bridge's /metrics.
func (b *bridge) heapInuse() int64 {
	b.t.Helper()
	resp, err := http.Get(b.URL + "/metrics")
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f)
		}
	}
	b.t.Fatal("no go_memstats_heap_inuse_bytes in /metrics")
	return 0
}
