package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bridge-dev/bridge/api"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

var (
	docOnce   sync.Once
	docRouter routers.Router
	docErr    error
)

// apiGet sends an authenticated GET and checks the JSON answer against api/openapi.yaml.
func apiGet(t *testing.T, br *bridge, token, path string) (int, []byte) {
	t.Helper()
	docOnce.Do(func() {
		var doc *openapi3.T
		doc, docErr = openapi3.NewLoader().LoadFromData(api.OpenAPI)
		if docErr == nil {
			doc.Servers = nil
			docRouter, docErr = legacy.NewRouter(doc)
		}
	})
	if docErr != nil {
		t.Fatal(docErr)
	}
	req, _ := http.NewRequest(http.MethodGet, br.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	vreq, _ := http.NewRequest(http.MethodGet, "http://bridge"+path, nil)
	route, params, err := docRouter.FindRoute(vreq)
	if err != nil {
		t.Fatalf("GET %s: not in the OpenAPI document: %v", path, err)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
			Options: &openapi3filter.Options{ExcludeRequestBody: true}},
		Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(raw)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Fatalf("GET %s: answer does not match the OpenAPI document: %v\n%s", path, err, raw)
	}
	return resp.StatusCode, raw
}

type attemptJSON struct {
	ID        string  `json:"id"`
	MessageID string  `json:"message_id"`
	Delivery  int     `json:"delivery"`
	Status    int     `json:"status"`
	Error     string  `json:"error"`
	LatencyMS float64 `json:"latency_ms"`
	Outcome   string  `json:"outcome"`
	Process   string  `json:"process"`
}

type messageJSON struct {
	ID            string            `json:"id"`
	Subject       string            `json:"subject"`
	Transport     string            `json:"transport"`
	PublishedAt   time.Time         `json:"published_at"`
	Headers       map[string]string `json:"headers"`
	Body          *string           `json:"body"`
	BodyBase64    *string           `json:"body_base64"`
	BodySize      int               `json:"body_size"`
	BodyTruncated bool              `json:"body_truncated"`
	Subscriptions []struct {
		Name     string        `json:"name"`
		State    string        `json:"state"`
		Attempts []attemptJSON `json:"attempts"`
	} `json:"subscriptions"`
}

func (m messageJSON) state(sub string) (string, []attemptJSON) {
	for _, s := range m.Subscriptions {
		if s.Name == sub {
			return s.State, s.Attempts
		}
	}
	return "", nil
}

