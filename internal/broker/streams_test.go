package broker

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/redis/rueidis"
)

func TestPruneConsumers(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	b := New(rs.Client(t))
	s := &core.Subscription{Name: "p", Subject: "prune"}
	ctx := context.Background()
	if _, err := b.EnsureGroup(ctx, s.Subject, s.Name, "beginning"); err != nil {
		t.Fatal(err)
	}
	rs.Do(t, "XADD", "prune", "*", "_payload", "x")
	rs.Do(t, "XGROUP", "CREATECONSUMER", "prune", "bridge:p", "idle-empty")
	rs.Do(t, "XREADGROUP", "GROUP", "bridge:p", "idle-holding", "COUNT", "1", "STREAMS", "prune", ">")
	time.Sleep(20 * time.Millisecond)
	n, err := b.PruneConsumers(ctx, s, 10*time.Millisecond)
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want the empty consumer only", n, err)
	}
	rows, _ := rs.Do(t, "XINFO", "CONSUMERS", "prune", "bridge:p").ToArray()
	if len(rows) != 1 {
		t.Fatalf("%d consumers left, want the one holding an entry", len(rows))
	}
	if n, _ := b.PruneConsumers(ctx, &core.Subscription{Name: "none", Subject: "missing"}, 0); n != 0 {
		t.Fatal("pruned a missing group")
	}
}

// Read walks the XREADGROUP reply itself instead of going through rueidis's maps. Over
// RESP3 (the default), RESP2 (AlwaysRESP2) and the embedded server, each entry must come
// out as DecodeEntry makes it from XRANGE: payload, headers, a delayed message's id, a
// foreign entry as JSON, and a field given twice counting as its last value.
func TestReadDecodesEveryProtocol(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	resp2, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rs.Addr}, DisableCache: true, ForceSingleClient: true, AlwaysRESP2: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(resp2.Close)
	embedded, err := Connect(ConnOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(embedded.Close)
	entries := [][]string{
		{"_payload", "hello", "h:Content-Type", "text/plain", "h:X-Trace", "t1"},
		{"_payload", "late", "_id", "orders~delayed-1"},
		{"order", "42", "state", "paid"},
		{"_payload", "first", "_payload", "second", "h:X-A", "1", "h:x-a", "2"},
		{"_payload", "", "h:bad name", "v"},
	}
	for name, c := range map[string]rueidis.Client{"resp3": rs.Client(t), "resp2": resp2, "embedded": embedded.Client} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			b := New(c)
			s := &core.Subscription{Name: "r-" + name, Subject: "read." + name}
			if _, err := b.EnsureGroup(ctx, s.Subject, s.Name, "beginning"); err != nil {
				t.Fatal(err)
			}
			for _, fields := range entries {
				args := append([]string{s.Subject, "*"}, fields...)
				if err := c.Do(ctx, c.B().Arbitrary("XADD").Keys(s.Subject).Args(args[1:]...).Build()).Error(); err != nil {
					t.Fatal(err)
				}
			}
			xr, err := c.Do(ctx, c.B().Xrange().Key(s.Subject).Start("-").End("+").Build()).AsXRange()
			if err != nil || len(xr) != len(entries) {
				t.Fatalf("xrange: %d entries, %v", len(xr), err)
			}
			got, err := b.Read(ctx, s, "c1", 100, 0)
			if err != nil || len(got) != len(entries) {
				t.Fatalf("read %d messages, %v; want %d", len(got), err, len(entries))
			}
			for i, m := range got {
				want := DecodeEntry(s.Subject, xr[i])
				want.Deliveries = 1
				if i != 3 && !reflect.DeepEqual(m, want) { // entry 3's two x-a headers: the map's order is random
					t.Errorf("entry %d: Read gave %+v, DecodeEntry %+v", i, m, want)
				}
			}
			if string(got[0].Body) != "hello" || got[0].Headers["content-type"] != "text/plain" || got[0].Headers["x-trace"] != "t1" {
				t.Errorf("payload entry: %+v", got[0])
			}
			if got[1].ID != "orders~delayed-1" {
				t.Errorf("delayed entry id %q", got[1].ID)
			}
			if string(got[2].Body) != `{"order":"42","state":"paid"}` || got[2].Headers["content-type"] != "application/json" {
				t.Errorf("foreign entry: body %s headers %v", got[2].Body, got[2].Headers)
			}
			if string(got[3].Body) != "second" || got[3].Headers["x-a"] != "2" {
				t.Errorf("repeated fields: body %q, x-a %q; want the last of each", got[3].Body, got[3].Headers["x-a"])
			}
			if len(got[4].Body) != 0 || len(got[4].Headers) != 0 {
				t.Errorf("invalid header kept: %+v", got[4])
			}
			if more, err := b.Read(ctx, s, "c1", 100, 0); err != nil || len(more) != 0 {
				t.Fatalf("second read: %d, %v", len(more), err)
			}
			if name != "embedded" {
				if more, err := b.Read(ctx, s, "c1", 100, 20*time.Millisecond); err != nil || len(more) != 0 {
					t.Fatalf("blocking read of nothing: %d, %v", len(more), err)
				}
			}
		})
	}
}

// BenchmarkRead reads batches of 100 entries as a busy subscription does: the cost of
// turning an XREADGROUP reply into messages (with the Redis round trip).
func BenchmarkRead(b *testing.B) {
	rs := redistest.Start(b, redistest.Options{})
	c := rs.Client(b)
	br := New(c)
	s := &core.Subscription{Name: "bench", Subject: "bench.read"}
	ctx := context.Background()
	body := strings.Repeat("x", 256)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		rs.Do(b, "DEL", s.Subject)
		if _, err := br.EnsureGroup(ctx, s.Subject, s.Name, "beginning"); err != nil {
			b.Fatal(err)
		}
		cmds := make(rueidis.Commands, 100)
		for i := range cmds {
			cmds[i] = c.B().Xadd().Key(s.Subject).Id("*").FieldValue().FieldValue("_payload", body).FieldValue("h:content-type", "text/plain").Build()
		}
		for _, r := range c.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		msgs, err := br.Read(ctx, s, "c", 100, 0)
		if err != nil || len(msgs) != 100 {
			b.Fatalf("%d messages, %v", len(msgs), err)
		}
	}
}
