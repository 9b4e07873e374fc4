package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// Server serves the API's port on fasthttp. The plain publish, the one request sent once
// per message, is answered natively (see servePublish); every other request, and every
// publish the native path does not take, goes to the API's net/http handler through a
// thin adaptor. fasthttp parses a request and writes its answer in about half the CPU
// net/http spends with its four timeouts, without a per-request goroutine switch or
// header map: on a publish that is 9 of the bridge's ~50 µs.
//
// Its timeouts and limits keep what net/http had: a connection's headers within
// HeaderTimeout of its first byte, its body within RequestTimeout after them, the answer
// within WriteTimeout, IdleTimeout between requests (and before a new connection's first
// byte, see firstByteListener).
type Server struct {
	HeaderTimeout  time.Duration
	RequestTimeout time.Duration
	WriteTimeout   time.Duration
	IdleTimeout    time.Duration

	h   http.Handler
	api *api // nil when h is not the API's handler: no native publish
	log *zap.Logger

	mu     sync.Mutex
	srv    *fasthttp.Server   // set by Serve
	ln     *firstByteListener // set by Serve
	shut   bool               // Shutdown was called
	served chan struct{}      // closed when Serve returns

	conns  atomic.Int64  // connections fasthttp serves (ConnState)
	closed chan struct{} // a token when conns drops to zero
}

// MaxHeaderBytes bounds a request's request line and headers together (431 above it).
// fasthttp reads them into a buffer of this size, held by each connection for its life:
// 16 KiB takes the header sets publishers send (a token, trace context, dozens of ce-*
// attributes or forwarded headers of a few hundred bytes) at a quarter of the 64 KiB
// net/http was allowed to grow to per connection.
const MaxHeaderBytes = 16 << 10

// NewServer returns a server for h with every timeout and limit set, so a slow or hostile
// client cannot hold connections or memory. When h is the API's handler (NewHandler), the
// plain publish is served natively.
func NewServer(h http.Handler, log *zap.Logger) *Server {
	s := &Server{
		HeaderTimeout:  5 * time.Second,
		RequestTimeout: 30 * time.Second,
		WriteTimeout:   30 * time.Second,
		IdleTimeout:    120 * time.Second,
		h:              h,
		log:            log.Named("http"),
		served:         make(chan struct{}),
		closed:         make(chan struct{}, 1),
	}
	if ah, ok := h.(*Handler); ok {
		s.api = ah.api
	}
	return s
}

// Serve serves ln until Shutdown; then it returns http.ErrServerClosed, as net/http does.
// A new connection is handed to the server once its first byte has arrived (see
// firstByteListener).
func (s *Server) Serve(ln net.Listener) error {
	body := s.RequestTimeout
	srv := &fasthttp.Server{
		Handler: s.serve,
		// The header timeout runs from a request's first byte; once its headers are in,
		// the body gets RequestTimeout of its own.
		ReadTimeout:  s.HeaderTimeout,
		WriteTimeout: s.WriteTimeout,
		IdleTimeout:  s.IdleTimeout,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: body}
		},
		ReadBufferSize: MaxHeaderBytes,
		// Bodies reach handlers as streams: a publish or a batch reads its own, under its
		// own limit, into a buffer that grows only as bytes arrive. fasthttp reads at
		// most 8 KiB ahead.
		StreamRequestBody:            true,
		MaxRequestBodySize:           16 << 20,
		DisablePreParseMultipartForm: true, // never write uploads to temporary files
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		SecureErrorLogMessage:        true, // errors do not quote request bytes (tokens)
		CloseOnShutdown:              true,
		ErrorHandler:                 requestError,
		Logger:                       connLogger{s.log},
		ConnState:                    s.connState,
	}
	defer close(s.served)
	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.srv, s.ln = srv, newFirstByteListener(ln, s.IdleTimeout)
	s.mu.Unlock()
	err := srv.Serve(s.ln)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut {
		return http.ErrServerClosed
	}
	return err
}

// Shutdown stops accepting, closes idle connections and waits for requests in progress
// until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shut = true
	srv, ln := s.srv, s.ln
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	// fasthttp looks for connections still open every 100 ms, which made every SIGTERM
	// take 100 ms more than it needs: its wait is cut short once Serve has returned and
	// the last connection is closed, which ConnState reports after fasthttp is done with
	// it.
	wait, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-s.served:
		case <-wait.Done():
			return
		}
		for s.conns.Load() > 0 {
			select {
			case <-s.closed:
			case <-wait.Done():
				return
			}
		}
		stop()
	}()
	err := srv.ShutdownWithContext(wait)
	if errors.Is(err, context.Canceled) && ctx.Err() == nil {
		err = nil // cut short above: everything is closed
	}
	// fasthttp closes the listeners its Serve has registered; one that Serve had not yet
	// registered when Shutdown came is closed here (a second Close does nothing).
	_ = ln.Close()
	return err
}

