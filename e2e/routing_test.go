package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// A filter pushes only what matches: headers and JSON bodies, messages that are not JSON
// and missing fields; what does not match is acked without a push and counted filtered
// (stats, metric, attempt log, message view). Invalid and too expensive filters are
// refused at PUT and write nothing.
func TestFilters(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	rc := newReceiver(t, nil)
	br.subscribe("big-orders", map[string]any{"subject": "routing.orders", "url": rc.URL,
		"filter": `headers["x-type"] == "order.created" && body.amount > 10.0`})
	type msg struct {
		body, ct, xtype string
		pushed          bool
	}
	msgs := []msg{
		{`{"amount": 42.0}`, "application/json", "order.created", true},
		{`{"amount": 5.0}`, "application/json", "order.created", false},
		{`{"amount": 99.5, "items": [1,2]}`, "application/json; charset=utf-8", "order.created", true},
		{`{"amount": 42.0}`, "application/json", "order.cancelled", false},
		{`{"amount": 42.0}`, "application/json", "", false},              // no such header: no match
		{`{"total": 42.0}`, "application/json", "order.created", false},  // no such field
		{`amount=42`, "text/plain", "order.created", false},              // not JSON: body is null
		{`{"amount": "42"}`, "application/json", "order.created", false}, // wrong type
	}
	want := map[string]bool{}
	var filteredID string
	for _, m := range msgs {
		hdr := []string{"Content-Type", m.ct}
		if m.xtype != "" {
			hdr = append(hdr, "Bridge-Forward-X-Type", m.xtype)
		}
		code, id := br.publish("routing.orders", []byte(m.body), hdr...)
		if code != http.StatusAccepted {
			t.Fatalf("publish: %d", code)
		}
		want[id] = m.pushed
		if !m.pushed && filteredID == "" {
			filteredID = id
		}
	}
	var s struct {
		Stats struct {
			Delivered int64 `json:"delivered"`
			Filtered  int64 `json:"filtered"`
			Pending   int64 `json:"pending"`
			Lag       int64 `json:"lag"`
		} `json:"stats"`
	}
	redistest.Eventually(t, 10*time.Second, func() bool {
		br.do(http.MethodGet, "/v1/subscriptions/big-orders", nil, &s)
		return s.Stats.Delivered == 2 && s.Stats.Filtered == 6 && s.Stats.Pending == 0 && s.Stats.Lag == 0
	}, "2 pushed and 6 filtered (stats %+v)", s.Stats)
	for id, pushed := range want {
		if got := len(rc.byID(id)) > 0; got != pushed {
			t.Errorf("%s pushed %v, want %v", id, got, pushed)
		}
	}
	if v := metricValue(t, br, `bridge_filtered_total{subscription="big-orders"}`); v != 6 {
		t.Fatalf("bridge_filtered_total %v", v)
	}
	_, raw := apiGet(t, br, "", "/v1/messages/"+filteredID)
	var view messageJSON
	_ = json.Unmarshal(raw, &view)
	if st, att := view.state("big-orders"); st != "filtered" || len(att) != 1 || att[0].Outcome != "filtered" {
		t.Fatalf("message view of a filtered message: %s", raw)
	}

	// Refused at PUT, with the position, writing nothing.
	before := rs.DBSize(t)
	for _, c := range []struct{ filter, want string }{
		{`headers["x-type"] ==`, "1:"},
		{`body.amount > "ten" + 1`, "no matching overload"},
		{`subject`, "must be a condition"},
		{`body.items.all(a, body.items.all(b, body.items.all(c, a == b)))`, "too expensive"},
	} {
		var p struct {
			Code   string `json:"code"`
			Detail string `json:"detail"`
		}
		code := br.do(http.MethodPut, "/v1/subscriptions/bad-filter", map[string]any{"subject": "routing.orders", "url": rc.URL, "filter": c.filter}, &p)
		if code != http.StatusBadRequest || p.Code != "invalid_filter" || !strings.Contains(p.Detail, c.want) {
			t.Errorf("filter %q: %d %+v, want 400 invalid_filter mentioning %q", c.filter, code, p, c.want)
		}
	}
	if after := rs.DBSize(t); after != before {
		t.Fatalf("refused filters wrote %d keys", after-before)
	}
}

