package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"golang.org/x/net/http/httpguts"
)

// fuzzHeaders turns fuzz bytes into request headers: pairs separated by '\x1e', name and
// value by '\x1f'. Names go through Header.Add (canonicalised as net/http does for a
// request); a name starting with '!' is stored raw, as a hand-built http.Header could be.
func fuzzHeaders(raw string) http.Header {
	h := http.Header{}
	for pair := range strings.SplitSeq(raw, "\x1e") {
		name, value, _ := strings.Cut(pair, "\x1f")
		if rawName, ok := strings.CutPrefix(name, "!"); ok {
			h[rawName] = append(h[rawName], value)
			continue
		}
		h.Add(name, value)
	}
	return h
}

func checkStoredHeaders(t *testing.T, out map[string]string) {
	t.Helper()
	for k, v := range out {
		if k != strings.ToLower(k) {
			t.Fatalf("header name %q is not lower-case", k)
		}
		if !httpguts.ValidHeaderFieldName(k) {
			t.Fatalf("header name %q is not a valid field name", k)
		}
		if strings.ContainsAny(v, "\r\n\x00") || !httpguts.ValidHeaderFieldValue(v) {
			t.Fatalf("header %q has value %q with CR, LF, NUL or another control byte", k, v)
		}
		if core.ForbiddenPushHeader(k) {
			t.Fatalf("forbidden header %q stored for the push", k)
		}
		if strings.HasPrefix(k, "bridge-") || k == core.HeaderDeadLetterReason {
			t.Fatalf("reserved header %q stored", k)
		}
	}
}

func FuzzMessageHeaders(f *testing.F) {
	for _, s := range []string{
		"Content-Type\x1ftext/plain",
		"Content-Type\x1fapplication/json\x1eBridge-Partition-Key\x1fk1\x1eTraceparent\x1f00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Bridge-Forward-X-Tenant\x1facme",
		"Bridge-Forward-Authorization\x1fBearer x",
		"Bridge-Forward-Host\x1fevil.example",
		"Bridge-Forward-Content-Length\x1f0",
		"Bridge-Forward-Webhook-Signature\x1fv1,forged",
		"Bridge-Forward-Webhook-Id\x1fother",
		"Bridge-Forward-Redis-Delivery-Count\x1f99",
		"Bridge-Forward-Redis-Partition-Key\x1fk",
		"Bridge-Forward-X-Dead-Letter-Reason\x1fdropped",
		"Bridge-Forward-Bridge-Subject\x1fother",
		"Bridge-Forward-Transfer-Encoding\x1fchunked",
		"Bridge-Forward-X-A\x1fa\r\nX-Injected: 1",
		"Bridge-Forward-X-A\x1fa\nb",
		"Bridge-Forward-X-A\x1fa\x00b",
		"Bridge-Forward-X-A\x1f1\x1eBridge-Forward-X-A\x1f2",
		"Bridge-Forward-\x1fempty name",
		"!Bridge-Forward-X A\x1fspace in name",
		"!Bridge-Forward-x-lower\x1fv",
		"!bridge-forward-x-lower\x1fv",
		"Content-Type\x1ftext/plain\r\nX: y",
		"Bridge-Partition-Key\x1fk\x00",
		"Traceparent\x1f\r\n",
		"Tracestate\x1f" + strings.Repeat("a", 1025),
		"Bridge-Forward-X\x1f" + strings.Repeat("v", 4097),
		"Bridge-Forward-Traceparent\x1fforwarded",
		"Bridge-Forward-Content-Type\x1ftext/html",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		out, err := messageHeaders(fuzzHeaders(raw))
		if err != nil {
			if out != nil {
				t.Fatalf("headers %v returned with error %v", out, err)
			}
			return
		}
		checkStoredHeaders(t, out)
		if len(out) > maxForwarded+4 {
			t.Fatalf("%d headers stored", len(out))
		}
	})
}

func FuzzNotBefore(f *testing.F) {
	for _, s := range [][2]string{
		{"30s", ""}, {"90", ""}, {"0", ""}, {"-1s", ""}, {"-1", ""}, {"8784h", ""}, {"8785h", ""},
		{"31622400", ""}, {"31622401", ""}, {"9223372036854775807", ""}, {"1e9s", ""}, {" 5 ", ""},
		{"", "2026-01-02T15:04:05Z"}, {"", "1970-01-01T00:00:00Z"}, {"", "9999-12-31T23:59:59Z"},
		{"", "2026-01-02T15:04:05+25:00"}, {"", "0000-01-01T00:00:00-23:59"}, {"", "2026-02-30T00:00:00Z"},
		{"1s", "2026-01-02T15:04:05Z"}, {"", "not a time"}, {"", ""},
	} {
		f.Add(s[0], s[1])
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, delay, at string) {
		nb, err := notBefore(delay, at, now)
		if err != nil {
			if !nb.IsZero() {
				t.Fatalf("notBefore(%q, %q) = %v with error %v", delay, at, nb, err)
			}
			return
		}
		if delay != "" && at != "" {
			t.Fatalf("notBefore(%q, %q) accepted both headers", delay, at)
		}
		if nb.IsZero() {
			return
		}
		if !nb.After(now) {
			t.Fatalf("notBefore(%q, %q) = %v, not after now", delay, at, nb)
		}
		if nb.Sub(now) > maxDelay {
			t.Fatalf("notBefore(%q, %q) = %v, more than %v ahead", delay, at, nb, maxDelay)
		}
	})
}