// connState counts the connections fasthttp serves, for Shutdown.
func (s *Server) connState(_ net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		s.conns.Add(1)
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		if s.conns.Add(-1) == 0 {
			select {
			case s.closed <- struct{}{}:
			default:
			}
		}
	}
}

// requestError answers a request fasthttp could not read, as problem+json.
func requestError(ctx *fasthttp.RequestCtx, err error) {
	code, detail := "bad_request", "the request could not be parsed as HTTP/1.1"
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small):
		code, detail = "header_too_large", fmt.Sprintf("the request line and headers exceed %d bytes", MaxHeaderBytes)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, fasthttp.ErrTimeout):
		code, detail = "request_timeout", "the request was not received in time"
	}
	answerProblem(ctx, code, detail)
}

// answerProblem makes ctx's response the problem code, whatever it held.
func answerProblem(ctx *fasthttp.RequestCtx, code, detail string) {
	ctx.Response.Reset()
	w := &ctxWriter{ctx: ctx}
	writeProblem(w, code, detail)
	w.finish()
}

func (s *Server) serve(ctx *fasthttp.RequestCtx) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic serving a request", zap.Any("panic", v), zap.ByteString("path", ctx.Path()), zap.Stack("stack"))
			answerProblem(ctx, "internal", "internal error")
			ctx.SetConnectionClose()
		}
	}()
	if s.api != nil && s.api.servePublish(ctx) {
		return
	}
	s.serveNetHTTP(ctx)
}

// serveNetHTTP runs the net/http handler for ctx's request: the body is the request's
// stream, read by the handler under its own limit, and the answer is buffered and
// written once the handler returns (no API route streams).
func (s *Server) serveNetHTTP(ctx *fasthttp.RequestCtx) {
	r, err := netHTTPRequest(ctx)
	if err != nil {
		answerProblem(ctx, "bad_request", "the request target is not a valid URI")
		return
	}
	rctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &ctxWriter{ctx: ctx}
	s.h.ServeHTTP(w, r.WithContext(rctx))
	w.finish()
}

// netHTTPRequest builds the net/http request of ctx's.
func netHTTPRequest(ctx *fasthttp.RequestCtx) (*http.Request, error) {
	uri := string(ctx.RequestURI())
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return nil, err
	}
	r := &http.Request{
		Method:     string(ctx.Method()),
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header, 8),
		Host:       string(ctx.Host()),
		RemoteAddr: ctx.RemoteAddr().String(),
		RequestURI: uri,
	}
	if !ctx.Request.Header.IsHTTP11() {
		r.Proto, r.ProtoMinor = "HTTP/1.0", 0
	}
	for k, v := range ctx.Request.Header.All() {
		switch string(k) {
		case "Host":
			continue // r.Host, as net/http keeps it
		case "Transfer-Encoding":
			r.TransferEncoding = append(r.TransferEncoding, string(v))
			continue
		}
		r.Header.Add(string(k), string(v))
	}
	r.ContentLength = int64(ctx.Request.Header.ContentLength())
	switch {
	case r.ContentLength == -1:
		r.TransferEncoding = []string{"chunked"}
	case r.ContentLength < 0:
		r.ContentLength = 0
	}
	if body := ctx.RequestBodyStream(); body != nil && r.ContentLength != 0 {
		r.Body = io.NopCloser(body)
	} else if r.ContentLength != 0 {
		r.Body = io.NopCloser(bytes.NewReader(ctx.PostBody()))
	} else {
		r.Body = http.NoBody
	}
	return r, nil
}

// ctxWriter is an http.ResponseWriter that buffers an answer into a fasthttp response.
type ctxWriter struct {
	ctx    *fasthttp.RequestCtx
	header http.Header
	status int
}

func (w *ctxWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header, 4)
	}
	return w.header
}

func (w *ctxWriter) WriteHeader(status int) {
	if w.status == 0 && status >= 200 {
		w.status = status
	}
}

func (w *ctxWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.ctx.Response.AppendBody(b)
	return len(b), nil
}

// finish sets the response's status and headers; its body is written already.
func (w *ctxWriter) finish() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	resp := &w.ctx.Response
	resp.SetStatusCode(w.status)
	typed := false
	for k, vs := range w.header {
		switch k {
		case "Content-Length":
			continue // fasthttp writes the body's own
		case "Content-Type":
			typed = true
		}
		for _, v := range vs {
			resp.Header.Add(k, v)
		}
	}
	if body := resp.Body(); !typed && len(body) > 0 {
		resp.Header.SetContentType(http.DetectContentType(body[:min(len(body), 512)]))
	}
}

// connLogger takes fasthttp's own messages. They are about single connections a client
// broke (a malformed request, a reset), which the client was answered for, and their
// arguments may quote request bytes, a token among them, whatever SecureErrorLogMessage
// says: they go to the debug log, as their format only.
type connLogger struct{ log *zap.Logger }

func (l connLogger) Printf(format string, _ ...any) {
	l.log.Debug("connection error", zap.String("format", format))
}
