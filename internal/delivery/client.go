package delivery

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Limits of the push client.
const (
	// maxConnsPerHost bounds the connections one process keeps to one webhook host. Past
	// it, pushes wait for a connection (inside their timeout) instead of dialing one that
	// is closed right after: many subscriptions pushing to one host (a fan-out) would
	// otherwise churn thousands of connections.
	maxConnsPerHost = 1024
	// maxResponseHeader bounds a webhook's answer line and headers together (README); a
	// larger answer fails the attempt. It is the size of the read buffer each push in
	// flight holds, so it weighs on peak memory: 256 pushes in flight hold 2 MiB. 8 KiB is
	// also what nginx allows an upstream's answer head by default.
	maxResponseHeader = 8 << 10
	// idleConnTimeout is how long an unused connection to a webhook is kept.
	idleConnTimeout = 90 * time.Second
	// dialTimeout bounds a connection's dial (the push's own timeout may cut it sooner).
	dialTimeout = 10 * time.Second
)

// Client sends pushes: HTTP/1.1 with keep-alive, on the caller's goroutine.
//
// It is fasthttp's client. net/http's moves every request through two goroutines of its
// own (a connection's write and read loops) and allocates a request, a response and their
// header maps per push: about 28 µs of CPU per push on the bench machine against 15 µs
// here, which was a quarter of the bridge's CPU per delivered message.
//
// What a push relies on is set here: every dial goes through the SSRF guard (which sees
// the resolved address), there is no proxy (it would hide the destination from the
// guard), redirects are never followed (fasthttp's Do does not), a path is sent as the
// subscription spells it, and answers are streamed, so a huge or slow body is read only
// as far as the push wants, within its timeout.
type Client struct {
	fc     *fasthttp.Client
	dialer net.Dialer
	// tlsConfig is the base of every https connection's configuration (ServerName is
	// set per host).
	tlsConfig *tls.Config

	mu      sync.Mutex
	conns   map[*trackedConn]struct{}
	aborted bool
}

// NewClient returns the push client. control, when set, vets every address dialed (the
// SSRF guard); nil allows any.
func NewClient(control func(network, address string, c syscall.RawConn) error) *Client {
	c := &Client{
		dialer:    net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second, Control: control},
		tlsConfig: &tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(0)},
		conns:     map[*trackedConn]struct{}{},
	}
	c.fc = &fasthttp.Client{
		DialTimeout:         c.dial,
		MaxConnsPerHost:     maxConnsPerHost,
		MaxIdleConnDuration: idleConnTimeout,
		// A push waits for a connection as long as its own timeout allows.
		MaxConnWaitTimeout:       time.Hour,
		ReadBufferSize:           maxResponseHeader,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true,
		StreamResponseBody:       true,
		RetryIfErr:               retryStaleConn,
		ConfigureClient: func(hc *fasthttp.HostClient) error {
			// Errors name what was wrong, without quoting the answer's bytes.
			hc.SecureErrorLogMessage = true
			if hc.IsTLS {
				// TLS is set up in the bridge's own dial, so that the answer check
				// (checkedConn) reads plaintext; fasthttp takes a connection with a
				// Handshake method as TLS already.
				hc.DialTimeout = c.dialTLS
			}
			return nil
		},
	}
	return c
}

