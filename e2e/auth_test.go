package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func sum(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

type hostile struct {
	name, method, path, body, token string
	header                          map[string]string
	status                          int
	code, scope                     string
}

func (h hostile) run(t *testing.T, br *bridge) {
	t.Helper()
	var body *strings.Reader
	if h.body != "" {
		body = strings.NewReader(h.body)
	} else {
		body = strings.NewReader("")
	}
	req, err := http.NewRequest(h.method, br.URL+h.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range h.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", h.name, err)
	}
	defer resp.Body.Close()
	var p struct {
		Code string `json:"code"`
	}
	_ = jsonDecode(resp.Body, &p)
	if resp.StatusCode != h.status || p.Code != h.code {
		t.Fatalf("%s: %d %q, want %d %q", h.name, resp.StatusCode, p.Code, h.status, h.code)
	}
	if resp.StatusCode >= 400 && resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("%s: content-type %q", h.name, resp.Header.Get("Content-Type"))
	}
	if h.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("%s: no WWW-Authenticate", h.name)
	}
	if h.status == 403 {
		wa := resp.Header.Get("WWW-Authenticate")
		if !strings.Contains(wa, `error="insufficient_scope"`) || !strings.Contains(wa, `scope="`+h.scope+`"`) {
			t.Fatalf("%s: WWW-Authenticate %q", h.name, wa)
		}
	}
}