// ceReceiver parses every push with the official CloudEvents SDK and keeps the events.
type ceReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	events []cloudevents.Event
	ctypes []string
	errs   []string
}

func newCEReceiver(t *testing.T) *ceReceiver {
	rc := &ceReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		ev, err := binding.ToEvent(context.Background(), cehttp.NewMessageFromHttpRequest(r))
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.ctypes = append(rc.ctypes, r.Header.Get("Content-Type"))
		if err != nil {
			rc.errs = append(rc.errs, err.Error())
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if err := ev.Validate(); err != nil {
			rc.errs = append(rc.errs, err.Error())
		}
		rc.events = append(rc.events, *ev)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *ceReceiver) all() ([]cloudevents.Event, []string, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]cloudevents.Event(nil), rc.events...), append([]string(nil), rc.ctypes...), append([]string(nil), rc.errs...)
}

// CloudEvents in both content modes, validated by the official SDK: plain messages become
// events of the bridge (id = message id, source /bridge/<subject>, type from ce-type or
// bridge.message); a structured event published as such keeps its attributes.
func TestCloudEventsFormats(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	br := startBridge(t, redisURL(rs))
	binary, structured := newCEReceiver(t), newCEReceiver(t)
	br.subscribe("ce-binary", map[string]any{"subject": "routing.ce", "url": binary.URL, "format": "cloudevents"})
	br.subscribe("ce-structured", map[string]any{"subject": "routing.ce", "url": structured.URL, "format": "cloudevents-structured"})

	_, plainID := br.publish("routing.ce", []byte(`{"n":1}`), "Content-Type", "application/json", "Ce-Type", "com.example.order")
	_, textID := br.publish("routing.ce", []byte("plain text"), "Content-Type", "text/plain")
	published := `{"specversion":"1.0","id":"evt-42","source":"urn:shop","type":"com.example.paid","time":"2026-01-02T03:04:05Z",` +
		`"subject":"order/42","datacontenttype":"application/json","data":{"paid":true},"tenant":"acme"}`
	_, eventID := br.publish("routing.ce", []byte(published), "Content-Type", "application/cloudevents+json")

	for _, rc := range []*ceReceiver{binary, structured} {
		redistest.Eventually(t, 10*time.Second, func() bool { evs, _, _ := rc.all(); return len(evs) == 3 }, "three events")
		evs, cts, errs := rc.all()
		if len(errs) > 0 {
			t.Fatalf("the SDK refused pushes: %v", errs)
		}
		byID := map[string]cloudevents.Event{}
		for _, ev := range evs {
			byID[ev.ID()] = ev
		}
		plain, ok := byID[plainID]
		if !ok || plain.Source() != "/bridge/routing.ce" || plain.Type() != "com.example.order" || plain.Subject() != "routing.ce" ||
			plain.DataContentType() != "application/json" || string(plain.Data()) != `{"n":1}` || plain.Time().IsZero() {
			t.Fatalf("plain message as an event: %v", plain)
		}
		text := byID[textID]
		if text.Type() != "bridge.message" || string(text.Data()) != "plain text" || text.DataContentType() != "text/plain" {
			t.Fatalf("text message as an event: %v", text)
		}
		ev, ok := byID["evt-42"]
		if !ok || ev.Source() != "urn:shop" || ev.Type() != "com.example.paid" || ev.Subject() != "order/42" ||
			!ev.Time().Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) || fmt.Sprint(ev.Extensions()["tenant"]) != "acme" {
			t.Fatalf("published structured event lost attributes: %v", ev)
		}
		var data map[string]bool
		if err := json.Unmarshal(ev.Data(), &data); err != nil || !data["paid"] {
			t.Fatalf("structured event data %q: %v", ev.Data(), err)
		}
		structuredMode := rc == structured
		for _, ct := range cts {
			if strings.HasPrefix(ct, "application/cloudevents+json") != structuredMode {
				t.Fatalf("content types %v (structured mode %v)", cts, structuredMode)
			}
		}
	}
	_ = eventID
}
