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
			plain = setOnce(&ct, v) && plain
		case "Authorization":
			plain = setOnce(&authz, v) && plain
		case "Traceparent":
			plain = setOnce(&traceparent, v) && plain
		case "Tracestate":
			plain = setOnce(&tracestate, v) && plain
		default:
			plain = plain && !storedOrActedOn(k)
		}
	}
	if !plain {
		return false
	}
	// The headers to store, checked by the rules the net/http path applies: a value they
	// refuse leaves the request to it, which answers the problem.
	headers := make(map[string]string, 4)
	tp, ts := string(traceparent), string(tracestate)
	if len(ct) > 0 && setContentType(headers, string(ct)) != nil ||
		setTraceHeader(headers, core.HeaderTraceparent, tp) != nil ||
		setTraceHeader(headers, core.HeaderTracestate, ts) != nil {
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

	cw := &ctxWriter{ctx: ctx}
	w := &problemRecorder{ResponseWriter: cw}
	defer func() {
		if w.code != "" {
			a.opts.Metrics.PublishError(w.code)
			cw.finish()
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
	var buf [512]byte // holds the longest id and subject
	resp.AppendBody(appendAccepted(buf[:0], id, subject))
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
		equalFold(k, "Idempotency-Key") || equalFold(k, "Content-Encoding") ||
		equalFold(k, "Transfer-Encoding") || equalFold(k, "Trailer")
}

// setOnce sets *dst to v and reports whether it was unset: a header given twice leaves
// the request to the net/http path.
func setOnce(dst *[]byte, v []byte) bool {
	first := *dst == nil
	*dst = v
	return first
}

func hasPrefixFold(k []byte, prefix string) bool {
	return len(k) >= len(prefix) && bytes.EqualFold(k[:len(prefix)], []byte(prefix))
}

func equalFold(k []byte, s string) bool { return bytes.EqualFold(k, []byte(s)) }

// Routes is the router, for whoever walks the routes.
func (h *Handler) Routes() chi.Routes { return h.h.(chi.Routes) }