// decodeBatch decodes a batch body the way publishBatch does (decodeJSONLimit).
func decodeBatch(raw []byte) (batchRequest, bool) {
	var req batchRequest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		return req, false
	}
	return req, true
}

func FuzzBatchJSON(f *testing.F) {
	for _, s := range []string{
		`{"messages":[{"data":{"order":1}}]}`,
		`{"messages":[{"data":"x","content_type":"text/plain","partition_key":"k","idempotency_key":"key-1","delay":"30s"}]}`,
		`{"messages":[{"data_base64":"AAEC"},{"data_base64":"!!"},{"data":1,"data_base64":"AA=="}]}`,
		`{"messages":[{"data":null},{"data":null,"data_base64":"AA=="},{}]}`,
		`{"messages":[{"data":1,"headers":{"X-Tenant":"a","Host":"evil"}}]}`,
		`{"messages":[{"data":1,"headers":{"webhook-id":"x"}}]}`,
		`{"messages":[{"data":1,"headers":{"X-A":"a\r\nB: c"}}]}`,
		`{"messages":[{"data":1,"headers":{"X-A":"a\u0000"}}]}`,
		`{"messages":[{"data":1,"headers":{"bridge-subject":"x","redis-partition-key":"y"}}]}`,
		`{"messages":[{"data":1,"content_type":"a\nb"}]}`,
		`{"messages":[{"data":1,"partition_key":"a\u0000"}]}`,
		`{"messages":[{"data":1,"idempotency_key":"has space"}]}`,
		`{"messages":[{"data":1,"delay":-1},{"data":1,"delay":"-5s"},{"data":1,"delay":1e300},{"data":1,"delay":"8785h"}]}`,
		`{"messages":[{"data":1,"unknown":true}]}`,
		`{"messages":[{"data":1}]} {"messages":[]}`,
		`{"messages":[]}`, `{}`, `null`, `[]`,
		`{"messages":[{"data":"` + strings.Repeat("a", 64) + `"}]}`,
		`{"messages":[{"data_base64":"` + strings.Repeat("QUFB", 16) + `"}]}`,
		`{"messages":[{"data_base64":"QU\r\nFB"}]}`,
	} {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	apis := []*api{
		{opts: Options{MaxBody: 1 << 20}},
		{opts: Options{MaxBody: 16}}, // small enough for the fuzzer to cross
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, ok := decodeBatch(raw)
		if !ok {
			return
		}
		for _, a := range apis {
			for i, it := range req.Messages {
				o, code, err := a.batchOutgoing(it, now)
				if err != nil {
					if code == "" {
						t.Fatalf("messages[%d]: error %v without a code", i, err)
					}
					if _, known := problems[code]; !known {
						t.Fatalf("messages[%d]: unknown problem code %q", i, code)
					}
					continue
				}
				if code != "" {
					t.Fatalf("messages[%d]: code %q without an error", i, code)
				}
				if int64(len(o.Body)) > a.opts.MaxBody {
					t.Fatalf("messages[%d]: accepted a %d-byte body above MaxBody %d", i, len(o.Body), a.opts.MaxBody)
				}
				if o.Headers[core.HeaderContentType] == "" {
					t.Fatalf("messages[%d]: no content-type", i)
				}
				checkStoredHeaders(t, o.Headers)
				if checkIdempotencyKey(o.IdempotencyKey) != nil {
					t.Fatalf("messages[%d]: idempotency key %q accepted", i, o.IdempotencyKey)
				}
				if !o.NotBefore.IsZero() && (!o.NotBefore.After(now) || o.NotBefore.Sub(now) > maxDelay) {
					t.Fatalf("messages[%d]: not_before %v out of (now, now+366d]", i, o.NotBefore)
				}
				if it.DataBase64 == nil && !json.Valid(o.Body) {
					t.Fatalf("messages[%d]: \"data\" body %q is not JSON", i, o.Body)
				}
			}
		}
	})
}