// Scoped tokens from BRIDGE_TOKENS_FILE, reloaded on SIGHUP; hostile requests through the
// real server each get their status and code, and none writes anything.
func TestScopedTokensAndHostileRequests(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	const (
		admin     = "admin-token-0123456789abcdef"
		publisher = "publisher-token-0123456789ab"
		reader    = "reader-token-0123456789abcd"
		dlqOp     = "dlq-token-0123456789abcdefg"
		later     = "later-token-0123456789abcde"
	)
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	write := func(extra string) {
		yaml := fmt.Sprintf(`tokens:
  - {name: publisher, token_sha256: %s, scopes: ["publish:orders.*"]}
  - {name: reader, token_sha256: %s, scopes: ["subscriptions:read"]}
  - {name: dlq, token_sha256: %s, scopes: ["dead-letters:write", "subscriptions:read"]}
%s`, sum(publisher), sum(reader), sum(dlqOp), extra)
		if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	br := startBridge(t, redisURL(rs), "BRIDGE_TOKEN="+admin, "BRIDGE_TOKENS_FILE="+file)
	rc := newReceiver(t, nil)
	sub := fmt.Sprintf(`{"subject":"orders.eu","url":%q}`, rc.URL)
	// One subscription made by the admin, so reads and dead-letter routes have a target.
	req, _ := http.NewRequest("PUT", br.URL+"/v1/subscriptions/s", strings.NewReader(sub))
	req.Header.Set("Authorization", "Bearer "+admin)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("admin PUT: %v %v", err, resp)
	}
	time.Sleep(200 * time.Millisecond)
	before := rs.DBSize(t)
	xlen := func() int64 { n, _ := rs.Do(t, "XLEN", "orders.eu").AsInt64(); return n }
	streamBefore := xlen()

	cases := []hostile{
		{name: "no token", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", status: 401, code: "unauthorized"},
		{name: "unknown token", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: "nope-nope-nope-nope-nope", status: 401, code: "unauthorized"},
		{name: "token as basic", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", header: map[string]string{"Authorization": "Basic " + admin}, status: 401, code: "unauthorized"},
		{name: "token in query", method: "POST", path: "/v1/subjects/orders.eu/messages?access_token=" + admin, body: "x", status: 401, code: "unauthorized"},
		{name: "truncated token", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin[:len(admin)-1], status: 401, code: "unauthorized"},
		{name: "token with suffix", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin + "x", status: 401, code: "unauthorized"},
		{name: "publisher outside its glob", method: "POST", path: "/v1/subjects/payments/messages", body: "x", token: publisher, status: 403, code: "forbidden", scope: "publish:payments"},
		{name: "publisher on the bare prefix", method: "POST", path: "/v1/subjects/orders/messages", body: "x", token: publisher, status: 403, code: "forbidden", scope: "publish:orders"},
		{name: "publisher batch outside glob", method: "POST", path: "/v1/subjects/payments/batch", body: `{"messages":[{"data":1}]}`, token: publisher, status: 403, code: "forbidden", scope: "publish:payments"},
		{name: "publisher reads subscriptions", method: "GET", path: "/v1/subscriptions", token: publisher, status: 403, code: "forbidden", scope: "subscriptions:read"},
		{name: "publisher creates subscription", method: "PUT", path: "/v1/subscriptions/x", body: sub, token: publisher, status: 403, code: "forbidden", scope: "subscriptions:write"},
		{name: "reader creates subscription", method: "PUT", path: "/v1/subscriptions/x", body: sub, token: reader, status: 403, code: "forbidden", scope: "subscriptions:write"},
		{name: "reader deletes subscription", method: "DELETE", path: "/v1/subscriptions/s", token: reader, status: 403, code: "forbidden", scope: "subscriptions:write"},
		{name: "reader reads the secret", method: "GET", path: "/v1/subscriptions/s/secret", token: reader, status: 403, code: "forbidden", scope: "subscriptions:write"},
		{name: "reader rotates the secret", method: "POST", path: "/v1/subscriptions/s/secret/rotate", token: reader, status: 403, code: "forbidden", scope: "subscriptions:write"},
		{name: "reader pauses", method: "POST", path: "/v1/subscriptions/s/pause", token: reader, status: 403, code: "forbidden", scope: "subscriptions:write"},
		{name: "reader seeks", method: "POST", path: "/v1/subscriptions/s/seek", body: `{"to":"beginning"}`, token: reader, status: 403, code: "forbidden", scope: "subscriptions:write"},
		{name: "reader replays", method: "POST", path: "/v1/subscriptions/s/dead-letters/replay", token: reader, status: 403, code: "forbidden", scope: "dead-letters:write"},
		{name: "reader purges", method: "DELETE", path: "/v1/subscriptions/s/dead-letters", token: reader, status: 403, code: "forbidden", scope: "dead-letters:write"},
		{name: "reader publishes", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: reader, status: 403, code: "forbidden", scope: "publish:orders.eu"},
		{name: "dlq operator publishes", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: dlqOp, status: 403, code: "forbidden", scope: "publish:orders.eu"},
		{name: "subject traversal", method: "POST", path: "/v1/subjects/..%2F..%2Fetc/messages", body: "x", token: admin, status: 400, code: "invalid_subject"},
		{name: "subject with newline", method: "POST", path: "/v1/subjects/a%0Ab/messages", body: "x", token: admin, status: 400, code: "invalid_subject"},
		{name: "subject with hash tag", method: "POST", path: "/v1/subjects/%7Borders%7D/messages", body: "x", token: admin, status: 400, code: "invalid_subject"},
		{name: "subject glob", method: "POST", path: "/v1/subjects/orders.%2A/messages", body: "x", token: admin, status: 400, code: "invalid_subject"},
		{name: "body over the limit", method: "POST", path: "/v1/subjects/orders.eu/messages", body: strings.Repeat("x", 2<<20), token: admin, status: 413, code: "payload_too_large"},
		{name: "forwarded Host", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin, header: map[string]string{"Bridge-Forward-Host": "internal"}, status: 400, code: "invalid_header"},
		{name: "forwarded webhook-signature", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin, header: map[string]string{"Bridge-Forward-Webhook-Signature": "v1,forged"}, status: 400, code: "invalid_header"},
		{name: "forwarded Transfer-Encoding", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin, header: map[string]string{"Bridge-Forward-Transfer-Encoding": "chunked"}, status: 400, code: "invalid_header"},
		{name: "forwarded delivery count", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin, header: map[string]string{"Bridge-Forward-Redis-Delivery-Count": "99"}, status: 400, code: "invalid_header"},
		{name: "huge idempotency key", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin, header: map[string]string{"Idempotency-Key": strings.Repeat("k", 300)}, status: 400, code: "invalid_header"},
		{name: "delay of years", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: admin, header: map[string]string{"Bridge-Delay": "99999h"}, status: 400, code: "invalid_header"},
		{name: "subscription to metadata", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"http://169.254.169.254/latest/meta-data/"}`, token: admin, status: 400, code: "target_not_allowed"},
		{name: "subscription to file URL", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"file:///etc/passwd"}`, token: admin, status: 400, code: "invalid_url"},
		{name: "subscription with userinfo", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"https://admin:pw@example.com/"}`, token: admin, status: 400, code: "invalid_url"},
		{name: "subscription header injection", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"https://example.com/","headers":{"X-A":"1\r\nX-Evil: 1"}}`, token: admin, status: 400, code: "invalid_subscription"},
		{name: "subscription overriding Host", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"https://example.com/","headers":{"Host":"internal"}}`, token: admin, status: 400, code: "invalid_subscription"},
		{name: "subscription weak secret", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"https://example.com/","secret":"whsec_c2hvcnQ="}`, token: admin, status: 400, code: "invalid_secret"},
		{name: "subscription huge body", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"https://example.com/","headers":{"X":"` + strings.Repeat("a", 70000) + `"}}`, token: admin, status: 413, code: "payload_too_large"},
		{name: "subscription nested junk", method: "PUT", path: "/v1/subscriptions/x", body: `{"subject":"orders.eu","url":"https://example.com/","retry":{"min_backoff":"1s","jitter":true}}`, token: admin, status: 400, code: "invalid_json"},
		{name: "name with slash", method: "PUT", path: "/v1/subscriptions/a%2Fb", body: sub, token: admin, status: 400, code: "invalid_name"},
	}
	for _, c := range cases {
		c.run(t, br)
	}
	if after := rs.DBSize(t); after != before || xlen() != streamBefore {
		t.Fatalf("DBSIZE %d -> %d, stream %d -> %d after %d hostile requests", before, after, streamBefore, xlen(), len(cases))
	}
	t.Logf("%d hostile requests refused, DBSIZE unchanged", len(cases))

	// Allowed calls work with their scopes.
	for _, c := range []hostile{
		{name: "publisher in its glob", method: "POST", path: "/v1/subjects/orders.eu/messages", body: "x", token: publisher, status: 202},
		{name: "reader lists", method: "GET", path: "/v1/subscriptions", token: reader, status: 200},
		{name: "dlq operator replays", method: "POST", path: "/v1/subscriptions/s/dead-letters/replay", token: dlqOp, status: 200},
		{name: "later token unknown yet", method: "GET", path: "/v1/subscriptions", token: later, status: 401, code: "unauthorized"},
	} {
		c.run(t, br)
	}
	// SIGHUP reloads the file: a new token works, and a broken file keeps the old set.
	write(fmt.Sprintf("  - {name: later, token_sha256: %s, scopes: [admin]}\n", sum(later)))
	_ = br.cmd.Process.Signal(syscall.SIGHUP)
	redistest.Eventually(t, 5*time.Second, func() bool {
		req, _ := http.NewRequest("GET", br.URL+"/v1/subscriptions", nil)
		req.Header.Set("Authorization", "Bearer "+later)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "the reloaded token is not accepted")
	if err := os.WriteFile(file, []byte("tokens: [{name: x, token_sha256: nothex, scopes: [admin]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = br.cmd.Process.Signal(syscall.SIGHUP)
	redistest.Eventually(t, 5*time.Second, func() bool { return strings.Contains(br.log.String(), "not reloaded") }, "bad reload not logged")
	hostile{name: "after a bad reload", method: "GET", path: "/v1/subscriptions", token: later, status: 200}.run(t, br)
	for _, tok := range []string{admin, publisher, reader, dlqOp, later} {
		if strings.Contains(br.log.String(), tok) {
			t.Fatal("a token appears in the log")
		}
	}
}
