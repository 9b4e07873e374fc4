package httpapi_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/bridge-dev/bridge/internal/auth"
	"github.com/bridge-dev/bridge/internal/broker"
	httpapi "github.com/bridge-dev/bridge/internal/http"
	"github.com/bridge-dev/bridge/internal/metrics"
	"github.com/bridge-dev/bridge/internal/netguard"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/bridge-dev/bridge/internal/registry"
)

// A publish to a plain subject skips chi (publishRoute); every other form of the route
// still goes through it. Both must answer alike: the scope of a publish token holds on
// either path, an escaped subject publishes where its plain form does, and a subject the
// rule refuses, a wrong method or a near-miss path get chi's answers.
func TestPublishRouteAnswersLikeChi(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	h := handlerWithTokens(t, rs, map[string]string{"orders-token": "publish:orders.*", "admin-token": "admin"})
	cases := []struct {
		method, path, token string
		status              int
		code, subject       string
	}{
		{"POST", "/v1/subjects/orders.eu/messages", "orders-token", 202, "", "orders.eu"},
		{"POST", "/v1/subjects/orders.eu:1_a-b/messages", "orders-token", 202, "", "orders.eu:1_a-b"},
		{"POST", "/v1/subjects/orders.eu%3A2/messages", "orders-token", 202, "", "orders.eu:2"}, // escaped: chi
		{"POST", "/v1/subjects/billing/messages", "orders-token", 403, "forbidden", ""},
		{"POST", "/v1/subjects/billing%2Eeu/messages", "orders-token", 403, "forbidden", ""},
		{"POST", "/v1/subjects/billing/messages", "", 401, "unauthorized", ""},
		{"POST", "/v1/subjects/billing/messages", "wrong", 401, "unauthorized", ""},
		{"POST", "/v1/subjects/billing/messages", "admin-token", 202, "", "billing"},
		{"POST", "/v1/subjects/bridge:x/messages", "admin-token", 400, "invalid_subject", ""},
		{"POST", "/v1/subjects/-x/messages", "admin-token", 400, "invalid_subject", ""},
		{"POST", "/v1/subjects//messages", "admin-token", 400, "invalid_subject", ""},
		{"POST", "/v1/subjects/a/b/messages", "admin-token", 404, "not_found", ""},
		{"POST", "/v1/subjects/a/messages/", "admin-token", 404, "not_found", ""},
		{"GET", "/v1/subjects/a/messages", "admin-token", 405, "method_not_allowed", ""},
		{"POST", "/v1/subjects/a/batch", "admin-token", 400, "", ""}, // chi's batch route: not a JSON array
	}
	for _, c := range cases {
		req := httptest.NewRequest(c.method, c.path, strings.NewReader("hello"))
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var body struct{ Code, Subject, ID string }
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != c.status || (c.code != "" && body.Code != c.code) || body.Subject != c.subject {
			t.Errorf("%s %s (%q): %d %s, want %d %q subject %q", c.method, c.path, c.token, rec.Code, rec.Body.String(), c.status, c.code, c.subject)
		}
		if c.status == 202 {
			if n := rs.Do(t, "XLEN", c.subject); n.Error() != nil {
				t.Errorf("%s: %v", c.subject, n.Error())
			} else if v, _ := n.AsInt64(); v < 1 {
				t.Errorf("%s: nothing published", c.subject)
			}
		}
	}
	if keys := rs.DBSize(t); keys != 4 { // orders.eu, orders.eu:1_a-b, orders.eu:2, billing
		t.Errorf("%d keys, want the 4 published subjects only", keys)
	}
}

// Under GODEBUG=httpmuxgo121=1 a ServeMux takes "POST /v1/subjects/{subject}/messages" as
// a literal path: the publish route must then leave everything to chi. The test above runs
// again in a child process with that setting (the runtime reads it once, at start).
func TestPublishRouteUnderGo121ServeMux(t *testing.T) {
	if os.Getenv("BRIDGE_TEST_CHILD") != "" {
		t.Skip("already the child")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPublishRouteAnswersLikeChi$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=httpmuxgo121=1", "BRIDGE_TEST_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("with httpmuxgo121=1: %v\n%s", err, out)
	}
}

// handlerWithTokens is the API on rs, its publish body limited to 1024 bytes, with a
// token for each key of scopes having the one scope given.
func handlerWithTokens(t *testing.T, rs *redistest.Server, scopes map[string]string) *httpapi.Handler {
	t.Helper()
	var file strings.Builder
	file.WriteString("tokens:\n")
	for tok, scope := range scopes {
		sum := sha256.Sum256([]byte(tok))
		fmt.Fprintf(&file, "  - name: %s\n    token_sha256: %s\n    scopes: [%q]\n", tok, hex.EncodeToString(sum[:]), scope)
	}
	set, err := auth.Parse([]byte(file.String()))
	if err != nil {
		t.Fatal(err)
	}
	allow, _ := netguard.ParseCIDRs("127.0.0.1/32")
	b := broker.New(rs.Client(t))
	return httpapi.NewHandler(b, registry.New(b, netguard.New(allow)), idleEngine{}, httpapi.Options{
		MaxBody: 1024, MetricsHandler: metrics.New().Handler(), Tokens: auth.NewStore(set),
	})
}
