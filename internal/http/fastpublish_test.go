package httpapi_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	httpapi "github.com/bridge-dev/bridge/internal/http"
	"github.com/bridge-dev/bridge/internal/redistest"
)

// Server answers the plain publish itself and leaves every other request to the net/http
// handler. Whatever the request, the answer (status and problem code) and what lands in
// Redis must be what the net/http handler alone gives: each case is sent, as raw bytes, to
// a net/http server and to Server, on subjects that differ only in their first letter.
func TestServerPublishesLikeNetHTTP(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	h := handlerWithTokens(t, rs, map[string]string{"orders-token": "publish:*.orders"})
	std := httptest.NewServer(h)
	t.Cleanup(std.Close)
	fast := startServer(t, h)

	const auth = "Authorization: Bearer orders-token\r\n"
	cases := []struct {
		name, path, headers, body string
		status                    int
		code                      string
		native                    bool // Server answers it without the net/http handler
	}{
		{"plain", "/v1/subjects/{S}.orders/messages", auth, "hello", 202, "", true},
		{"empty body", "/v1/subjects/{S}.orders/messages", auth, "", 202, "", true},
		{"content type", "/v1/subjects/{S}.orders/messages", auth + "Content-Type: application/json\r\n", `{"a":1}`, 202, "", true},
		{"lower-case names", "/v1/subjects/{S}.orders/messages", "authorization: Bearer orders-token\r\ncontent-type: text/plain\r\n", "x", 202, "", true},
		{"trace context", "/v1/subjects/{S}.orders/messages", auth + "Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nTracestate: a=b\r\n", "x", 202, "", true},
		{"ignored headers", "/v1/subjects/{S}.orders/messages", auth + "X-Request-Id: 7\r\nAccept: */*\r\nUser-Agent: t\r\n", "x", 202, "", true},
		{"forwarded header", "/v1/subjects/{S}.orders/messages", auth + "Bridge-Forward-X-Type: created\r\n", "x", 202, "", false},
		{"ce attribute", "/v1/subjects/{S}.orders/messages", auth + "Ce-Id: 1\r\nce-type: t\r\n", "x", 202, "", false},
		{"partition key", "/v1/subjects/{S}.orders/messages", auth + "Bridge-Partition-Key: k\r\n", "x", 202, "", false},
		{"content encoding", "/v1/subjects/{S}.orders/messages", auth + "Content-Encoding: gzip\r\n", "x", 202, "", false},
		{"idempotency key", "/v1/subjects/{S}.orders/messages", auth + "Idempotency-Key: k1\r\n", "x", 202, "", false},
		{"delay", "/v1/subjects/{S}.orders/messages", auth + "Bridge-Delay: 1h\r\n", "x", 202, "", false},
		{"list transport", "/v1/subjects/{S}.orders/messages?transport=list", auth, "x", 202, "", false},
		{"bad query", "/v1/subjects/{S}.orders/messages?transport=nope", auth, "x", 400, "invalid_query", false},
		{"escaped subject", "/v1/subjects/{S}%2Eorders/messages", auth, "x", 202, "", false},
		{"control byte in content type", "/v1/subjects/{S}.orders/messages", auth + "Content-Type: a\x01b\r\n", "x", 400, "", false},
		{"long content type", "/v1/subjects/{S}.orders/messages", auth + "Content-Type: " + strings.Repeat("a", 300) + "\r\n", "x", 400, "invalid_header", false},
		{"long traceparent", "/v1/subjects/{S}.orders/messages", auth + "Traceparent: " + strings.Repeat("a", 1100) + "\r\n", "x", 400, "invalid_header", false},
		{"two tokens", "/v1/subjects/{S}.orders/messages", auth + auth, "x", 202, "", false},
		{"no token", "/v1/subjects/{S}.orders/messages", "", "x", 401, "unauthorized", false},
		{"wrong token", "/v1/subjects/{S}.orders/messages", "Authorization: Bearer nope\r\n", "x", 401, "unauthorized", false},
		{"basic scheme", "/v1/subjects/{S}.orders/messages", "Authorization: Basic b3JkZXJz\r\n", "x", 401, "unauthorized", false},
		{"out of scope", "/v1/subjects/{S}.billing/messages", auth, "x", 403, "forbidden", false},
		{"invalid subject", "/v1/subjects/{S}!.orders/messages", auth, "x", 400, "invalid_subject", false},
		{"body over the limit", "/v1/subjects/{S}.orders/messages", auth, strings.Repeat("a", 1025), 413, "payload_too_large", false},
		{"body at the limit", "/v1/subjects/{S}.orders/messages", auth, strings.Repeat("a", 1024), 202, "", true},
		{"chunked body", "/v1/subjects/{S}.orders/messages", auth + "Transfer-Encoding: chunked\r\n", "", 202, "", false},
	}
	for i, c := range cases {
		// request is the case's raw request on the subject named with prefix.
		request := func(prefix string) (raw, path string) {
			path = strings.ReplaceAll(c.path, "{S}", prefix)
			raw = "POST " + path + " HTTP/1.1\r\nHost: bridge\r\n" + c.headers
			if strings.Contains(c.headers, "chunked") {
				return raw + "\r\n5\r\nhello\r\n0\r\n\r\n", path
			}
			return raw + fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(c.body), c.body), path
		}
		raw, _ := request(fmt.Sprintf("x%d", i))
		if took, status := httpapi.TakesNatively(h, raw); took != c.native || (took && status != c.status) {
			t.Errorf("%s: native path took it: %v (status %d), want %v", c.name, took, status, c.native)
		}
		var answers [2]string
		for j, srv := range []string{std.URL, fast.URL} {
			req, path := request(fmt.Sprintf("%c%d", "nf"[j], i))
			status, code := rawRequest(t, strings.TrimPrefix(srv, "http://"), req)
			if status != c.status || (c.code != "" && code != c.code) {
				t.Errorf("%s via %s: %d %q, want %d %q", c.name, srv, status, code, c.status, c.code)
			}
			// fasthttp refuses a malformed header itself, as problem+json (bad_request),
			// where net/http answered plain text: the case gives no code, and the code is
			// compared only where one is expected.
			answers[j] = fmt.Sprint(status)
			if c.code != "" {
				answers[j] += " " + code
			}
			subject := strings.ReplaceAll(strings.ReplaceAll(strings.SplitN(strings.TrimPrefix(path, "/v1/subjects/"), "/", 2)[0], "%2E", "."), "!", "")
			answers[j] += " " + storedFields(t, rs, subject)
		}
		if answers[0] != answers[1] {
			t.Errorf("%s: net/http gave %s, Server gave %s", c.name, answers[0], answers[1])
		}
	}
}

// storedFields is the last stream entry of subject (its fields, sorted), or the key's
// type when it is not a stream.
func storedFields(t *testing.T, rs *redistest.Server, subject string) string {
	t.Helper()
	typ, _ := rs.Do(t, "TYPE", subject).ToString()
	if typ != "stream" {
		return typ
	}
	entries, err := rs.Do(t, "XREVRANGE", subject, "+", "-", "COUNT", "1").AsXRange()
	if err != nil || len(entries) != 1 {
		t.Fatalf("%s: %v, %d entries", subject, err, len(entries))
	}
	keys := slices.Sorted(maps.Keys(entries[0].FieldValues))
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s=%q ", k, entries[0].FieldValues[k])
	}
	return sb.String()
}

// rawRequest sends req on a new connection to addr and returns the answer's status and
// problem code.
func rawRequest(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	defer resp.Body.Close()
	var p struct{ Code string }
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &p)
	return resp.StatusCode, p.Code
}
