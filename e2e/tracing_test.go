package e2e

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is a test OTLP/HTTP trace endpoint keeping every span it is sent.
type otlpReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	rc := &otlpReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		raw, _ := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(raw, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				rc.spans = append(rc.spans, ss.GetSpans()...)
			}
		}
		rc.mu.Unlock()
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *otlpReceiver) byName(suffix string) []*tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range rc.spans {
		if strings.HasSuffix(s.GetName(), suffix) {
			out = append(out, s)
		}
	}
	return out
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, a publish and each push attempt are spans of one
// trace: the publisher's traceparent is the publish span's parent, the publish span the
// push span's, and the webhook receives the push span as its parent.
func TestOpenTelemetrySpansJoinOneTrace(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	otlp := newOTLPReceiver(t)
	br := startBridge(t, redisURL(rs), "OTEL_EXPORTER_OTLP_ENDPOINT="+otlp.URL, "OTEL_BSP_SCHEDULE_DELAY=100", "OTEL_SERVICE_NAME=bridge-test")
	rc := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		if nth == 0 {
			w.WriteHeader(http.StatusServiceUnavailable) // one failed attempt, then an ack: two push spans
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	br.subscribe("traced", fastSub(rc.URL+"/hook?token=secret", "traced.orders", nil))
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	code, id := br.publish("traced.orders", []byte(`{"n":1}`), "Traceparent", "00-"+traceID+"-"+parentID+"-01")
	if code != http.StatusAccepted {
		t.Fatalf("publish: %d", code)
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		return len(otlp.byName(" publish")) == 1 && len(otlp.byName(" deliver")) == 2
	}, "a publish span and two push spans exported (%d, %d)", len(otlp.byName(" publish")), len(otlp.byName(" deliver")))
	pub := otlp.byName(" publish")[0]
	if hex.EncodeToString(pub.GetTraceId()) != traceID || hex.EncodeToString(pub.GetParentSpanId()) != parentID ||
		pub.GetKind() != tracepb.Span_SPAN_KIND_PRODUCER || pub.GetName() != "traced.orders publish" {
		t.Fatalf("publish span %v", pub)
	}
	attrs := func(s *tracepb.Span) map[string]string {
		m := map[string]string{}
		for _, kv := range s.GetAttributes() {
			v := kv.GetValue()
			switch {
			case v.GetStringValue() != "":
				m[kv.GetKey()] = v.GetStringValue()
			default:
				m[kv.GetKey()] = strings.TrimSpace(strings.TrimPrefix(v.String(), "int_value:"))
			}
		}
		return m
	}
	if a := attrs(pub); a["messaging.system"] != "redis" || a["messaging.destination.name"] != "traced.orders" || a["messaging.message.id"] != id {
		t.Fatalf("publish span attributes %v", a)
	}
	pushes := rc.byID(id)
	for i, s := range otlp.byName(" deliver") {
		a := attrs(s)
		if hex.EncodeToString(s.GetTraceId()) != traceID || hex.EncodeToString(s.GetParentSpanId()) != hex.EncodeToString(pub.GetSpanId()) {
			t.Fatalf("push span %d not a child of the publish span: %v", i, s)
		}
		if a["messaging.consumer.group.name"] != "traced" || strings.Contains(a["url.full"], "secret") || a["messaging.message.id"] != id {
			t.Fatalf("push span attributes %v", a)
		}
	}
	// The webhook sees the push span as its parent.
	if len(pushes) != 2 {
		t.Fatalf("%d pushes", len(pushes))
	}
	tp := pushes[1].Header.Get("Traceparent")
	if !strings.HasPrefix(tp, "00-"+traceID+"-") || strings.Contains(tp, parentID) || strings.Contains(tp, hex.EncodeToString(pub.GetSpanId())) {
		t.Fatalf("push traceparent %q", tp)
	}
}
