package delivery

import (
	"bufio"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/valyala/fasthttp"
)

// post sends one push-like POST through c and returns the status, or the error.
func post(t *testing.T, c *Client, url string, timeout time.Duration) (int, error) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(url)
	req.SetBodyString("x")
	if err := c.Do(req, resp, time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	_ = resp.CloseBodyStream()
	return resp.StatusCode(), nil
}

// A push never follows a redirect: the 3xx is its answer.
func TestClientDoesNotFollowRedirects(t *testing.T) {
	var followed bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed = true
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	}))
	defer srv.Close()
	status, err := post(t, NewClient(nil), srv.URL+"/hook", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusFound || followed {
		t.Fatalf("status %d, followed %v: want the 302 itself", status, followed)
	}
}

// A shutdown past its grace aborts the client: a push waiting for its answer fails at
// once, and so does every later one.
func TestClientAbortCutsPushesInFlight(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := NewClient(nil)
	done := make(chan error, 1)
	go func() {
		_, err := post(t, c, srv.URL, time.Minute)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // the push is waiting for its answer
	start := time.Now()
	c.Abort()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the push in flight succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Abort did not cut the push in flight")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the push ended %v after Abort", took)
	}
	if _, err := post(t, c, srv.URL, time.Minute); err == nil {
		t.Fatal("a push after Abort succeeded")
	}
}

// A server that closes a kept-alive connection (as Node does after 5 s idle) may do so
// just as a push reuses it. The push goes out again on a new connection instead of
// failing the attempt.
func TestClientResendsOnAConnectionClosedUnderIt(t *testing.T) {
	// Each connection answers one request 200 with keep-alive, then closes without
	// saying so: the client pools it, and its next push finds it closed.
	url := rawServer(t, func(conn net.Conn, br *bufio.Reader) {
		answer(conn, br, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	})
	c := NewClient(nil)
	for i := range 5 {
		if i > 0 {
			time.Sleep(50 * time.Millisecond) // the server's close has arrived
		}
		if status, err := post(t, c, url, 5*time.Second); err != nil || status != 200 {
			t.Fatalf("push %d: status %d, %v", i+1, status, err)
		}
	}
}

func TestDiscardReadsAtMostN(t *testing.T) {
	r := strings.NewReader(strings.Repeat("x", 10000))
	discard(r, 5000)
	if r.Len() != 5000 {
		t.Fatalf("%d bytes left, want 5000", r.Len())
	}
	discard(r, 1<<20)
	if r.Len() != 0 {
		t.Fatalf("%d bytes left, want 0", r.Len())
	}
	discard(iotest.ErrReader(io.ErrUnexpectedEOF), 10) // returns on an error
	discard(http.NoBody, 10)
}

// A careless webhook that answers status 000 has not taken the message. fasthttp reads
// that status as 200; the push must fail instead.
func TestClientFailsAZeroStatus(t *testing.T) {
	url := rawServer(t, func(conn net.Conn, br *bufio.Reader) {
		_ = answer(conn, br, "HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n") &&
			answer(conn, br, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	})
	c := NewClient(nil)
	if status, err := post(t, c, url, 5*time.Second); err == nil {
		t.Fatalf("status 000 read as %d", status)
	}
	// The next push is on a new connection, whose first answer is 000 again: the client
	// did not reuse the connection that answered 000.
	if status, err := post(t, c, url, 5*time.Second); err == nil {
		t.Fatalf("second push: status 000 read as %d", status)
	}
}

// rawServer calls serve on every connection it accepts, and closes the connection when
// serve returns. It returns a webhook URL on it.
func rawServer(t *testing.T, serve func(conn net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				serve(conn, bufio.NewReader(conn))
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/hook"
}

// answer reads a request from br and writes raw to conn; it reports whether a request came.
func answer(conn net.Conn, br *bufio.Reader, raw string) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, req.Body)
	_, err = conn.Write([]byte(raw))
	return err == nil
}

// serveRaw answers one request on each connection with raw, then closes it.
func serveRaw(t *testing.T, raw string) string {
	return rawServer(t, func(conn net.Conn, br *bufio.Reader) { answer(conn, br, raw) })
}

// A push that got no answer says why in the webhook's terms (the subscription's last error).
func TestTransportErrorTexts(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	refused := closed.URL
	closed.Close()
	cases := []struct {
		name, url, want string
	}{
		{"nothing listens", refused, "connection refused"},
		{"closed without answering", serveRaw(t, ""), "the webhook closed the connection without answering"},
		{"head too large", serveRaw(t, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("a", 9<<10)+"\r\nContent-Length: 0\r\n\r\n"),
			"the answer's status line and headers exceed 8 KiB"},
		{"not HTTP", serveRaw(t, "SSH-2.0-OpenSSH\r\n\r\n"), "first line of response"},
	}
	c := NewClient(nil)
	for _, tc := range cases {
		_, err := post(t, c, tc.url, 5*time.Second)
		if err == nil {
			t.Errorf("%s: the push succeeded", tc.name)
			continue
		}
		if got := describeTransportError(err); !strings.Contains(got, tc.want) || strings.Contains(got, "fasthttp") {
			t.Errorf("%s: %q, want it to say %q", tc.name, got, tc.want)
		}
	}
	// A head just under the limit is an answer.
	url := serveRaw(t, "HTTP/1.1 204 No Content\r\nX-Big: "+strings.Repeat("a", 7<<10)+"\r\n\r\n")
	if status, err := post(t, c, url, 5*time.Second); err != nil || status != 204 {
		t.Fatalf("a 7 KiB head: status %d, %v", status, err)
	}
}

// An https webhook: the push goes through the bridge's own TLS dial, the connection is
// reused, and an answer of status 000 fails there too (the check reads the plaintext).
func TestClientOverTLS(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/zero" {
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
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	c := NewClient(nil)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c.tlsConfig.RootCAs = pool
	for i := range 3 {
		if status, err := post(t, c, srv.URL+"/hook", 5*time.Second); err != nil || status != http.StatusNoContent {
			t.Fatalf("push %d over TLS: status %d, %v", i+1, status, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("three pushes used %d connections, want 1 kept alive", n)
	}
	if status, err := post(t, c, srv.URL+"/zero", 5*time.Second); err == nil {
		t.Fatalf("status 000 over TLS read as %d", status)
	}
	// A certificate nobody vouches for is a failed push.
	if _, err := post(t, NewClient(nil), srv.URL+"/hook", 5*time.Second); err == nil {
		t.Fatal("a push to an unknown certificate succeeded")
	}
}
