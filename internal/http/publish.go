package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/tracing"
	"golang.org/x/net/http/httpguts"
)

const (
	forwardPrefix      = "Bridge-Forward-"
	maxCEHeaders       = 32
	maxCEHeaderLen     = 1024
	maxPartitionKeyLen = 1024
	maxForwarded       = 32
	maxTraceHeaderLen  = 1024
	maxIdempotencyKey  = 256
	maxDelay           = 366 * 24 * time.Hour
	// MaxBatch is the largest number of messages in one batch publish.
	MaxBatch = 1000
)

type publishResponse struct {
	ID        string `json:"id"`
	Subject   string `json:"subject"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Receivers *int64 `json:"receivers,omitempty"`
}

// writeAccepted answers the common publish, {"id","subject"}, without the JSON encoder:
// ids and subjects hold only characters JSON takes as they are ([A-Za-z0-9_.:~-]), and
// this runs for every message.
func writeAccepted(w http.ResponseWriter, id, subject string) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = nosniff
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(appendAccepted(make([]byte, 0, len(id)+len(subject)+32), id, subject))
}

// appendAccepted appends the common publish's answer, {"id","subject"}, to dst.
func appendAccepted(dst []byte, id, subject string) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, id...)
	dst = append(dst, `","subject":"`...)
	dst = append(dst, subject...)
	return append(dst, "\"}\n"...)
}

// Header values shared by every answer (net/http does not modify them).
var (
	jsonContentType = []string{"application/json"}
	nosniff         = []string{"nosniff"}
)

// target is where a publish goes: the subject and the transport's options.
type target struct {
	subject   string
	transport core.Transport
	sharded   bool
}

// checkPublishTarget validates the subject and the transport and mode queries of a publish route.
func checkPublishTarget(w http.ResponseWriter, r *http.Request) (target, bool) {
	t := target{subject: param(r, "subject")}
	if !core.ValidSubject(t.subject) {
		writeProblem(w, "invalid_subject", core.SubjectRule)
		return t, false
	}
	if r.URL.RawQuery == "" {
		t.transport = core.TransportStream // the common publish: no query to parse
		return t, true
	}
	q := r.URL.Query()
	t.transport = core.Transport(q.Get("transport"))
	if t.transport == "" {
		t.transport = core.TransportStream
	}
	if t.transport != core.TransportStream && t.transport != core.TransportList && t.transport != core.TransportPubSub {
		writeProblem(w, "invalid_query", "transport must be stream, list or pubsub")
		return t, false
	}
	switch mode := q.Get("mode"); {
	case mode == "" || core.PubSubMode(mode) == core.PubSubClassic:
	case core.PubSubMode(mode) == core.PubSubSharded && t.transport == core.TransportPubSub:
		t.sharded = true
	default:
		writeProblem(w, "invalid_query", "mode is classic or sharded, and only with transport=pubsub")
		return t, false
	}
	return t, true
}

func (a *api) publish(w http.ResponseWriter, r *http.Request) {
	t, ok := checkPublishTarget(w, r)
	if !ok {
		return
	}
	subject := t.subject
	headers, err := messageHeaders(r.Header)
	if err != nil {
		writeProblem(w, "invalid_header", err.Error())
		return
	}
	out := core.Outgoing{Headers: headers, IdempotencyKey: header(r.Header, "Idempotency-Key")}
	if err := checkIdempotencyKey(out.IdempotencyKey); err != nil {
		writeProblem(w, "invalid_header", "Idempotency-Key "+err.Error())
		return
	}
	if out.NotBefore, err = notBefore(header(r.Header, "Bridge-Delay"), header(r.Header, "Bridge-Not-Before"), time.Now()); err != nil {
		writeProblem(w, "invalid_header", err.Error())
		return
	}
	out.Body, err = readBody(w, r, a.opts.MaxBody)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeProblem(w, "payload_too_large", fmt.Sprintf("the body exceeds %d bytes (BRIDGE_MAX_BODY)", a.opts.MaxBody))
			return
		}
		writeProblem(w, "invalid_json", "could not read the request body")
		return
	}
	ctx := a.deadlines.get()
	// With tracing on, the message carries its publish span's traceparent (its pushes
	// join that trace); off, this costs one atomic load.
	span := tracing.StartPublish(r.Context(), header(r.Header, "Traceparent"), header(r.Header, "Tracestate"), subject, string(t.transport), headers)
	if t.transport != core.TransportStream {
		if out.IdempotencyKey != "" || !out.NotBefore.IsZero() {
			span.End(nil)
			writeProblem(w, "unsupported_transport", "Idempotency-Key, Bridge-Delay and Bridge-Not-Before work with the stream transport")
			return
		}
		resp := publishResponse{Subject: subject}
		var err error
		if t.transport == core.TransportList {
			resp.ID, err = a.b.PublishList(ctx, subject, out.Body, headers)
		} else {
			var n int64
			resp.ID, n, err = a.b.PublishPubSub(ctx, subject, out.Body, headers, t.sharded)
			resp.Receivers = &n
		}
		span.Message(resp.ID)
		span.End(err)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		a.opts.Metrics.Published(subject, string(t.transport), 1)
		a.opts.Published(subject, t.transport)
		writeJSON(w, http.StatusAccepted, resp)
		return
	}
	if out.IdempotencyKey == "" && out.NotBefore.IsZero() {
		// The common case: one XADD, no script.
		id, err := a.b.Publish(ctx, subject, out.Body, headers)
		span.Message(id)
		span.End(err)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		a.opts.Metrics.Published(subject, "stream", 1)
		a.opts.Published(subject, core.TransportStream)
		writeAccepted(w, id, subject)
		return
	}
	res := a.b.PublishMany(ctx, subject, []core.Outgoing{out}, a.opts.IdempotencyWindow)[0]
	span.Message(res.ID)
	span.End(res.Err)
	if res.Err != nil {
		a.fail(w, r, res.Err)
		return
	}
	if !res.Duplicate {
		a.opts.Metrics.Published(subject, "stream", 1)
		a.opts.Published(subject, core.TransportStream)
	}
	writeJSON(w, http.StatusAccepted, publishResponse{ID: res.ID, Subject: subject, Duplicate: res.Duplicate})
}

func checkIdempotencyKey(k string) error {
	if len(k) > maxIdempotencyKey {
		return fmt.Errorf("is longer than %d bytes", maxIdempotencyKey)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return errors.New("must be visible ASCII without spaces")
		}
	}
	return nil
}

// notBefore turns Bridge-Delay (Go duration or whole seconds) or Bridge-Not-Before (RFC 3339)
// into a time; zero when neither asks for a future time.
func notBefore(delay, at string, now time.Time) (time.Time, error) {
	switch {
	case delay != "" && at != "":
		return time.Time{}, errors.New("give Bridge-Delay or Bridge-Not-Before, not both")
	case delay != "":
		d, err := core.ParseDuration(delay)
		if err != nil || d < 0 || d > maxDelay {
			return time.Time{}, errors.New(`Bridge-Delay must be a duration such as "30s" or whole seconds, at most 366 days`)
		}
		if d == 0 {
			return time.Time{}, nil
		}
		return now.Add(d), nil
	case at != "":
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return time.Time{}, errors.New("Bridge-Not-Before must be an RFC 3339 time such as 2026-01-02T15:04:05Z")
		}
		if t.Sub(now) > maxDelay {
			return time.Time{}, errors.New("Bridge-Not-Before is more than 366 days ahead")
		}
		if !t.After(now) {
			return time.Time{}, nil
		}
		return t, nil
	}
	return time.Time{}, nil
}

// messageHeaders picks what a publish request stores with the message: its content type,
// partition key, trace context and Bridge-Forward-* headers, names lower-cased.
func messageHeaders(h http.Header) (map[string]string, error) {
	out := make(map[string]string, 4)
	if ct := header(h, "Content-Type"); ct != "" {
		if err := setContentType(out, ct); err != nil {
			return nil, err
		}
	}
	if ce := header(h, "Content-Encoding"); ce != "" {
		// Stored and sent on, so a receiver gets gzip bytes labelled as gzip.
		if len(ce) > 256 || !httpguts.ValidHeaderFieldValue(ce) {
			return nil, errors.New("Content-Encoding is not a valid header value")
		}
		out[core.HeaderContentEncoding] = ce
	}
	if err := setPartitionKey(out, header(h, "Bridge-Partition-Key")); err != nil {
		return nil, fmt.Errorf("Bridge-Partition-Key %w", err)
	}
	for _, name := range [...][2]string{{"Traceparent", core.HeaderTraceparent}, {"Tracestate", core.HeaderTracestate}} {
		if err := setTraceHeader(out, name[1], header(h, name[0])); err != nil {
			return nil, err
		}
	}
	// One pass for the prefixed headers (most publishes have none, and then nothing more
	// is allocated): CloudEvents binary-mode ce-* attributes are kept with the message
	// (pushed as they are; cloudevents formats take them as the event's), and
	// Bridge-Forward-* headers are delivered on the push.
	var fwd map[string]string
	ce := 0
	for k, vs := range h {
		if len(k) > 3 && strings.EqualFold(k[:3], "ce-") {
			ce++
			if ce > maxCEHeaders || len(vs) != 1 || len(vs[0]) > maxCEHeaderLen || !httpguts.ValidHeaderFieldValue(vs[0]) {
				return nil, fmt.Errorf("%s: at most %d ce-* headers, once each, valid values of at most %d bytes", k, maxCEHeaders, maxCEHeaderLen)
			}
			out[strings.ToLower(k)] = vs[0]
			continue
		}
		name, ok := strings.CutPrefix(k, forwardPrefix)
		if !ok {
			continue
		}
		if name == "" || len(vs) != 1 {
			return nil, fmt.Errorf("%s must name a header and appear once", k)
		}
		if fwd == nil {
			fwd = make(map[string]string)
		}
		fwd[name] = vs[0]
	}
	if err := setForwarded(out, fwd, forwardPrefix); err != nil {
		return nil, err
	}
	return out, nil
}

// header is h.Get for a name already in canonical form, as the server stores every
// request header: it skips Get's canonicalisation, which runs for every header of every
// publish.
func header(h http.Header, canonicalName string) string {
	if v := h[canonicalName]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func setContentType(out map[string]string, ct string) error {
	if len(ct) > 256 || !httpguts.ValidHeaderFieldValue(ct) {
		return errors.New("Content-Type is not a valid header value")
	}
	out[core.HeaderContentType] = ct
	return nil
}

// setTraceHeader stores the trace context header name (lower-case) when v is not empty.
func setTraceHeader(out map[string]string, name, v string) error {
	if v == "" {
		return nil
	}
	if len(v) > maxTraceHeaderLen || !httpguts.ValidHeaderFieldValue(v) {
		return fmt.Errorf("%s is not a valid header value", name)
	}
	out[name] = v
	return nil
}

func setPartitionKey(out map[string]string, pk string) error {
	if pk == "" {
		return nil
	}
	if len(pk) > maxPartitionKeyLen || !httpguts.ValidHeaderFieldValue(pk) {
		return fmt.Errorf("must be a valid header value of at most %d bytes", maxPartitionKeyLen)
	}
	out[core.HeaderPartitionKey] = pk
	return nil
}

// setForwarded validates headers to deliver on the push; prefix names their origin in errors.
func setForwarded(out map[string]string, fwd map[string]string, prefix string) error {
	if len(fwd) > maxForwarded {
		return fmt.Errorf("at most %d forwarded headers", maxForwarded)
	}
	for name, v := range fwd {
		if err := core.ValidateHeader(name, v); err != nil {
			return fmt.Errorf("%s%s: %w", prefix, name, err)
		}
		lower := strings.ToLower(name)
		if lower == core.HeaderPartitionKey || lower == core.HeaderDeadLetterReason || strings.HasPrefix(lower, "bridge-") {
			return fmt.Errorf("%s%s: header %q is reserved", prefix, name, name)
		}
		out[lower] = v
	}
	return nil
}

// batchItem is one message of a batch publish.
type batchItem struct {
	Data           json.RawMessage   `json:"data"`
	DataBase64     *string           `json:"data_base64"`
	ContentType    string            `json:"content_type"`
	Headers        map[string]string `json:"headers"`
	PartitionKey   string            `json:"partition_key"`
	IdempotencyKey string            `json:"idempotency_key"`
	Delay          *core.Duration    `json:"delay"`
}

type batchRequest struct {
	Messages []batchItem `json:"messages"`
}

type batchResult struct {
	ID        string   `json:"id,omitempty"`
	Duplicate bool     `json:"duplicate,omitempty"`
	Error     *Problem `json:"error,omitempty"`
}

func (a *api) publishBatch(w http.ResponseWriter, r *http.Request) {
	t, ok := checkPublishTarget(w, r)
	if !ok {
		return
	}
	if t.transport != core.TransportStream {
		writeProblem(w, "unsupported_transport", "batch publish works with the stream transport")
		return
	}
	subject := t.subject
	var req batchRequest
	if !decodeJSONLimit(w, r, &req, false, a.opts.MaxBatchBody) {
		return
	}
	if len(req.Messages) == 0 {
		writeProblem(w, "invalid_json", `"messages" must hold at least one message`)
		return
	}
	if len(req.Messages) > MaxBatch {
		writeProblem(w, "payload_too_large", fmt.Sprintf("at most %d messages per batch", MaxBatch))
		return
	}
	results := make([]batchResult, len(req.Messages))
	outs := make([]core.Outgoing, 0, len(req.Messages))
	index := make([]int, 0, len(req.Messages))
	now := time.Now()
	for i, it := range req.Messages {
		o, code, err := a.batchOutgoing(it, now)
		if err != nil {
			p := newProblem(code, fmt.Sprintf("messages[%d]: %v", i, err))
			results[i].Error = &p
			continue
		}
		outs = append(outs, o)
		index = append(index, i)
	}
	if len(outs) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), 2*requestTimeout)
		defer cancel()
		// One span for the batch; every message of it joins the batch's trace.
		span := tracing.StartPublish(r.Context(), r.Header.Get("Traceparent"), r.Header.Get("Tracestate"), subject, "stream", nil)
		for i := range outs {
			span.Inject(outs[i].Headers)
		}
		defer span.End(nil)
		written := 0
		for j, res := range a.b.PublishMany(ctx, subject, outs, a.opts.IdempotencyWindow) {
			i := index[j]
			if res.Err != nil {
				code := "internal"
				switch {
				case errors.Is(res.Err, core.ErrWrongType):
					code = "wrong_type"
				case errors.Is(res.Err, core.ErrUnavailable), errors.Is(res.Err, context.DeadlineExceeded):
					code = "redis_unavailable"
				}
				p := newProblem(code, fmt.Sprintf("messages[%d]: %v", i, res.Err))
				results[i].Error = &p
				continue
			}
			results[i] = batchResult{ID: res.ID, Duplicate: res.Duplicate}
			if !res.Duplicate {
				written++
			}
		}
		a.opts.Metrics.Published(subject, "stream", written)
		if written > 0 {
			a.opts.Published(subject, core.TransportStream)
		}
		if allUnavailable(results) {
			writeProblem(w, "redis_unavailable", "redis did not confirm any message of the batch; retry later")
			return
		}
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"results": results})
}

func (a *api) batchOutgoing(it batchItem, now time.Time) (core.Outgoing, string, error) {
	o := core.Outgoing{Headers: make(map[string]string, 2), IdempotencyKey: it.IdempotencyKey}
	hasData := len(it.Data) > 0 && !bytes.Equal(it.Data, []byte("null"))
	switch {
	case hasData && it.DataBase64 != nil:
		return o, "invalid_json", errors.New(`give "data" or "data_base64", not both`)
	case hasData:
		o.Body = it.Data
		o.Headers[core.HeaderContentType] = "application/json"
	case it.DataBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*it.DataBase64)
		if err != nil {
			return o, "invalid_json", errors.New(`"data_base64" is not standard base64`)
		}
		o.Body = b
		o.Headers[core.HeaderContentType] = "application/octet-stream"
	default:
		return o, "invalid_json", errors.New(`"data" or "data_base64" is required`)
	}
	if int64(len(o.Body)) > a.opts.MaxBody {
		return o, "payload_too_large", fmt.Errorf("the message exceeds %d bytes (BRIDGE_MAX_BODY)", a.opts.MaxBody)
	}
	if it.ContentType != "" {
		if err := setContentType(o.Headers, it.ContentType); err != nil {
			return o, "invalid_header", err
		}
	}
	if err := setPartitionKey(o.Headers, it.PartitionKey); err != nil {
		return o, "invalid_header", fmt.Errorf("partition_key %w", err)
	}
	if err := setForwarded(o.Headers, it.Headers, "headers."); err != nil {
		return o, "invalid_header", err
	}
	if err := checkIdempotencyKey(it.IdempotencyKey); err != nil {
		return o, "invalid_header", fmt.Errorf("idempotency_key %w", err)
	}
	if it.Delay != nil {
		d := time.Duration(*it.Delay)
		if d < 0 || d > maxDelay {
			return o, "invalid_json", errors.New(`"delay" must be between 0 and 366 days`)
		}
		if d > 0 {
			o.NotBefore = now.Add(d)
		}
	}
	return o, "", nil
}

// trustedLength is the largest announced Content-Length read into a buffer of exactly that
// size up front. Beyond it the buffer grows with the bytes that actually arrive, so a
// client announcing megabytes and sending nothing cannot make the bridge hold them.
const trustedLength = 64 << 10

// readBody reads a bounded request body: small announced bodies in one allocation, larger
// ones into a buffer that grows only as data arrives.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	n := r.ContentLength
	if n > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	if n >= 0 && n <= trustedLength {
		buf := make([]byte, n)
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	buf := make([]byte, 0, 4096)
	for {
		if n > 0 && int64(len(buf)) == n {
			// The server's body reader ends at the announced length.
			return buf, nil
		}
		if len(buf) == cap(buf) {
			grow := len(buf) // doubling, but never past the announced length
			if n > 0 {
				grow = min(grow, int(n)-len(buf))
			}
			buf = slices.Grow(buf, grow)
		}
		m, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// allUnavailable reports whether every item of a batch failed because Redis could not
// take it: the batch as a whole then failed the way a single publish does (503).
func allUnavailable(results []batchResult) bool {
	for _, r := range results {
		if r.Error == nil || r.Error.Code != "redis_unavailable" {
			return false
		}
	}
	return len(results) > 0
}
