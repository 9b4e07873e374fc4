package delivery

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/tracing"
	"github.com/valyala/fasthttp"
)

// maxResponseRead is how much of a webhook's answer is read (SPEC §5); the rest is discarded.
const maxResponseRead = 64 << 10

// maxErrorText bounds the response excerpt kept as a subscription's last error.
const maxErrorText = 256

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

// push sends m to the subscription's webhook once, within the subscription's timeout. It
// returns aborted=true when the push was cut by a shutdown past its grace (parent is done):
// the message is then left unsettled for reclaim.
func (r *sub) push(parent context.Context, s *core.Subscription, m *core.Message) (res pushResult, aborted bool) {
	if parent.Err() != nil {
		return res, true
	}
	body, ct := m.Body, m.Headers[core.HeaderContentType]
	ev, isEvent := cloudEvent(s.Format, m)
	if isEvent {
		body, ct = ev.body, ev.contentType
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer func() {
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(s.URL)
	h := &req.Header
	// Later ones win: the message's headers, its CloudEvents attributes, the subscription's
	// headers, then the bridge's own.
	for k, v := range m.Headers {
		if !core.ForbiddenPushHeader(k) && k != core.HeaderContentType && (!isEvent || !strings.HasPrefix(k, "ce-")) {
			h.Set(k, v)
		}
	}
	for k, v := range ev.headers {
		h.Set(k, v)
	}
	for k, v := range s.Headers {
		h.Set(k, v)
	}
	if ct == "" {
		ct = "application/octet-stream"
	}
	now := time.Now()
	var num [20]byte
	h.SetContentType(ct)
	h.SetUserAgent("bridge/1")
	h.Set("Webhook-Id", m.ID)
	h.SetBytesV("Webhook-Timestamp", strconv.AppendInt(num[:0], now.Unix(), 10))
	h.Set("Webhook-Signature", r.live.currentSigner(now).Sign(m.ID, now, body))
	h.SetBytesV("Redis-Delivery-Count", strconv.AppendInt(num[:0], int64(m.Deliveries), 10))
	if m.IdleMS > 0 {
		h.SetBytesV("Redis-Idle-Ms", strconv.AppendInt(num[:0], m.IdleMS, 10))
	}
	h.Set("Bridge-Subject", m.Subject)
	h.Set("Bridge-Subscription", s.Name)
	if s.Deferrable() && m.Origin != core.Unsettled {
		res.token = newLeaseToken()
		h.Set("Bridge-Lease-Token", res.token)
	}
	if !m.FirstAttempt.IsZero() {
		h.Set("Bridge-First-Attempt", m.FirstAttempt.UTC().Format(time.RFC3339))
		if m.LastStatus > 0 {
			h.SetBytesV("Bridge-Last-Status", strconv.AppendInt(num[:0], int64(m.LastStatus), 10))
		} else if m.LastError != "" {
			h.Set("Bridge-Last-Error", clip(m.LastError, maxContextError))
		}
	}
	// The body is the message's (or the event's) own bytes, not a copy: nothing changes
	// them while the push runs.
	req.SetBodyRaw(body)

	if tracing.Enabled() {
		span := tracing.StartPush(m.Headers, m.Subject, s.Name, m.ID, redactURL(s.URL), m.Deliveries,
			func(k, v string) { h.Set(k, v) })
		defer func() { span.EndPush(res.status, res.errText) }()
	}
	timeout := time.Duration(s.Timeout)
	deadline := now.Add(timeout)
	err := r.e.client.Do(req, resp, deadline)
	res.latency = time.Since(now)
	if err != nil {
		if parent.Err() != nil {
			return res, true
		}
		if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) || !time.Now().Before(deadline) {
			res.errText = fmt.Sprintf("timeout after %s", timeout)
		} else {
			res.errText = describeTransportError(err)
		}
		return res, false
	}
	// The answer's body is a stream on the connection: closing it unread (or partly read)
	// closes the connection rather than reading on.
	defer func() { _ = resp.CloseBodyStream() }()
	answer := resp.BodyStream()
	if answer == nil {
		answer = http.NoBody // no body to read (a 204, a 304)
	}
	res.status = resp.StatusCode()
	if res.status < 200 {
		// A final 1xx (101 Switching Protocols) acknowledges nothing, and what follows it is
		// not HTTP: its connection is closed unread, and the attempt fails.
		res.errText = fmt.Sprintf("HTTP %d: a final informational answer is not an acknowledgement", res.status)
		return res, false
	}
	if res.status == http.StatusAccepted && res.token != "" {
		if v := resp.Header.Peek("Bridge-Ack-Deadline"); len(v) > 0 {
			d, err := core.ParseDuration(strings.TrimSpace(string(v)))
			if err != nil || d <= 0 || d > core.MaxAckDeadline {
				// A handler that meant to defer and cannot must not lose the message to an
				// ack: the attempt fails and the message comes again.
				discard(answer, maxResponseRead)
				res.status = 0
				res.errText = fmt.Sprintf("invalid Bridge-Ack-Deadline %q: a duration from 1ms to 12h", printable(v))
				return res, false
			}
			res.deferFor = d
		}
	}
	if v := resp.Header.Peek("Retry-After"); len(v) > 0 {
		res.retryAfter = string(v)
	}
	if v := resp.Header.Peek("Bridge-Retry"); len(v) > 0 {
		res.noRetry = strings.EqualFold(strings.TrimSpace(string(v)), "false")
	}
	var excerpt []byte
	failed := res.status < 200 || res.status >= 300
	if failed {
		excerpt, _ = io.ReadAll(io.LimitReader(answer, maxErrorText))
	}
	// Read on (bounded) so the connection can be reused.
	discard(answer, maxResponseRead-len(excerpt))
	if failed {
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

// describeTransportError is a failed push's last error when no answer came, in the
// webhook's terms rather than the HTTP library's (whose advice is for a server's author).
func describeTransportError(err error) string {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrConnectionClosed), errors.Is(err, io.EOF):
		return "the webhook closed the connection without answering"
	case errors.As(err, &small):
		return fmt.Sprintf("the answer's status line and headers exceed %d KiB", maxResponseHeader>>10)
	}
	return clip(strings.ReplaceAll(err.Error(), "fasthttp: ", ""), maxErrorText)
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