// retryStaleConn sends a push once more when its connection turned out to be closed
// before any answer came: a server that closes idle keep-alive connections (Node's
// default is after 5 s) can do so just as a push reuses one. net/http's read loop
// notices such a close while the connection waits in the pool; fasthttp only when a
// request uses it. Sending again may repeat a push the server did receive, which
// at-least-once delivery allows (the webhook-id tells them apart).
func retryStaleConn(_ *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	return false, attempts == 1 && (errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
}

// errClientAborted is what dials fail with once the client was aborted.
var errClientAborted = errors.New("the bridge is shutting down")

// dial connects to a plain-HTTP webhook.
func (c *Client) dial(addr string, timeout time.Duration) (net.Conn, error) {
	conn, err := c.dialTCP(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &checkedConn{Conn: conn}, nil
}

// dialTLS connects to an https webhook. The handshake happens with the first write,
// within the push's deadline.
func (c *Client) dialTLS(addr string, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	conn, err := c.dialTCP(addr, timeout)
	if err != nil {
		return nil, err
	}
	cfg := c.tlsConfig.Clone()
	cfg.ServerName = host
	return &checkedTLSConn{Conn: tls.Client(conn, cfg)}, nil
}

// dialTCP connects through the SSRF guard, and tracks the connection for Abort.
func (c *Client) dialTCP(addr string, timeout time.Duration) (net.Conn, error) {
	c.mu.Lock()
	aborted := c.aborted
	c.mu.Unlock()
	if aborted {
		return nil, errClientAborted
	}
	d := c.dialer
	d.Timeout = min(d.Timeout, timeout)
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: conn, c: c}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		_ = conn.Close()
		return nil, errClientAborted
	}
	c.conns[tc] = struct{}{}
	return tc, nil
}

// Do sends req and reads the answer's status and headers into resp before deadline; the
// body, if any, is then resp's body stream, which the caller reads (also bounded by
// deadline) and closes.
func (c *Client) Do(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time) error {
	return c.fc.DoDeadline(req, resp, deadline)
}

// Abort cuts every push in flight (they fail at once) and makes every later one fail:
// fasthttp takes no context, so closing the connections is how a shutdown past its grace
// stops pushes.
func (c *Client) Abort() {
	c.mu.Lock()
	c.aborted = true
	conns := c.conns
	c.conns = map[*trackedConn]struct{}{}
	c.mu.Unlock()
	for tc := range conns {
		_ = tc.Conn.Close()
	}
}

// CloseIdleConnections closes the connections no push uses now.
func (c *Client) CloseIdleConnections() { c.fc.CloseIdleConnections() }

// trackedConn is a connection the client can close from Abort.
type trackedConn struct {
	net.Conn
	c    *Client
	once sync.Once
}

func (tc *trackedConn) Close() error {
	tc.once.Do(func() {
		tc.c.mu.Lock()
		delete(tc.c.conns, tc)
		tc.c.mu.Unlock()
	})
	return tc.Conn.Close()
}

// errZeroStatus fails a push answered with status 000, which fasthttp would report as 200.
var errZeroStatus = errors.New("malformed HTTP status code 000")

// answerCheck refuses an answer whose status is 000. fasthttp keeps a status of 0 as
// "unset" and reports 200 for it, which would acknowledge a message the webhook never
// took; to net/http it was status 0, a failed attempt. It looks at the first read after
// each write: the client sends one request at a time on a connection, and waits for its
// answer before the next.
type answerCheck struct{ answerNext bool }

func (a *answerCheck) wrote() { a.answerNext = true }

func (a *answerCheck) read(b []byte, n int, err error) (int, error) {
	if a.answerNext && n > 0 {
		a.answerNext = false
		if b := b[:n]; len(b) >= 12 && string(b[:7]) == "HTTP/1." && string(b[8:12]) == " 000" {
			return 0, errZeroStatus
		}
	}
	return n, err
}

// checkedConn is a plain-HTTP connection with the answer check.
type checkedConn struct {
	net.Conn
	check answerCheck
}

func (cc *checkedConn) Write(b []byte) (int, error) {
	cc.check.wrote()
	return cc.Conn.Write(b)
}

func (cc *checkedConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	return cc.check.read(b, n, err)
}

// checkedTLSConn is an https connection with the answer check on its plaintext. It keeps
// *tls.Conn's Handshake method, by which fasthttp knows it for TLS.
type checkedTLSConn struct {
	*tls.Conn
	check answerCheck
}

func (cc *checkedTLSConn) Write(b []byte) (int, error) {
	cc.check.wrote()
	return cc.Conn.Write(b)
}

func (cc *checkedTLSConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	return cc.check.read(b, n, err)
}
