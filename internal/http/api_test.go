package httpapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/bridge-dev/bridge/api"
	"github.com/bridge-dev/bridge/internal/broker"
	httpapi "github.com/bridge-dev/bridge/internal/http"
	"github.com/bridge-dev/bridge/internal/metrics"
	"github.com/bridge-dev/bridge/internal/netguard"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/bridge-dev/bridge/internal/registry"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
)

type idleEngine struct{}

func (idleEngine) Running() bool                     { return true }
func (idleEngine) Sync(context.Context, int64) error { return nil }
func (idleEngine) Poke(string)                       {}
func (idleEngine) Consumer() string                  { return "test" }

func newAPI(t *testing.T, rs *redistest.Server) *httpapi.Handler {
	t.Helper()
	allow, _ := netguard.ParseCIDRs("127.0.0.1/32")
	b := broker.New(rs.Client(t))
	return httpapi.NewHandler(b, registry.New(b, netguard.New(allow)), idleEngine{}, httpapi.Options{
		MaxBody: 1024, OpenAPI: api.OpenAPI, MetricsHandler: metrics.New().Handler(),
	})
}

func loadDoc(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	doc.Servers = nil
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return doc, router
}

// Every route the router serves is in api/openapi.yaml, and every documented operation is served.
func TestOpenAPIMatchesRouter(t *testing.T) {
	doc, _ := loadDoc(t)
	h := httpapi.NewHandler(nil, nil, idleEngine{}, httpapi.Options{MetricsHandler: http.NotFoundHandler()})
	served := map[string]bool{}
	err := chi.Walk(h.Routes(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if strings.HasPrefix(route, "/console") {
			return nil // the web console's files, not the JSON API
		}
		if route != "/" {
			route = strings.TrimSuffix(route, "/")
		}
		served[method+" "+route] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	var missing, extra []string
	for r := range served {
		if !documented[r] {
			missing = append(missing, r)
		}
	}
	for r := range documented {
		if !served[r] {
			extra = append(extra, r)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing)+len(extra) > 0 {
		t.Fatalf("served but not documented: %v\ndocumented but not served: %v", missing, extra)
	}
}

type call struct {
	name, method, path, body string
	header                   map[string]string
	status                   int
	code                     string
}

func (c call) do(t *testing.T, srv *testServer, router routers.Router) []byte {
	t.Helper()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, _ := http.NewRequest(c.method, srv.URL+c.path, body)
	if c.body != "" && c.header["Content-Type"] == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != c.status {
		t.Fatalf("%s: status %d, want %d: %s", c.name, resp.StatusCode, c.status, raw)
	}
	if c.code != "" && !bytes.Contains(raw, []byte(`"code":"`+c.code+`"`)) {
		t.Fatalf("%s: want code %s, got %s", c.name, c.code, raw)
	}
	if !strings.Contains(resp.Header.Get("Content-Type"), "json") && resp.StatusCode != 204 {
		if c.path == "/metrics" {
			return raw
		}
		return raw // the YAML document itself
	}
	// The answer must match the documented response for that operation.
	vreq, _ := http.NewRequest(c.method, "http://bridge"+c.path, nil)
	route, params, err := router.FindRoute(vreq)
	if err != nil {
		if c.status == 404 || c.status == 405 {
			return raw
		}
		t.Fatalf("%s: route not in the document: %v", c.name, err)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
			Options: &openapi3filter.Options{ExcludeRequestBody: true}},
		Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(raw)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Fatalf("%s: response does not match the OpenAPI document: %v\n%s", c.name, err, raw)
	}
	return raw
}

// Bad requests through the real server and a real Redis: each gets its status and code,
// and none writes anything (DBSIZE unchanged). Every answer validates against the document.
func TestBadRequestsWriteNothing(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, router := loadDoc(t)
	srv := startServer(t, newAPI(t, rs))
	rs.Do(t, "SET", "plain-string", "x")
	rs.Do(t, "HSET", "bridge:subscriptions", "existing", `{"name":"existing","subject":"orders","url":"http://127.0.0.1:1/","transport":"stream","max_deliveries":5,"retry":{"min_backoff":"1s","max_backoff":"10m"},"timeout":"30s","visibility_timeout":"1m","max_in_flight":16,"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","headers":{}}`)
	before := rs.DBSize(t)
	sub := func(extra string) string {
		return `{"subject":"orders","url":"http://127.0.0.1:9/"` + extra + `}`
	}
	sched := func(extra string) string {
		return `{"cron":"*/5 * * * *","subject":"orders","data":{"a":1}` + extra + `}`
	}
	cases := []call{
		{name: "subject with space", method: "POST", path: "/v1/subjects/a%20b/messages", body: "x", status: 400, code: "invalid_subject"},
		{name: "subject with brace", method: "POST", path: "/v1/subjects/%7Bx%7D/messages", body: "x", status: 400, code: "invalid_subject"},
		{name: "subject with star", method: "POST", path: "/v1/subjects/a*/messages", body: "x", status: 400, code: "invalid_subject"},
		{name: "subject starting with dot", method: "POST", path: "/v1/subjects/.a/messages", body: "x", status: 400, code: "invalid_subject"},
		{name: "subject too long", method: "POST", path: "/v1/subjects/" + strings.Repeat("a", 201) + "/messages", body: "x", status: 400, code: "invalid_subject"},
		{name: "body too large", method: "POST", path: "/v1/subjects/a/messages", body: strings.Repeat("x", 1025), status: 413, code: "payload_too_large"},
		{name: "unknown transport", method: "POST", path: "/v1/subjects/a/messages?transport=kafka", body: "x", status: 400, code: "invalid_query"},
		{name: "sharded mode on a stream", method: "POST", path: "/v1/subjects/a/messages?mode=sharded", body: "x", status: 400, code: "invalid_query"},
		{name: "unknown pubsub mode", method: "POST", path: "/v1/subjects/a/messages?transport=pubsub&mode=fanout", body: "x", status: 400, code: "invalid_query"},
		{name: "delay on a list", method: "POST", path: "/v1/subjects/a/messages?transport=list", body: "x", header: map[string]string{"Bridge-Delay": "5s"}, status: 400, code: "unsupported_transport"},
		{name: "batch to a list", method: "POST", path: "/v1/subjects/a/batch?transport=list", body: `{"messages":[{"data":1}]}`, status: 400, code: "unsupported_transport"},
		{name: "idempotency key with space", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Idempotency-Key": "a b"}, status: 400, code: "invalid_header"},
		{name: "idempotency key too long", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Idempotency-Key": strings.Repeat("k", 257)}, status: 400, code: "invalid_header"},
		{name: "bad delay", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Delay": "later"}, status: 400, code: "invalid_header"},
		{name: "negative delay", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Delay": "-1s"}, status: 400, code: "invalid_header"},
		{name: "bad not-before", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Not-Before": "tomorrow"}, status: 400, code: "invalid_header"},
		{name: "delay and not-before", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Delay": "1s", "Bridge-Not-Before": "2030-01-01T00:00:00Z"}, status: 400, code: "invalid_header"},
		{name: "bad partition key", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Partition-Key": strings.Repeat("p", 1025)}, status: 400, code: "invalid_header"},
		{name: "forward reserved", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Forward-Bridge-Subject": "x"}, status: 400, code: "invalid_header"},
		{name: "batch bad subject", method: "POST", path: "/v1/subjects/a%20b/batch", body: `{"messages":[{"data":1}]}`, status: 400, code: "invalid_subject"},
		{name: "batch not json", method: "POST", path: "/v1/subjects/a/batch", body: `[`, status: 400, code: "invalid_json"},
		{name: "batch unknown field", method: "POST", path: "/v1/subjects/a/batch", body: `{"messages":[{"data":1,"x":2}]}`, status: 400, code: "invalid_json"},
		{name: "batch empty", method: "POST", path: "/v1/subjects/a/batch", body: `{"messages":[]}`, status: 400, code: "invalid_json"},
		{name: "seek bad target", method: "POST", path: "/v1/subscriptions/existing/seek", body: `{"to":"yesterday"}`, status: 400, code: "invalid_json"},
		{name: "seek unknown field", method: "POST", path: "/v1/subscriptions/existing/seek", body: `{"to":"end","x":1}`, status: 400, code: "invalid_json"},
		{name: "seek missing", method: "POST", path: "/v1/subscriptions/nope/seek", body: `{"to":"end"}`, status: 404, code: "not_found"},
		{name: "rotate missing", method: "POST", path: "/v1/subscriptions/nope/secret/rotate", status: 404, code: "not_found"},
		{name: "purge missing", method: "DELETE", path: "/v1/subscriptions/nope/dead-letters", status: 404, code: "not_found"},
		{name: "forward host", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Forward-Host": "evil"}, status: 400, code: "invalid_header"},
		{name: "forward webhook-id", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Forward-Webhook-Id": "x"}, status: 400, code: "invalid_header"},
		{name: "forward content-length", method: "POST", path: "/v1/subjects/a/messages", body: "x", header: map[string]string{"Bridge-Forward-Content-Length": "1"}, status: 400, code: "invalid_header"},
		{name: "wrong type key", method: "POST", path: "/v1/subjects/plain-string/messages", body: "x", status: 409, code: "wrong_type"},
		{name: "delayed to wrong type key", method: "POST", path: "/v1/subjects/plain-string/messages", body: "x", header: map[string]string{"Bridge-Delay": "1h"}, status: 409, code: "wrong_type"},
		{name: "batch delayed to wrong type key", method: "POST", path: "/v1/subjects/plain-string/batch", body: `{"messages":[{"data":1,"delay":"1h"}]}`, status: 202},
		{name: "registry as subject", method: "POST", path: "/v1/subjects/bridge:subscriptions/messages", body: "x", status: 400, code: "invalid_subject"},
		{name: "bridge key as list subject", method: "POST", path: "/v1/subjects/bridge:x/messages?transport=list", body: "x", status: 400, code: "invalid_subject"},
		{name: "bridge channel as pubsub subject", method: "POST", path: "/v1/subjects/bridge:subscriptions:changed/messages?transport=pubsub", body: "x", status: 400, code: "invalid_subject"},
		{name: "bridge batch subject", method: "POST", path: "/v1/subjects/bridge:subscriptions/batch", body: `{"messages":[{"data":1}]}`, status: 400, code: "invalid_subject"},
		{name: "bridge name", method: "PUT", path: "/v1/subscriptions/bridge:subscriptions", body: sub(""), status: 400, code: "invalid_name"},
		{name: "bridge subject", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"bridge:subscriptions","url":"http://127.0.0.1:9/"}`, status: 400, code: "invalid_subscription"},
		{name: "bridge pattern", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"bridge:*","url":"http://127.0.0.1:9/","transport":"pubsub","pattern":true}`, status: 400, code: "invalid_subscription"},
		{name: "trailing brace", method: "PUT", path: "/v1/subscriptions/s", body: sub("") + "}", status: 400, code: "invalid_json"},
		{name: "trailing text", method: "PUT", path: "/v1/subscriptions/s", body: sub("") + " x", status: 400, code: "invalid_json"},
		{name: "url too long", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"orders","url":"http://127.0.0.1:9/` + strings.Repeat("a", 60000) + `"}`, status: 400, code: "invalid_subscription"},
		{name: "bad name", method: "PUT", path: "/v1/subscriptions/-x", body: sub(""), status: 400, code: "invalid_name"},
		{name: "not json", method: "PUT", path: "/v1/subscriptions/s", body: "{", status: 400, code: "invalid_json"},
		{name: "unknown field", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"colour":"red"`), status: 400, code: "invalid_json"},
		{name: "two objects", method: "PUT", path: "/v1/subscriptions/s", body: sub("") + sub(""), status: 400, code: "invalid_json"},
		{name: "missing subject", method: "PUT", path: "/v1/subscriptions/s", body: `{"url":"http://127.0.0.1:9/"}`, status: 400, code: "invalid_subscription"},
		{name: "missing url", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"orders"}`, status: 400, code: "invalid_subscription"},
		{name: "ftp url", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"orders","url":"ftp://example.com/"}`, status: 400, code: "invalid_url"},
		{name: "userinfo url", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"orders","url":"http://u:p@example.com/"}`, status: 400, code: "invalid_url"},
		{name: "metadata url", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"orders","url":"http://169.254.169.254/"}`, status: 400, code: "target_not_allowed"},
		{name: "private url", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"orders","url":"http://192.168.1.1/"}`, status: 400, code: "target_not_allowed"},
		{name: "timeout too small", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"timeout":"1ms"`), status: 400, code: "invalid_subscription"},
		{name: "visibility below timeout", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"timeout":"10s","visibility_timeout":"5s"`), status: 400, code: "invalid_subscription"},
		{name: "max_deliveries 0", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"max_deliveries":0`), status: 400, code: "invalid_subscription"},
		{name: "max_in_flight huge", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"max_in_flight":100000`), status: 400, code: "invalid_subscription"},
		{name: "backoff inverted", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"retry":{"min_backoff":"10s","max_backoff":"1s"}`), status: 400, code: "invalid_subscription"},
		{name: "bad duration", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"timeout":"soon"`), status: 400, code: "invalid_json"},
		{name: "bad start", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"start":"yesterday"`), status: 400, code: "invalid_subscription"},
		{name: "bad static header", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"headers":{"Bad Name":"x"}`), status: 400, code: "invalid_subscription"},
		{name: "static webhook header", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"headers":{"webhook-signature":"x"}`), status: 400, code: "invalid_subscription"},
		{name: "static header CRLF", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"headers":{"X-A":"a\r\nX-B: b"}`), status: 400, code: "invalid_subscription"},
		{name: "bad secret", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"secret":"hunter2"`), status: 400, code: "invalid_secret"},
		{name: "unknown transport", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"transport":"kafka"`), status: 400, code: "invalid_subscription"},
		{name: "sharded pattern", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"transport":"pubsub","pubsub_mode":"sharded","pattern":true`), status: 400, code: "invalid_subscription"},
		{name: "start on a list", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"transport":"list","start":"beginning"`), status: 400, code: "invalid_subscription"},
		{name: "bad list mode", method: "PUT", path: "/v1/subscriptions/s", body: sub(`,"transport":"list","list_mode":"fast"`), status: 400, code: "invalid_subscription"},
		{name: "list on a stream key", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"plain-string","url":"http://127.0.0.1:9/","transport":"list"}`, status: 409, code: "wrong_type"},
		{name: "subject change", method: "PUT", path: "/v1/subscriptions/existing", body: `{"subject":"payments","url":"http://127.0.0.1:9/"}`, status: 409, code: "subject_immutable"},
		{name: "subject holds a string", method: "PUT", path: "/v1/subscriptions/s", body: `{"subject":"plain-string","url":"http://127.0.0.1:9/"}`, status: 409, code: "wrong_type"},
		{name: "get missing", method: "GET", path: "/v1/subscriptions/nope", status: 404, code: "not_found"},
		{name: "delete missing", method: "DELETE", path: "/v1/subscriptions/nope", status: 404, code: "not_found"},
		{name: "pause missing", method: "POST", path: "/v1/subscriptions/nope/pause", status: 404, code: "not_found"},
		{name: "secret missing", method: "GET", path: "/v1/subscriptions/nope/secret", status: 404, code: "not_found"},
		{name: "dead letters bad limit", method: "GET", path: "/v1/subscriptions/existing/dead-letters?limit=0", status: 400, code: "invalid_query"},
		{name: "dead letters bad after", method: "GET", path: "/v1/subscriptions/existing/dead-letters?after=abc", status: 400, code: "invalid_query"},
		{name: "replay bad json", method: "POST", path: "/v1/subscriptions/existing/dead-letters/replay", body: `{"ids":"x"}`, status: 400, code: "invalid_json"},
		{name: "schedule bad name", method: "PUT", path: "/v1/schedules/-x", body: sched(""), status: 400, code: "invalid_name"},
		{name: "schedule bridge name", method: "PUT", path: "/v1/schedules/bridge:schedules", body: sched(""), status: 400, code: "invalid_name"},
		{name: "schedule bad cron", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"every day","subject":"orders","data":1}`, status: 400, code: "invalid_schedule"},
		{name: "schedule six fields", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"0 * * * * *","subject":"orders","data":1}`, status: 400, code: "invalid_schedule"},
		{name: "schedule minute out of range", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"61 * * * *","subject":"orders","data":1}`, status: 400, code: "invalid_schedule"},
		{name: "schedule every below a second", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@every 500ms","subject":"orders","data":1}`, status: 400, code: "invalid_schedule"},
		{name: "schedule zone in the cron", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"TZ=UTC","subject":"orders","data":1}`, status: 400, code: "invalid_schedule"},
		{name: "schedule never ticks", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"0 0 30 2 *","subject":"orders","data":1}`, status: 400, code: "invalid_schedule"},
		{name: "schedule missing cron", method: "PUT", path: "/v1/schedules/s", body: `{"subject":"orders","data":1}`, status: 400, code: "invalid_schedule"},
		{name: "schedule unknown zone", method: "PUT", path: "/v1/schedules/s", body: sched(`,"timezone":"Mars/Olympus"`), status: 400, code: "invalid_schedule"},
		{name: "schedule local zone", method: "PUT", path: "/v1/schedules/s", body: sched(`,"timezone":"Local"`), status: 400, code: "invalid_schedule"},
		{name: "schedule bad subject", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"a b","data":1}`, status: 400, code: "invalid_subject"},
		{name: "schedule bridge subject", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"bridge:schedules","data":1}`, status: 400, code: "invalid_subject"},
		{name: "schedule missing subject", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","data":1}`, status: 400, code: "invalid_subject"},
		{name: "schedule data and base64", method: "PUT", path: "/v1/schedules/s", body: sched(`,"data_base64":"AA=="`), status: 400, code: "invalid_schedule"},
		{name: "schedule no data", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"orders"}`, status: 400, code: "invalid_schedule"},
		{name: "schedule null data", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"orders","data":null}`, status: 400, code: "invalid_schedule"},
		{name: "schedule bad base64", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"orders","data_base64":"%%%"}`, status: 400, code: "invalid_schedule"},
		{name: "schedule data over max body", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"orders","data":"` + strings.Repeat("x", 1100) + `"}`, status: 413, code: "payload_too_large"},
		{name: "schedule base64 over max body", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"orders","data_base64":"` + strings.Repeat("A", 1400) + `"}`, status: 413, code: "payload_too_large"},
		{name: "schedule request over the limit", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"orders","data":"` + strings.Repeat("x", 70<<10) + `"}`, status: 413, code: "payload_too_large"},
		{name: "schedule reserved header", method: "PUT", path: "/v1/schedules/s", body: sched(`,"headers":{"Bridge-Schedule":"x"}`), status: 400, code: "invalid_schedule"},
		{name: "schedule host header", method: "PUT", path: "/v1/schedules/s", body: sched(`,"headers":{"Host":"x"}`), status: 400, code: "invalid_schedule"},
		{name: "schedule header CRLF", method: "PUT", path: "/v1/schedules/s", body: sched(`,"headers":{"X-A":"a\r\nX-B: b"}`), status: 400, code: "invalid_schedule"},
		{name: "schedule bad content type", method: "PUT", path: "/v1/schedules/s", body: sched(`,"content_type":"a\nb"`), status: 400, code: "invalid_schedule"},
		{name: "schedule unknown field", method: "PUT", path: "/v1/schedules/s", body: sched(`,"every":"day"`), status: 400, code: "invalid_json"},
		{name: "schedule trailing text", method: "PUT", path: "/v1/schedules/s", body: sched("") + " x", status: 400, code: "invalid_json"},
		{name: "schedule on a string key", method: "PUT", path: "/v1/schedules/s", body: `{"cron":"@hourly","subject":"plain-string","data":1}`, status: 409, code: "wrong_type"},
		{name: "schedule get missing", method: "GET", path: "/v1/schedules/nope", status: 404, code: "not_found"},
		{name: "schedule delete missing", method: "DELETE", path: "/v1/schedules/nope", status: 404, code: "not_found"},
		{name: "schedule pause missing", method: "POST", path: "/v1/schedules/nope/pause", status: 404, code: "not_found"},
		{name: "schedule resume missing", method: "POST", path: "/v1/schedules/nope/resume", status: 404, code: "not_found"},
		{name: "schedule get bad name", method: "GET", path: "/v1/schedules/-x", status: 400, code: "invalid_name"},
		{name: "unknown route", method: "GET", path: "/v2/whatever", status: 404, code: "not_found"},
		{name: "wrong method", method: "PATCH", path: "/v1/subscriptions/existing", status: 405, code: "method_not_allowed"},
	}
	for _, c := range cases {
		c.do(t, srv, router)
	}
	if after := rs.DBSize(t); after != before {
		t.Fatalf("DBSIZE %d -> %d after %d refused requests", before, after, len(cases))
	}
	t.Logf("%d refused requests, DBSIZE unchanged at %d", len(cases), before)
}

