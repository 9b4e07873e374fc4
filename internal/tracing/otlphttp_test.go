package tracing

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

func envOf(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestOTLPHTTPConfig(t *testing.T) {
	cases := []struct {
		env     map[string]string
		url     string
		headers map[string]string
		timeout time.Duration
		gzip    bool
	}{
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, url: "http://c:4318/v1/traces", timeout: 10 * time.Second},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c/otlp/"}, url: "https://c/otlp/v1/traces", timeout: 10 * time.Second},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/custom"}, url: "http://b/custom", timeout: 10 * time.Second},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, x=1",
			"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
			url: "http://a/v1/traces", headers: map[string]string{"api-key": "a b", "x": "1"}, timeout: 2500 * time.Millisecond, gzip: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a", "OTEL_EXPORTER_OTLP_HEADERS": "x=1", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "y=2",
			"OTEL_EXPORTER_OTLP_TIMEOUT": "1000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3000"},
			url: "http://a/v1/traces", headers: map[string]string{"y": "2"}, timeout: 3 * time.Second},
	}
	for _, tc := range cases {
		c, err := newOTLPHTTP(envOf(tc.env))
		if err != nil {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if c.url != tc.url || c.timeout != tc.timeout || c.gzip != tc.gzip || len(c.headers) != len(tc.headers) {
			t.Errorf("%v: got url %q timeout %s gzip %v headers %v", tc.env, c.url, c.timeout, c.gzip, c.headers)
		}
		for k, v := range tc.headers {
			if c.headers[k] != v {
				t.Errorf("%v: header %s = %q, want %q", tc.env, k, c.headers[k], v)
			}
		}
	}
	for _, bad := range []map[string]string{
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_TIMEOUT": "10s"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_HEADERS": "novalue"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent"},
	} {
		if _, err := newOTLPHTTP(envOf(bad)); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
	// The password of an endpoint never shows in an error.
	_, err := newOTLPHTTP(envOf(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://u:secret@c"}))
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error %v", err)
	}
}

// A collector that is unavailable twice, then takes the batch: the upload retries and
// the collector decodes a valid ExportTraceServiceRequest, gzip included.
func TestOTLPHTTPUploadRetriesThenDelivers(t *testing.T) {
	var calls atomic.Int32
	got := make(chan *coltrace.ExportTraceServiceRequest, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || r.Header.Get("Api-Key") != "k" {
			t.Errorf("request %s %v", r.URL.Path, r.Header)
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				t.Error(err)
				return
			}
			body = zr
		}
		b, _ := io.ReadAll(body)
		req := &coltrace.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			t.Error(err)
		}
		got <- req
	}))
	defer srv.Close()
	c, err := newOTLPHTTP(envOf(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL,
		"OTEL_EXPORTER_OTLP_HEADERS": "api-key=k", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Stop(context.Background()) }()
	spans := []*tracepb.ResourceSpans{
		{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{Name: "orders publish"}, {Name: "orders deliver"}}}}},
		{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{Name: "other"}}}}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.UploadTraces(ctx, spans); err != nil {
		t.Fatal(err)
	}
	req := <-got
	if len(req.ResourceSpans) != 2 || req.ResourceSpans[0].ScopeSpans[0].Spans[1].Name != "orders deliver" {
		t.Fatalf("collector got %v", req)
	}
	if calls.Load() != 3 {
		t.Fatalf("%d calls, want 3", calls.Load())
	}
}

// A refusal that retrying cannot fix ends the upload at once with the collector's words.
func TestOTLPHTTPUploadDoesNotRetryABadRequest(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "bad spans", http.StatusBadRequest)
	}))
	defer srv.Close()
	c, err := newOTLPHTTP(envOf(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": srv.URL + "/v1/traces"}))
	if err != nil {
		t.Fatal(err)
	}
	err = c.UploadTraces(context.Background(), []*tracepb.ResourceSpans{{}})
	if err == nil || !strings.Contains(err.Error(), "bad spans") || calls.Load() != 1 {
		t.Fatalf("err %v after %d calls", err, calls.Load())
	}
}
