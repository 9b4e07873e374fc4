package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/tracing"
)

// maxResponseRead is how much of a webhook's answer is read (SPEC §5); the rest is discarded.
const maxResponseRead = 64 << 10

// maxErrorText bounds the response excerpt kept as a subscription's last error.
const maxErrorText = 256

// NewHTTPClient returns the shared outbound client for pushes: every dial goes through
// control (the SSRF guard, which sees the resolved address), no proxy (a proxy would hide
// the destination from the guard), redirects are never followed, and connections are
// pooled generously because one webhook host usually takes many concurrent pushes.
func NewHTTPClient(control func(network, address string, c syscall.RawConn) error) *http.Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: control}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         dialer.DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: maxConnsPerHost,
		// Capped as the idle pool is: past it, pushes wait for a connection (inside their
		// timeout) instead of dialing one that is closed right after. Many subscriptions
		// pushing to one host (a fan-out) would otherwise churn thousands of connections.
		MaxConnsPerHost:        maxConnsPerHost,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// pushSender is how pushes use c. A client from NewHTTPClient (or any without a jar or a
// client timeout) only ever returns the first response, so its transport's RoundTrip does
// the same work without Client.Do's per-request redirect bookkeeping. Errors are wrapped as
// Client.Do wraps them, so failure texts do not depend on the path taken.
func pushSender(c *http.Client) func(*http.Request) (*http.Response, error) {
	if c.Jar != nil || c.Timeout != 0 {
		return c.Do
	}
	rt := c.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	return func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if err != nil {
			return nil, &url.Error{Op: "Post", URL: req.URL.Redacted(), Err: err}
		}
		return resp, nil
	}
}

// maxConnsPerHost bounds the connections one process keeps to one webhook host.
const maxConnsPerHost = 1024

// pushResult is what one push produced.
type pushResult struct {
	status     int    // 0 when no response arrived
	errText    string // why it failed, for the last-error field
	retryAfter string
	latency    time.Duration
	// noRetry: the webhook answered a failure with Bridge-Retry: false (SPEC §10).
	noRetry bool
	// token is the lease token the push carried (deferrable subscriptions); deferFor is
	// the Bridge-Ack-Deadline of a 202 that defers the message (0: none).
	token    string
	deferFor time.Duration
}

// maxContextError bounds the bridge-last-error header of a retry (SPEC §10).
const maxContextError = 256

// deadlineClock times one goroutine's calls, one after another (a worker's pushes, the
// settler's Redis writes), with one context and one timer for as long as none runs out of
// time. A context.WithTimeout per push cost a context, a timer and a cancel: about 2% of
// the bridge's CPU at full rate. Not safe for concurrent use: one goroutine owns it.
type deadlineClock struct {
	parent context.Context // cut by a shutdown past its grace
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer // cancels ctx when a push outlives its timeout
}

// begin starts the clock of a call that may take up to d and returns its context.
func (c *deadlineClock) begin(d time.Duration) context.Context {
	if c.ctx == nil {
		c.ctx, c.cancel = context.WithCancel(c.parent)
		c.timer = time.AfterFunc(d, c.cancel)
		return c.ctx
	}
	c.timer.Reset(d)
	return c.ctx
}

// end stops the clock of the call begun last and reports whether it ran out of time.
func (c *deadlineClock) end() (expired bool) {
	if c.timer.Stop() {
		return false
	}
	// Fired (or firing): this context is done for; the next call gets a new one.
	c.cancel()
	c.ctx = nil
	return true
}

// close releases the context and the timer; its goroutine calls it when it ends.
func (c *deadlineClock) close() {
	if c.ctx != nil {
		c.timer.Stop()
		c.cancel()
		c.ctx = nil
	}
}

