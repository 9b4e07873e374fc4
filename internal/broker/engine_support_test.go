package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

// NewEntries answers, for many streams in one XREAD, which got an entry after an id; a
// missing stream or one of another type is no error.
func TestNewEntries(t *testing.T) {
	e := newScriptEnv(t)
	e.must(t, "XADD", "a", "1-0", "_payload", "x")
	e.must(t, "XADD", "a", "2-0", "_payload", "x")
	e.must(t, "XADD", "b", "5-0", "_payload", "x")
	e.must(t, "SET", "c", "a string")
	subjects := map[string]string{"a": "1-0", "b": "5-0", "missing": "0-0"}
	for i := range 1500 { // more than one XREAD's worth of keys
		subjects[fmt.Sprintf("empty.%d", i)] = "0-0"
	}
	got, err := e.b.NewEntries(e.ctx, subjects)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "map[a:2-0]" {
		t.Fatalf("new entries %v, want a's 2-0 only", got)
	}
	last, err := e.b.LastEntries(e.ctx, []string{"a", "b", "missing", "c"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(last) != "map[a:2-0 b:5-0 c:0-0 missing:0-0]" {
		t.Fatalf("last entries %v", last)
	}
}

// CheckIdle finds due retries, entries pending past the visibility timeout, a missing
// group and a stale list consumer, and nothing where there is nothing.
func TestCheckIdle(t *testing.T) {
	e := newScriptEnv(t)
	now := time.Now()
	stream := &core.Subscription{Name: "s", Subject: "orders", Transport: core.TransportStream, VisibilityTimeout: core.Duration(time.Second)}
	quiet := &core.Subscription{Name: "q", Subject: "orders", Transport: core.TransportStream, VisibilityTimeout: core.Duration(time.Second)}
	noGroup := &core.Subscription{Name: "n", Subject: "orders", Transport: core.TransportStream, VisibilityTimeout: core.Duration(time.Second)}
	list := &core.Subscription{Name: "l", Subject: "jobs", Transport: core.TransportList, VisibilityTimeout: core.Duration(time.Second)}
	e.must(t, "XGROUP", "CREATE", "orders", "bridge:s", "0", "MKSTREAM")
	e.must(t, "XGROUP", "CREATE", "orders", "bridge:q", "$")
	e.must(t, "XADD", "orders", "*", "_payload", "x")
	e.must(t, "XREADGROUP", "GROUP", "bridge:s", "dead", "COUNT", "1", "STREAMS", "orders", ">")
	e.must(t, "ZADD", retryKey("orders", "s"), fmt.Sprint(now.Add(-time.Second).UnixMilli()), "orders:1-0")
	e.must(t, "ZADD", retryKey("orders", "q"), fmt.Sprint(now.Add(time.Hour).UnixMilli()), "orders:2-0")
	e.must(t, "ZADD", consumersKey("jobs", "l"), fmt.Sprint(now.Add(-time.Minute).UnixMilli()), "gone")
	time.Sleep(1100 * time.Millisecond) // the pending entry passes the visibility timeout
	reqs := []core.IdleCheckRequest{{Sub: stream, Retries: true}, {Sub: quiet, Retries: true}, {Sub: noGroup, Retries: true}, {Sub: list}}
	got := e.b.CheckIdle(e.ctx, reqs, time.Now())
	type brief struct{ due, later, stale, missing bool }
	var briefs []brief
	for _, c := range got {
		if c.Err != nil {
			t.Fatal(c.Err)
		}
		briefs = append(briefs, brief{c.RetryDue, !c.RetryDue && !c.NextRetry.IsZero(), c.Stale, c.GroupMissing})
	}
	// s: a retry due and a stale entry; q: a retry due in an hour (NextRetry says when);
	// n: no group; l: a stale list consumer.
	want := []brief{{due: true, stale: true}, {later: true}, {missing: true}, {stale: true}}
	if fmt.Sprint(briefs) != fmt.Sprint(want) {
		t.Fatalf("checks %+v, want %+v", briefs, want)
	}
	if d := time.Until(got[1].NextRetry); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("next retry in %s, want about an hour", d)
	}
}

// Settle acknowledges stream entries per group, retried messages per retry set and list
// messages per processing list, in one call.
func TestSettleBatch(t *testing.T) {
	e := newScriptEnv(t)
	a := &core.Subscription{Name: "a", Subject: "orders", Transport: core.TransportStream}
	b := &core.Subscription{Name: "b", Subject: "orders", Transport: core.TransportStream}
	l := &core.Subscription{Name: "l", Subject: "jobs", Transport: core.TransportList}
	for _, g := range []string{"bridge:a", "bridge:b"} {
		e.must(t, "XGROUP", "CREATE", "orders", g, "0", "MKSTREAM")
	}
	for i := 1; i <= 3; i++ {
		e.must(t, "XADD", "orders", fmt.Sprintf("%d-0", i), "_payload", "x")
	}
	for _, g := range []string{"bridge:a", "bridge:b"} {
		e.must(t, "XREADGROUP", "GROUP", g, "c", "COUNT", "3", "STREAMS", "orders", ">")
	}
	e.must(t, "ZADD", retryKey("orders", "a"), "1", "orders:9-0")
	e.must(t, "HSET", retryDataKey("orders", "a"), "orders:9-0", "{}")
	e.must(t, "HSET", retryCountKey("orders", "a"), "orders:9-0", "2")
	proc := processingKey("jobs", "l", "c")
	e.must(t, "LPUSH", proc, "raw1", "raw2")
	e.must(t, "HSET", listCountKey("jobs", "l"), "id1", "1", "id2", "1")
	err := e.b.Settle(e.ctx, []core.Settlement{
		{Sub: a, Origin: core.FromStream, Handle: "1-0"}, {Sub: a, Origin: core.FromStream, Handle: "2-0"},
		{Sub: b, Origin: core.FromStream, Handle: "3-0"},
		{Sub: a, Origin: core.FromRetry, Handle: "orders:9-0"},
		{Sub: l, Origin: core.FromList, Handle: "raw1", ID: "id1", Queue: proc},
		{Sub: &core.Subscription{Name: "deleted", Subject: "orders"}, Origin: core.FromStream, Handle: "1-0"}, // no group: ignored
	})
	if err != nil {
		t.Fatal(err)
	}
	for g, want := range map[string]int64{"bridge:a": 1, "bridge:b": 2} {
		summary, _ := e.must(t, "XPENDING", "orders", g).ToArray()
		if n, _ := summary[0].AsInt64(); n != want {
			t.Fatalf("%s pending %d, want %d", g, n, want)
		}
	}
	if n := e.int(t, "ZCARD", retryKey("orders", "a")); n != 0 {
		t.Fatalf("retry set %d", n)
	}
	if n := e.int(t, "LLEN", proc); n != 1 {
		t.Fatalf("processing list %d, want 1", n)
	}
	if n := e.int(t, "HLEN", listCountKey("jobs", "l")); n != 1 {
		t.Fatalf("list counts %d, want 1", n)
	}
}