// The successful answers of every route validate against the document.
func TestSuccessfulResponsesMatchDocument(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, router := loadDoc(t)
	srv := startServer(t, newAPI(t, rs))
	for _, c := range []call{
		{name: "healthz", method: "GET", path: "/healthz", status: 200},
		{name: "readyz", method: "GET", path: "/readyz", status: 200},
		{name: "healthz head", method: "HEAD", path: "/healthz", status: 200},
		{name: "readyz head", method: "HEAD", path: "/readyz", status: 200},
		{name: "openapi", method: "GET", path: "/openapi.yaml", status: 200},
		{name: "metrics", method: "GET", path: "/metrics", status: 200},
		{name: "create", method: "PUT", path: "/v1/subscriptions/s1", body: `{"subject":"orders","url":"http://127.0.0.1:9/","headers":{"Authorization":"Bearer fn"}}`, status: 201},
		{name: "replace", method: "PUT", path: "/v1/subscriptions/s1", body: `{"subject":"orders","url":"http://127.0.0.1:9/x","timeout":5}`, status: 200},
		{name: "publish", method: "POST", path: "/v1/subjects/orders/messages", body: "hi", header: map[string]string{"Content-Type": "text/plain"}, status: 202},
		{name: "create list", method: "PUT", path: "/v1/subscriptions/l1", body: `{"subject":"jobs","url":"http://127.0.0.1:9/","transport":"list","list_mode":"simple"}`, status: 201},
		{name: "create pubsub", method: "PUT", path: "/v1/subscriptions/p1", body: `{"subject":"ev.*","url":"http://127.0.0.1:9/","transport":"pubsub","pattern":true}`, status: 201},
		{name: "get list", method: "GET", path: "/v1/subscriptions/l1", status: 200},
		{name: "get pubsub", method: "GET", path: "/v1/subscriptions/p1", status: 200},
		{name: "publish list", method: "POST", path: "/v1/subjects/jobs/messages?transport=list", body: "hi", status: 202},
		{name: "publish pubsub", method: "POST", path: "/v1/subjects/ev.a/messages?transport=pubsub", body: "hi", status: 202},
		{name: "publish sharded", method: "POST", path: "/v1/subjects/ev.b/messages?transport=pubsub&mode=sharded", body: "hi", status: 202},
		{name: "list", method: "GET", path: "/v1/subscriptions", status: 200},
		{name: "get", method: "GET", path: "/v1/subscriptions/s1", status: 200},
		{name: "pause", method: "POST", path: "/v1/subscriptions/s1/pause", status: 200},
		{name: "resume", method: "POST", path: "/v1/subscriptions/s1/resume", status: 200},
		{name: "secret", method: "GET", path: "/v1/subscriptions/s1/secret", status: 200},
		{name: "dead letters", method: "GET", path: "/v1/subscriptions/s1/dead-letters?limit=10", status: 200},
		{name: "purge", method: "DELETE", path: "/v1/subscriptions/s1/dead-letters", status: 200},
		{name: "rotate", method: "POST", path: "/v1/subscriptions/s1/secret/rotate", status: 200},
		{name: "secret after rotation", method: "GET", path: "/v1/subscriptions/s1/secret", status: 200},
		{name: "seek beginning", method: "POST", path: "/v1/subscriptions/s1/seek", body: `{"to":"beginning"}`, status: 200},
		{name: "seek time", method: "POST", path: "/v1/subscriptions/s1/seek", body: `{"to":"2026-01-02T03:04:05Z"}`, status: 200},
		{name: "seek id", method: "POST", path: "/v1/subscriptions/s1/seek", body: `{"to":"1-0"}`, status: 200},
		{name: "batch", method: "POST", path: "/v1/subjects/orders/batch", body: `{"messages":[{"data":{"a":1}},{"data_base64":"AA==","delay":"1h"},{"data":1,"idempotency_key":"k"},{"data":"x","headers":{"Host":"h"}}]}`, status: 202},
		{name: "publish idempotent", method: "POST", path: "/v1/subjects/orders/messages", body: "hi", header: map[string]string{"Idempotency-Key": "k"}, status: 202},
		{name: "publish delayed", method: "POST", path: "/v1/subjects/orders/messages", body: "hi", header: map[string]string{"Bridge-Delay": "1h"}, status: 202},
		{name: "replay all", method: "POST", path: "/v1/subscriptions/s1/dead-letters/replay", status: 200},
		{name: "replay some", method: "POST", path: "/v1/subscriptions/s1/dead-letters/replay", body: `{"ids":["orders:1-0"]}`, status: 200},
		{name: "delete", method: "DELETE", path: "/v1/subscriptions/s1", status: 204},
		{name: "delete list", method: "DELETE", path: "/v1/subscriptions/l1", status: 204},
		{name: "delete pubsub", method: "DELETE", path: "/v1/subscriptions/p1", status: 204},
		{name: "create schedule", method: "PUT", path: "/v1/schedules/nightly", body: `{"cron":"0 9 * * *","timezone":"America/New_York","subject":"reports.daily","data":{"report":"sales"},"headers":{"X-Kind":"nightly"}}`, status: 201},
		{name: "schedule unchanged", method: "PUT", path: "/v1/schedules/nightly", body: `{"cron":"0 9 * * *","timezone":"America/New_York","subject":"reports.daily","data":{"report":"sales"},"headers":{"X-Kind":"nightly"}}`, status: 200},
		{name: "replace schedule", method: "PUT", path: "/v1/schedules/nightly", body: `{"cron":"@every 30s","subject":"reports.daily","data_base64":"AAE=","content_type":"application/x-thing"}`, status: 200},
		{name: "create paused schedule", method: "PUT", path: "/v1/schedules/hourly", body: `{"cron":"@hourly","subject":"reports","data":"tick","paused":true}`, status: 201},
		{name: "get schedule", method: "GET", path: "/v1/schedules/nightly", status: 200},
		{name: "list schedules", method: "GET", path: "/v1/schedules", status: 200},
		{name: "pause schedule", method: "POST", path: "/v1/schedules/nightly/pause", status: 200},
		{name: "pause schedule again", method: "POST", path: "/v1/schedules/nightly/pause", status: 200},
		{name: "resume schedule", method: "POST", path: "/v1/schedules/nightly/resume", status: 200},
		{name: "delete schedule", method: "DELETE", path: "/v1/schedules/nightly", status: 204},
		{name: "delete paused schedule", method: "DELETE", path: "/v1/schedules/hourly", status: 204},
	} {
		raw := c.do(t, srv, router)
		if c.name == "list" || c.name == "get" || c.name == "pause" {
			if bytes.Contains(raw, []byte("whsec_")) {
				t.Fatalf("%s reveals the secret: %s", c.name, raw)
			}
		}
	}
	// Nothing of s1 remains: no group, no retry or dead-letter key.
	keys, _ := rs.Do(t, "KEYS", "*s1*").AsStrSlice()
	fields, _ := rs.Do(t, "HKEYS", "bridge:subscriptions").AsStrSlice()
	groups, _ := rs.Do(t, "XINFO", "GROUPS", "orders").ToArray()
	if len(keys) != 0 || len(fields) != 1 || fields[0] != "_version" || len(groups) != 0 {
		t.Fatalf("after delete: keys %v, registry fields %v, %d groups", keys, fields, len(groups))
	}
}

