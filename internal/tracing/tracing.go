// Package tracing exports OpenTelemetry spans of publishes and push attempts (SPEC §11),
// joined through each message's traceparent, with the OTLP exporter the standard OTEL_*
// variables configure. Unless OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set
// nothing is set up and every call here is one atomic load: the hot paths pay nothing.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Tracing state: set once by Setup.
var (
	enabled atomic.Bool
	tracer  trace.Tracer
	prop    = propagation.TraceContext{}
)

// Enabled reports whether spans are recorded.
func Enabled() bool { return enabled.Load() }

// Configured reports whether environ asks for traces to be exported.
func Configured(getenv func(string) string) bool {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(getenv("OTEL_TRACES_EXPORTER"), "none") {
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup starts exporting spans when the environment asks for it; shutdown flushes what
// is buffered. It returns a no-op shutdown when tracing is not configured.
func Setup(ctx context.Context, version string) (shutdown func(context.Context) error, err error) {
	noop := func(context.Context) error { return nil }
	if !Configured(os.Getenv) {
		return noop, nil
	}
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if proto != "" && proto != "http/protobuf" {
		return noop, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q is not supported; use http/protobuf (the default)", proto)
	}
	// The transport reads OTEL_EXPORTER_OTLP_{,TRACES_}{ENDPOINT,HEADERS,TIMEOUT,...}; the
	// batch processor OTEL_BSP_*, the resource OTEL_SERVICE_NAME and
	// OTEL_RESOURCE_ATTRIBUTES, the sampler OTEL_TRACES_SAMPLER{,_ARG}.
	client, err := newOTLPHTTP(os.Getenv)
	if err != nil {
		return noop, err
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return noop, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.version", version)))
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return noop, err
	}
	if os.Getenv("OTEL_SERVICE_NAME") == "" && !strings.Contains(os.Getenv("OTEL_RESOURCE_ATTRIBUTES"), "service.name=") {
		res, _ = resource.Merge(res, resource.NewSchemaless(attribute.String("service.name", "bridge")))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	tracer = tp.Tracer("github.com/bridge-dev/bridge")
	enabled.Store(true)
	return func(ctx context.Context) error {
		enabled.Store(false)
		return tp.Shutdown(ctx)
	}, nil
}

// headerCarrier reads and writes a message's lower-case header map.
type headerCarrier map[string]string

func (c headerCarrier) Get(k string) string { return c[strings.ToLower(k)] }
func (c headerCarrier) Set(k, v string)     { c[strings.ToLower(k)] = v }
func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Span is a started span; the zero Span (tracing off) does nothing.
type Span struct{ s trace.Span }

// End ends the span, recording err (nil: success).
func (s Span) End(err error) {
	if s.s == nil {
		return
	}
	if err != nil {
		s.s.RecordError(err)
		s.s.SetStatus(codes.Error, err.Error())
	}
	s.s.End()
}

// Message records the id of the message the span published.
func (s Span) Message(id string) {
	if s.s != nil && id != "" {
		s.s.SetAttributes(attribute.String("messaging.message.id", id))
	}
}

// Inject writes the span's trace context into a message's headers.
func (s Span) Inject(msgHeaders map[string]string) {
	if s.s != nil && msgHeaders != nil {
		prop.Inject(trace.ContextWithSpan(context.Background(), s.s), headerCarrier(msgHeaders))
	}
}

// EndPush ends a push span with the webhook's status (0: no answer) and the failure, if any.
func (s Span) EndPush(status int, errText string) {
	if s.s == nil {
		return
	}
	if status > 0 {
		s.s.SetAttributes(attribute.Int("http.response.status_code", status))
	}
	if errText != "" {
		s.s.SetStatus(codes.Error, errText)
	}
	s.s.End()
}

// StartPublish starts the span of a publish to subject as a child of the request's trace
// context (reqHeaders, HTTP header names), and writes the span's traceparent into the
// message's headers so its pushes join the trace.
func StartPublish(ctx context.Context, reqTraceparent, reqTracestate, subject, transport string, msgHeaders map[string]string) Span {
	if !enabled.Load() {
		return Span{}
	}
	parent := prop.Extract(ctx, headerCarrier{"traceparent": reqTraceparent, "tracestate": reqTracestate})
	_, span := tracer.Start(parent, subject+" publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "redis"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.operation.name", "publish"),
			attribute.String("messaging.destination.name", subject),
			attribute.String("bridge.transport", transport),
		))
	if msgHeaders != nil {
		prop.Inject(trace.ContextWithSpan(ctx, span), headerCarrier(msgHeaders))
	}
	return Span{span}
}

// StartPush starts the span of one push attempt of message id, as a child of the
// message's trace (its stored traceparent), and sets the push request's traceparent to
// the span so the webhook's own spans join the trace.
func StartPush(msgHeaders map[string]string, subject, subscription, id, url string, delivery int, setHeader func(k, v string)) Span {
	if !enabled.Load() {
		return Span{}
	}
	parent := prop.Extract(context.Background(), headerCarrier(msgHeaders))
	ctx, span := tracer.Start(parent, subject+" deliver", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("messaging.system", "redis"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.operation.name", "push"),
			attribute.String("messaging.destination.name", subject),
			attribute.String("messaging.consumer.group.name", subscription),
			attribute.String("messaging.message.id", id),
			attribute.Int("messaging.message.delivery_count", delivery),
			attribute.String("http.request.method", "POST"),
			attribute.String("url.full", url),
		))
	out := map[string]string{}
	prop.Inject(ctx, headerCarrier(out))
	for k, v := range out {
		setHeader(k, v)
	}
	return Span{span}
}
