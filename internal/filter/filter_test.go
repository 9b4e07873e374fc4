package filter

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	order := Message{Subject: "orders.eu", PartitionKey: "cust-7", ContentType: "application/json",
		Headers: map[string]string{"x-type": "order.created", "content-type": "application/json"},
		Body:    []byte(`{"amount": 42.5, "items": [{"sku": "a"}, {"sku": "b"}], "customer": {"tier": "gold"}, "note": null}`)}
	text := Message{Subject: "logs", ContentType: "text/plain", Headers: map[string]string{}, Body: []byte("hello")}
	badJSON := Message{Subject: "orders.eu", ContentType: "application/json", Body: []byte(`{"amount":`)}
	cloud := Message{Subject: "ev", ContentType: "application/cloudevents+json; charset=utf-8", Body: []byte(`{"type":"t","data":{"n":3}}`)}
	cases := []struct {
		expr string
		m    Message
		want bool
		err  bool
	}{
		{`headers["x-type"] == "order.created" && body.amount > 10.0`, order, true, false},
		{`body.amount > 100.0`, order, false, false},
		{`subject.startsWith("orders.")`, order, true, false},
		{`partition_key == "cust-7"`, order, true, false},
		{`body.customer.tier in ["gold", "platinum"]`, order, true, false},
		{`body.items.exists(i, i.sku == "b")`, order, true, false},
		{`size(body.items) == 2`, order, true, false},
		{`body.note == null`, order, true, false},
		{`has(body.discount)`, order, false, false},
		{`has(body.customer.tier)`, order, true, false},
		{`"x-type" in headers`, order, true, false},
		{`headers["x-missing"] == "a"`, order, false, true}, // no such key: no match
		{`body.missing > 1`, order, false, true},
		{`body == null`, text, true, false}, // not JSON: null
		{`body == null`, badJSON, true, false},
		{`has(body.amount)`, text, false, false}, // nothing to select from: false
		{`body.data.n == 3`, cloud, true, false},
		{`subject == "logs" || body.x == 1`, text, true, false},
		{`body.amount == 42.5 && headers["content-type"].contains("json")`, order, true, false},
		{`true`, text, true, false},
	}
	for _, c := range cases {
		p, err := Compile(c.expr)
		if err != nil {
			t.Fatalf("%s: %v", c.expr, err)
		}
		got, err := p.Match(c.m)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%s on %s: %v, %v; want %v (error %v)", c.expr, c.m.Body, got, err, c.want, c.err)
		}
	}
}

func TestCompileRefuses(t *testing.T) {
	cases := []struct{ expr, want string }{
		{``, "empty"},
		{`headers["x"] ==`, "1:"},
		{`subject + 1`, "found no matching overload"},
		{`"a string"`, "must be a condition"},
		{`nosuchvar == 1`, "undeclared reference"},
		{`body.items.all(a, body.items.all(b, body.items.all(c, a == b && b == c)))`, "too expensive"},
		{strings.Repeat("subject == \"x\" || ", 300) + "true", "bytes long"},
	}
	for _, c := range cases {
		_, err := Compile(c.expr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.60s: %v, want an error containing %q", c.expr, err, c.want)
		}
	}
}

// A filter that passes the estimate still stops at the runtime limit.
func TestRuntimeCostLimit(t *testing.T) {
	p, err := Compile(`body.items.exists(i, i.sku == "zzz")`)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString(`{"items":[`)
	for i := range 200000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"sku":"a"}`)
	}
	b.WriteString("]}")
	ok, err := p.Match(Message{ContentType: "application/json", Body: []byte(b.String())})
	if ok || err == nil || !strings.Contains(err.Error(), "cost") {
		t.Fatalf("%v %v, want a cost limit error", ok, err)
	}
}

func BenchmarkMatch(b *testing.B) {
	p, _ := Compile(`headers["x-type"] == "order.created" && body.amount > 10.0`)
	m := Message{Subject: "orders", ContentType: "application/json",
		Headers: map[string]string{"x-type": "order.created"}, Body: []byte(`{"amount": 42.5, "id": "abc", "items": [1,2,3]}`)}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := p.Match(m); !ok {
			b.Fatal("no match")
		}
	}
}

func BenchmarkMatchHeadersOnly(b *testing.B) {
	p, _ := Compile(`headers["x-type"] == "order.created"`)
	m := Message{Subject: "orders", ContentType: "text/plain", Headers: map[string]string{"x-type": "order.created"}, Body: []byte("x")}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := p.Match(m); !ok {
			b.Fatal("no match")
		}
	}
}