// /readyz is 503 while the registry cannot be read (its key holds another type), and a batch
// whose every message failed because Redis is down is a 503 with Retry-After.
func TestUnreadyRegistryAndBatchOutage(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, router := loadDoc(t)
	srv := startServer(t, newAPI(t, rs))
	rs.Do(t, "XADD", "bridge:subscriptions", "*", "_payload", "x")
	call{name: "readyz wrong registry", method: "GET", path: "/readyz", status: 503, code: "not_ready"}.do(t, srv, router)
	rs.Do(t, "DEL", "bridge:subscriptions")
	call{name: "readyz", method: "GET", path: "/readyz", status: 200}.do(t, srv, router)

	rs.Kill(t)
	resp, err := srv.Client().Post(srv.URL+"/v1/subjects/orders/batch", "application/json",
		strings.NewReader(`{"messages":[{"data":1},{"data":2}]}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !bytes.Contains(raw, []byte("redis_unavailable")) {
		t.Fatalf("batch with Redis down: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), raw)
	}
}

// testServer is the API served as the binary serves it: Server on 127.0.0.1, so the
// native publish and the net/http adaptor are both under test.
type testServer struct {
	URL string
}

func (*testServer) Client() *http.Client { return http.DefaultClient }

func startServer(t *testing.T, h http.Handler) *testServer {
	t.Helper()
	return &testServer{URL: "http://" + serve(t, httpapi.NewServer(h, zap.NewNop()))}
}