// push sends m to the subscription's webhook once, timed by clock. It returns aborted=true
// when the push was cut by a shutdown past its grace: the message is then left unsettled
// for reclaim.
func (r *sub) push(clock *deadlineClock, s *core.Subscription, m *core.Message) (res pushResult, aborted bool) {
	ctx := clock.begin(time.Duration(s.Timeout))
	ended := false
	defer func() {
		if !ended {
			clock.end()
		}
	}()
	body, ct := m.Body, m.Headers[core.HeaderContentType]
	ev, isEvent := cloudEvent(s.Format, m)
	if isEvent {
		body, ct = ev.body, ev.contentType
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		return pushResult{errText: "build request: " + err.Error()}, false
	}
	// Sized exactly for what this push carries, so adding the headers never grows the map
	// (and the usual eight fit the runtime's one-group small map); every one-value slice
	// is cut from one backing array instead of allocated on its own.
	pass := func(k string) bool {
		return !core.ForbiddenPushHeader(k) && k != core.HeaderContentType && (!isEvent || !strings.HasPrefix(k, "ce-"))
	}
	n := len(s.Headers) + len(ev.headers) + 8 // the 8 every push carries
	for k := range m.Headers {
		if pass(k) {
			n++
		}
	}
	if m.IdleMS > 0 {
		n++
	}
	if s.Deferrable() && m.Origin != core.Unsettled {
		n++
	}
	if !m.FirstAttempt.IsZero() {
		n++
		if m.LastStatus > 0 || m.LastError != "" {
			n++
		}
	}
	h := make(http.Header, n)
	vals := make([]string, 0, n)
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	req.Header = h
	for k, v := range m.Headers {
		if pass(k) {
			set(canonical(k), v)
		}
	}
	for k, v := range ev.headers {
		set(canonical(k), v)
	}
	for k, v := range s.Headers {
		set(k, v)
	}
	if ct == "" {
		ct = "application/octet-stream"
	}
	now := time.Now()
	set("Content-Type", ct)
	set("User-Agent", "bridge/1")
	set("Webhook-Id", m.ID)
	set("Webhook-Timestamp", strconv.FormatInt(now.Unix(), 10))
	set("Webhook-Signature", r.live.currentSigner(now).Sign(m.ID, now, body))
	set("Redis-Delivery-Count", strconv.Itoa(m.Deliveries))
	if m.IdleMS > 0 {
		set("Redis-Idle-Ms", strconv.FormatInt(m.IdleMS, 10))
	}
	set("Bridge-Subject", m.Subject)
	set("Bridge-Subscription", s.Name)
	if s.Deferrable() && m.Origin != core.Unsettled {
		res.token = newLeaseToken()
		set("Bridge-Lease-Token", res.token)
	}
	if !m.FirstAttempt.IsZero() {
		set("Bridge-First-Attempt", m.FirstAttempt.UTC().Format(time.RFC3339))
		if m.LastStatus > 0 {
			set("Bridge-Last-Status", strconv.Itoa(m.LastStatus))
		} else if m.LastError != "" {
			set("Bridge-Last-Error", clip(m.LastError, maxContextError))
		}
	}

	if tracing.Enabled() {
		span := tracing.StartPush(m.Headers, m.Subject, s.Name, m.ID, redactURL(s.URL), m.Deliveries,
			func(k, v string) { h[canonical(k)] = []string{v} })
		defer func() { span.EndPush(res.status, res.errText) }()
	}
	resp, err := r.e.send(req)
	res.latency = time.Since(now)
	if err != nil {
		if clock.parent.Err() != nil {
			return res, true
		}
		ended = true
		if clock.end() {
			res.errText = fmt.Sprintf("timeout after %s", time.Duration(s.Timeout))
		} else {
			res.errText = describeTransportError(err, time.Duration(s.Timeout))
		}
		return res, false
	}
	res.status = resp.StatusCode
	if res.status < 200 {
		// A final 1xx (101 Switching Protocols: the client hands over the raw connection,
		// which no longer watches ctx) acknowledges nothing. Reading its "body" could wait
		// forever, so it is closed unread and counted as a failed attempt.
		_ = resp.Body.Close()
		res.errText = fmt.Sprintf("HTTP %d: a final informational answer is not an acknowledgement", res.status)
		return res, false
	}
	if res.status == http.StatusAccepted && res.token != "" {
		if v := resp.Header.Get("Bridge-Ack-Deadline"); v != "" {
			d, err := core.ParseDuration(strings.TrimSpace(v))
			if err != nil || d <= 0 || d > core.MaxAckDeadline {
				// A handler that meant to defer and cannot must not lose the message to an
				// ack: the attempt fails and the message comes again.
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseRead))
				_ = resp.Body.Close()
				res.status = 0
				res.errText = fmt.Sprintf("invalid Bridge-Ack-Deadline %q: a duration from 1ms to 12h", printable([]byte(v)))
				return res, false
			}
			res.deferFor = d
		}
	}
	res.retryAfter = resp.Header.Get("Retry-After")
	res.noRetry = strings.EqualFold(strings.TrimSpace(resp.Header.Get("Bridge-Retry")), "false")
	var excerpt []byte
	if res.status < 200 || res.status >= 300 {
		excerpt, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorText))
	}
	// Drain (bounded) so the connection can be reused.
	discard(resp.Body, maxResponseRead-len(excerpt))
	_ = resp.Body.Close()
	if res.status < 200 || res.status >= 300 {
		res.errText = fmt.Sprintf("HTTP %d", res.status)
		if t := printable(excerpt); t != "" {
			res.errText += ": " + t
		}
	}
	return res, false
}

// discardBufs are the buffers discard reads into: a push's answer body is read and
// dropped on every push, so neither a buffer nor a LimitReader is allocated for it.
var discardBufs = sync.Pool{New: func() any { return new([4096]byte) }}

// discard reads and drops up to n bytes of body (the empty body of a typical 2xx costs no
// read at all).
func discard(body io.Reader, n int) {
	if body == http.NoBody || n <= 0 {
		return
	}
	buf := discardBufs.Get().(*[4096]byte)
	defer discardBufs.Put(buf)
	for n > 0 {
		k, err := body.Read(buf[:min(n, len(buf))])
		n -= k
		if err != nil {
			return
		}
	}
}

func describeTransportError(err error, timeout time.Duration) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("timeout after %s", timeout)
	}
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			err = inner
		}
	}
	return err.Error()
}

// printable keeps a short, single-line, valid UTF-8 excerpt of a response body.
func printable(b []byte) string {
	s := strings.ToValidUTF8(string(b), "")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	for len(s) > maxErrorText && !utf8.RuneStart(s[maxErrorText]) {
		s = s[:len(s)-1]
	}
	if len(s) > maxErrorText {
		s = s[:maxErrorText]
	}
	return s
}

// redactURL is a webhook URL as traces may show it: no credentials, no query (either can
// hold a secret).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// newLeaseToken is a push's lease token: 128 random bits, so no handler can guess another
// delivery's.
func newLeaseToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// clip cuts s to at most n bytes without splitting a character.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func canonical(lower string) string { return http.CanonicalHeaderKey(lower) }
