package httpapi

import (
	"bytes"
	"io"
	"net/http"
	"strings"

	"github.com/bridge-dev/bridge/internal/auth"
	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/tracing"
	"github.com/go-chi/chi/v5"
	"github.com/valyala/fasthttp"
)

// Handler is the API's HTTP handler (NewHandler). Served by Server, its plain publish is
// answered natively; any net/http server serves all of it through ServeHTTP.
type Handler struct {
	h   http.Handler
	api *api
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.h.ServeHTTP(w, r) }

// servePublish answers the plain publish, the request sent once per message: POST
// /v1/subjects/{subject}/messages, stream transport (no query), an announced body within
// the limits, no header that asks for more than a content type and trace context, and a
// token that may publish to the subject. It reports false, having written nothing and
// read nothing of the body, for any other request: the net/http handler then serves it,
// every error answer included, so there is one implementation of each rule and this
// path only decides what it can take.
func (a *api) servePublish(ctx *fasthttp.RequestCtx) bool {
	if !a.native || !ctx.IsPost() {
		return false
	}
	rest, ok := bytes.CutPrefix(ctx.Request.Header.RequestURI(), []byte("/v1/subjects/"))
	if !ok {
		return false
	}
	raw, ok := bytes.CutSuffix(rest, []byte("/messages"))
	// A valid subject holds nothing a path escapes, no '/' and no '?': the raw bytes are
	// the subject, and a query or a fragment makes it invalid.
	if !ok || !core.ValidSubject(string(raw)) {
		return false
	}
	n := ctx.Request.Header.ContentLength()
	if n < 0 || int64(n) > a.opts.MaxBody || n > trustedLength {
		return false // chunked, or a body the net/http path reads (or refuses) with care
	}
	var ct, authz, traceparent, tracestate []byte
	plain := true
	for k, v := range ctx.Request.Header.All() {
		switch string(k) {
		case "Host", "Content-Length", "User-Agent", "Accept", "Accept-Encoding", "Connection":
		case "Content-Type":
			plain = plain && ct == nil
			ct = v
		case "Authorization":
			plain = plain && authz == nil
			authz = v
		case "Traceparent":
			plain = plain && traceparent == nil
			traceparent = v
		case "Tracestate":
			plain = plain && tracestate == nil
			tracestate = v
		default:
			plain = plain && !storedOrActedOn(k)
		}
	}
	if !plain || !validStored(ct, 256) || !validStored(traceparent, maxTraceHeaderLen) || !validStored(tracestate, maxTraceHeaderLen) {
		return false
	}
	subject := string(raw)
	if a.opts.Tokens != nil {
		scheme, tok, ok := strings.Cut(string(authz), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return false
		}
		p, ok := a.opts.Tokens.Current().Authenticate(strings.TrimSpace(tok))
		if !ok || !p.Allows(auth.ActionPublish, subject) {
			return false
		}
	}

	w := &problemRecorder{ResponseWriter: &ctxWriter{ctx: ctx}}
	defer func() {
		if w.code != "" {
			a.opts.Metrics.PublishError(w.code)
			w.ResponseWriter.(*ctxWriter).finish()
		}
	}()
	// The body is the bridge's own copy: a write Redis has not taken when the request's
	// deadline passes stays queued in the client, past the reuse of fasthttp's buffers.
	body := make([]byte, n)
	if n > 0 {
		var err error
		if s := ctx.RequestBodyStream(); s != nil {
			_, err = io.ReadFull(s, body)
		} else {
			copy(body, ctx.PostBody())
		}
		if err != nil {
			writeProblem(w, "invalid_json", "could not read the request body")
			return true
		}
	}
	headers := make(map[string]string, 4)
	if len(ct) > 0 {
		headers[core.HeaderContentType] = string(ct)
	}
	tp, ts := string(traceparent), string(tracestate)
	if tp != "" {
		headers[core.HeaderTraceparent] = tp
	}
	if ts != "" {
		headers[core.HeaderTracestate] = ts
	}
	rctx := a.deadlines.get()
	span := tracing.StartPublish(rctx, tp, ts, subject, "stream", headers)
	id, err := a.b.Publish(rctx, subject, body, headers)
	span.Message(id)
	span.End(err)
	if err != nil {
		a.failPath(w, string(ctx.Path()), "", err)
		return true
	}
	a.opts.Metrics.Published(subject, "stream", 1)
	a.opts.Published(subject, core.TransportStream)
	resp := &ctx.Response
	resp.SetStatusCode(http.StatusAccepted)
	resp.Header.SetContentTypeBytes(jsonContentTypeBytes)
	resp.Header.SetBytesKV(xContentTypeOptions, nosniffBytes)
	// As writeAccepted: ids and subjects need no JSON escaping.
	resp.AppendBodyString(`{"id":"`)
	resp.AppendBodyString(id)
	resp.AppendBodyString(`","subject":"`)
	resp.AppendBodyString(subject)
	resp.AppendBodyString("\"}\n")
	return true
}

var (
	jsonContentTypeBytes = []byte("application/json")
	xContentTypeOptions  = []byte("X-Content-Type-Options")
	nosniffBytes         = []byte("nosniff")
)

// storedOrActedOn reports whether a publish header other than those servePublish reads
// is one the publish stores with the message or acts on (idempotency, delay, encoding,
// CloudEvents attributes, forwarded headers, any Bridge-* header), or changes how the
// body is framed: such a publish goes to the net/http path. Any other header is ignored
// there too.
func storedOrActedOn(k []byte) bool {
	return hasPrefixFold(k, "ce-") || hasPrefixFold(k, "bridge-") ||
		asciiEqualFold(k, "Idempotency-Key") || asciiEqualFold(k, "Content-Encoding") ||
		asciiEqualFold(k, "Transfer-Encoding") || asciiEqualFold(k, "Trailer")
}

// validStored reports whether v (nil when absent) is a header value the publish may
// store: within max bytes and valid as a field value (httpguts.ValidHeaderFieldValue's
// rule: no control byte other than a tab).
func validStored(v []byte, max int) bool {
	if len(v) > max {
		return false
	}
	for _, c := range v {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func hasPrefixFold(k []byte, prefix string) bool {
	return len(k) >= len(prefix) && asciiEqualFold(k[:len(prefix)], prefix)
}

func asciiEqualFold(k []byte, s string) bool {
	if len(k) != len(s) {
		return false
	}
	for i := range k {
		a, b := k[i], s[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// Routes is the router, for whoever walks the routes.
func (h *Handler) Routes() chi.Routes { return h.h.(chi.Routes) }