// The message view after 500, 500, 200 on one subscription and 400 on another of the same
// subject; binary and large bodies; unknown ids; scopes; the attempt listing and its pages.
// Every answer is checked against api/openapi.yaml.
func TestMessageViewAndAttemptLog(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	const (
		admin     = "admin-token-0123456789abcdef"
		reader    = "reader-token-0123456789abcd"
		publisher = "publisher-token-0123456789ab"
	)
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	yaml := fmt.Sprintf("tokens:\n  - {name: reader, token_sha256: %s, scopes: [\"subscriptions:read\"]}\n  - {name: publisher, token_sha256: %s, scopes: [\"publish:*\"]}\n",
		sum(reader), sum(publisher))
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	br := startBridge(t, redisURL(rs), "BRIDGE_TOKEN="+admin, "BRIDGE_TOKENS_FILE="+file)
	flaky := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		if nth < 2 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	strict := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) { w.WriteHeader(http.StatusBadRequest) })
	put := func(name, url string) {
		req, _ := http.NewRequest(http.MethodPut, br.URL+"/v1/subscriptions/"+name,
			strings.NewReader(fmt.Sprintf(`{"subject":"orders.view","url":%q,"max_deliveries":5,"retry":{"min_backoff":"100ms","max_backoff":"200ms"}}`, url)))
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT %s: %v %v", name, err, resp)
		}
		resp.Body.Close()
	}
	put("flaky", flaky.URL)
	put("strict", strict.URL)
	publish := func(body []byte, contentType string) string {
		req, _ := http.NewRequest(http.MethodPost, br.URL+"/v1/subjects/orders.view/messages", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+publisher)
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("publish: %v %v", err, resp)
		}
		defer resp.Body.Close()
		var out struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return out.ID
	}
	view := func(id string) messageJSON {
		t.Helper()
		code, raw := apiGet(t, br, reader, "/v1/messages/"+url.PathEscape(id))
		if code != http.StatusOK {
			t.Fatalf("GET message %s: %d %s", id, code, raw)
		}
		var m messageJSON
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	settled := func(id string) messageJSON {
		t.Helper()
		var m messageJSON
		redistest.Eventually(t, 15*time.Second, func() bool {
			m = view(id)
			a, _ := m.state("flaky")
			b, _ := m.state("strict")
			return a == "delivered" && b == "dead_lettered"
		}, "message %s: flaky delivered and strict dead-lettered", id)
		return m
	}

	// Text: 500, 500, 200 and 400.
	id := publish([]byte("hello view"), "text/plain")
	m := settled(id)
	if m.ID != id || m.Subject != "orders.view" || m.Transport != "stream" || m.Body == nil || *m.Body != "hello view" ||
		m.Headers["content-type"] != "text/plain" || m.BodySize != 10 || m.BodyTruncated || time.Since(m.PublishedAt) > time.Minute {
		t.Fatalf("message view: %+v", m)
	}
	_, att := m.state("flaky")
	if len(att) != 3 || att[0].Outcome != "retry" || att[0].Status != 500 || att[1].Outcome != "retry" ||
		att[2].Outcome != "ack" || att[2].Status != 200 || att[0].Delivery != 1 || att[2].Delivery != 3 || att[2].Process == "" {
		t.Fatalf("flaky attempts: %+v", att)
	}
	_, att = m.state("strict")
	if len(att) != 1 || att[0].Outcome != "dead_letter" || att[0].Status != 400 {
		t.Fatalf("strict attempts: %+v", att)
	}

	// Binary.
	bin := []byte{0xff, 0x00, 0xfe, 'x', 0x80}
	m = settled(publish(bin, "application/octet-stream"))
	if m.BodyBase64 == nil || *m.BodyBase64 != base64.StdEncoding.EncodeToString(bin) || m.Body != nil {
		t.Fatalf("binary body: %+v", m)
	}

	// Large text whose 64 KiB cut falls inside a two-byte character.
	large := append([]byte("a"), bytes.Repeat([]byte("é"), 50_000)...)
	m = settled(publish(large, "text/plain; charset=utf-8"))
	if !m.BodyTruncated || m.BodySize != len(large) || m.Body == nil || len(*m.Body) > 64<<10 || len(*m.Body) < 64<<10-4 ||
		!utf8.ValidString(*m.Body) || !strings.HasPrefix(string(large), *m.Body) {
		t.Fatalf("large body: truncated=%v size=%d len=%d", m.BodyTruncated, m.BodySize, len(*m.Body))
	}

	// Escaped as encodeURIComponent escapes it (':' as %3A), as a browser sends it.
	if code, raw := apiGet(t, br, reader, "/v1/messages/"+strings.ReplaceAll(id, ":", "%3A")); code != http.StatusOK {
		t.Fatalf("GET an escaped message id: %d %s", code, raw)
	}
	// Unknown and malformed ids.
	for _, bad := range []string{"orders~view:1-0", "orders~view:99999999999999-0", "nope", "orders~view:l1-abc", "bridge:x:1-0", "a:b:c"} {
		if code, raw := apiGet(t, br, reader, "/v1/messages/"+url.PathEscape(bad)); code != http.StatusNotFound || !bytes.Contains(raw, []byte(`"not_found"`)) {
			t.Fatalf("GET message %q: %d %s", bad, code, raw)
		}
	}
	// Scopes.
	for _, c := range []struct {
		token, path string
		code        int
	}{
		{publisher, "/v1/messages/" + id, 403},
		{publisher, "/v1/subscriptions/flaky/attempts", 403},
		{"", "/v1/messages/" + id, 401},
		{admin, "/v1/messages/" + id, 200},
	} {
		if code, raw := apiGet(t, br, c.token, c.path); code != c.code {
			t.Fatalf("GET %s with %q: %d, want %d: %s", c.path, c.token, code, c.code, raw)
		}
	}

	// The listing: newest first, filtered, paged.
	var page struct {
		Attempts []attemptJSON `json:"attempts"`
		Next     string        `json:"next"`
	}
	get := func(path string) {
		t.Helper()
		page.Attempts, page.Next = nil, ""
		code, raw := apiGet(t, br, reader, path)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, code, raw)
		}
		if err := json.Unmarshal(raw, &page); err != nil {
			t.Fatal(err)
		}
	}
	get("/v1/subscriptions/flaky/attempts")
	if len(page.Attempts) != 9 || page.Next != "" || page.Attempts[0].Outcome != "ack" || page.Attempts[8].MessageID != id {
		t.Fatalf("flaky attempts: %+v", page)
	}
	get("/v1/subscriptions/flaky/attempts?outcome=retry")
	if len(page.Attempts) != 6 {
		t.Fatalf("retries: %+v", page)
	}
	var seen []string
	for before := ""; ; {
		get("/v1/subscriptions/flaky/attempts?limit=4&before=" + before)
		for _, a := range page.Attempts {
			seen = append(seen, a.ID)
		}
		if page.Next == "" {
			break
		}
		before = page.Next
	}
	if len(seen) != 9 {
		t.Fatalf("paged through %d attempts, want 9: %v", len(seen), seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] >= seen[i-1] && len(seen[i]) == len(seen[i-1]) {
			t.Fatalf("attempts not newest first: %v", seen)
		}
	}
	for _, bad := range []string{"?limit=0", "?limit=501", "?outcome=maybe", "?before=x"} {
		if code, _ := apiGet(t, br, reader, "/v1/subscriptions/flaky/attempts"+bad); code != http.StatusBadRequest {
			t.Fatalf("attempts%s: %d, want 400", bad, code)
		}
	}
	if code, _ := apiGet(t, br, reader, "/v1/subscriptions/nope/attempts"); code != http.StatusNotFound {
		t.Fatalf("attempts of a missing subscription: %d", code)
	}
}

