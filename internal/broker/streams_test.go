package broker

import (
	"context"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
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
