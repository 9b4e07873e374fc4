package httpapi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"strings"
	"testing"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
)

// recordingBroker takes a single publish and keeps what it was given.
type recordingBroker struct {
	Broker
	headers map[string]string
	body    []byte
}

func (r *recordingBroker) Publish(_ context.Context, subject string, body []byte, headers map[string]string) (string, error) {
	r.headers, r.body = headers, body
	return core.MessageID(subject, "1-0"), nil
}

// Whatever request the native publish takes, it stores the body and the headers the
// net/http handler would have stored for the same request as fasthttp parsed it (the
// adaptor's http.Request): the native path is only ever a faster way to the same message.
func FuzzNativePublishStoresWhatNetHTTPWould(f *testing.F) {
	for _, s := range []string{
		"Content-Type\x1ftext/plain",
		"content-type\x1fapplication/json\x1etraceparent\x1f00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tracestate\x1fa=b\x1eX-Other\x1fv",
		"Content-Type\x1f\x1eAccept\x1f*/*",
		"Content-Type\x1fa\tb",
		"Content-Type\x1ftext/plain\x1eContent-Type\x1fapplication/json",
		"Traceparent\x1fa\x1etraceparent\x1fb",
		"Ce-Id\x1f1",
		"CE-ID\x1f1",
		"bridge-forward-x\x1fv",
		"Idempotency-Key\x1fk",
		"Content-Encoding\x1fgzip",
		"X-Content-Type\x1fv",
		"Content-Type \x1fv",
		"Content-Type\x1f " + strings.Repeat("a", 300),
	} {
		f.Add(s, "hello")
	}
	f.Fuzz(func(t *testing.T, rawHeaders, body string) {
		var head strings.Builder
		head.WriteString("POST /v1/subjects/s/messages HTTP/1.1\r\nHost: bridge\r\n")
		for pair := range strings.SplitSeq(rawHeaders, "\x1e") {
			k, v, _ := strings.Cut(pair, "\x1f")
			if strings.ContainsAny(k+v, "\r\n") {
				return // another header or the end of the block: not one header
			}
			head.WriteString(k + ": " + v + "\r\n")
		}
		raw := head.String() + fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body)

		var req fasthttp.Request
		if err := req.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
			return // refused before any handler
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, nil, nil)
		r, err := netHTTPRequest(&ctx)
		if err != nil {
			return
		}
		want, wantErr := messageHeaders(r.Header)
		wantBody, _ := io.ReadAll(r.Body)
		ctx.Init(&req, nil, nil) // the body again, for the native path

		rb := &recordingBroker{}
		a := &api{b: rb, log: zap.NewNop(), native: true, opts: Options{
			MaxBody: 1 << 20, Metrics: noMetrics{}, Published: func(string, core.Transport) {},
		}}
		if !a.servePublish(&ctx) {
			return
		}
		if ctx.Response.StatusCode() != 202 {
			t.Fatalf("%q: native answer %d: %s", raw, ctx.Response.StatusCode(), ctx.Response.Body())
		}
		if wantErr != nil {
			t.Fatalf("%q: native path published what net/http refuses: %v", raw, wantErr)
		}
		if !maps.Equal(rb.headers, want) {
			t.Fatalf("%q: native stored %v, net/http %v", raw, rb.headers, want)
		}
		if string(rb.body) != string(wantBody) {
			t.Fatalf("%q: native body %q, net/http %q", raw, rb.body, wantBody)
		}
	})
}