// The message view of a scheduled publish before and after it is due, of a list message
// and of a Pub/Sub message (kept nowhere once pushed: their attempts tell).
func TestMessageViewOtherTransports(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	br.subscribe("sched", map[string]any{"subject": "view.sched", "url": rc.URL})
	br.subscribe("jobs", map[string]any{"subject": "view.jobs", "url": rc.URL, "transport": "list"})
	br.subscribe("chat", map[string]any{"subject": "view.chat", "url": rc.URL, "transport": "pubsub"})
	time.Sleep(300 * time.Millisecond) // the Pub/Sub subscription listens
	get := func(id string) (int, messageJSON) {
		code, raw := apiGet(t, br, "", "/v1/messages/"+url.PathEscape(id))
		var m messageJSON
		_ = json.Unmarshal(raw, &m)
		return code, m
	}
	until := func(id, sub, state string) messageJSON {
		t.Helper()
		var m messageJSON
		redistest.Eventually(t, 10*time.Second, func() bool {
			var code int
			code, m = get(id)
			st, _ := m.state(sub)
			return code == 200 && st == state
		}, "message %s: %s %s", id, sub, state)
		return m
	}

	code, id := br.publish("view.sched", []byte("later"), "Bridge-Delay", "2s")
	if code != http.StatusAccepted {
		t.Fatalf("delayed publish: %d", code)
	}
	m := until(id, "sched", "pending")
	if m.Body == nil || *m.Body != "later" {
		t.Fatalf("scheduled message before due: %+v", m)
	}
	m = until(id, "sched", "delivered")
	if m.Body == nil || *m.Body != "later" || m.Transport != "stream" {
		t.Fatalf("scheduled message after due: %+v", m)
	}

	for _, c := range []struct{ subject, sub, transport string }{{"view.jobs", "jobs", "list"}, {"view.chat", "chat", "pubsub"}} {
		req, _ := http.NewRequest(http.MethodPost, br.URL+"/v1/subjects/"+c.subject+"/messages?transport="+c.transport, strings.NewReader("hi"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("publish %s: %v %v", c.transport, err, resp)
		}
		var out struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		m := until(out.ID, c.sub, "delivered")
		_, att := m.state(c.sub)
		if m.Transport != c.transport || len(att) != 1 || att[0].Outcome != "ack" || m.Body != nil {
			t.Fatalf("%s message view: %+v", c.transport, m)
		}
	}
}
