package tracing

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// useRecorder turns tracing on with an in-memory exporter for the test.
func useRecorder(t testing.TB) *tracetest.InMemoryExporter {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	tracer = tp.Tracer("test")
	enabled.Store(true)
	t.Cleanup(func() { enabled.Store(false); _ = tp.Shutdown(context.Background()) })
	return exp
}

// Off, nothing is recorded and nothing is written into the message.
func TestOffDoesNothing(t *testing.T) {
	h := map[string]string{}
	s := StartPublish(context.Background(), "", "", "orders", "stream", h)
	s.Message("x")
	s.End(nil)
	p := StartPush(h, "orders", "sub", "x", "http://h/", 1, func(k, v string) { t.Fatalf("header %s set while off", k) })
	p.EndPush(200, "")
	if len(h) != 0 {
		t.Fatalf("headers %v", h)
	}
}

// On, the publish span is the child of the request's traceparent and the parent of the
// push span, through the traceparent written into the message's headers.
func TestPublishThenPush(t *testing.T) {
	exp := useRecorder(t)
	h := map[string]string{}
	pub := StartPublish(context.Background(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", "orders", "stream", h)
	pub.End(nil)
	var sent string
	push := StartPush(h, "orders", "sub", "orders:1-0", "http://h/", 1, func(k, v string) {
		if k == "traceparent" {
			sent = v
		}
	})
	push.EndPush(503, "HTTP 503")
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("%d spans", len(spans))
	}
	p, d := spans[0], spans[1]
	if p.Parent.SpanID().String() != "00f067aa0ba902b7" || d.Parent.SpanID() != p.SpanContext.SpanID() ||
		d.SpanContext.TraceID() != p.SpanContext.TraceID() || p.SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("publish %v, push %v", p, d)
	}
	if sent == "" || sent == h["traceparent"] {
		t.Fatalf("push traceparent %q (message's %q)", sent, h["traceparent"])
	}
}

func BenchmarkPublishAndPushSpans(b *testing.B) {
	useRecorder(b)
	b.ReportAllocs()
	for b.Loop() {
		h := map[string]string{}
		s := StartPublish(context.Background(), "", "", "orders", "stream", h)
		s.Message("orders:1-0")
		s.End(nil)
		p := StartPush(h, "orders", "sub", "orders:1-0", "http://h/", 1, func(string, string) {})
		p.EndPush(200, "")
	}
}
