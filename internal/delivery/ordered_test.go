package delivery

import (
	"testing"

	"github.com/bridge-dev/bridge/internal/core"
)

func msg(entry, key string, origin core.Origin) core.Message {
	return core.Message{ID: "s:" + entry, EntryID: entry, Origin: origin, Headers: map[string]string{core.HeaderPartitionKey: key}}
}

func ids(ms []core.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.EntryID
	}
	return out
}

func TestOrderGate(t *testing.T) {
	g := newOrderGate()
	// a1 goes, a2 and a3 wait behind it; b1 and an unkeyed message go.
	got := g.admit([]core.Message{msg("1", "a", core.FromStream), msg("2", "a", core.FromStream), msg("3", "b", core.FromStream),
		msg("4", "a", core.FromStream), msg("5", "", core.FromStream)})
	if want := []string{"1", "3", "5"}; len(got) != 3 || ids(got)[0] != want[0] || ids(got)[1] != want[1] || ids(got)[2] != want[2] {
		t.Fatalf("admitted %v", ids(got))
	}
	// A reclaim of an entry already held is dropped.
	if got := g.admit([]core.Message{msg("2", "a", core.FromStream)}); len(got) != 0 {
		t.Fatalf("held entry admitted twice: %v", ids(got))
	}
	// a1 is retried: its key stays blocked, nothing follows.
	m1 := msg("1", "a", core.FromStream)
	if _, ok := g.done(&m1, requeued); ok {
		t.Fatal("a message followed a requeued head")
	}
	// The retry comes back as the head and goes; once it settles, a2 then a4 follow in order.
	r1 := msg("", "a", core.FromRetry)
	if got := g.admit([]core.Message{r1}); len(got) != 1 {
		t.Fatal("the head's retry was held back")
	}
	next, ok := g.done(&r1, settled)
	if !ok || next.EntryID != "2" {
		t.Fatalf("after the head settled: %v %v", next.EntryID, ok)
	}
	// a2 is left unsettled (a cut push): its key waits for it, and it goes first when reclaimed.
	if _, ok := g.done(&next, unsettled); ok {
		t.Fatal("a message followed an unsettled head")
	}
	if got := g.admit([]core.Message{msg("2", "a", core.FromStream)}); len(got) != 1 {
		t.Fatal("the reclaimed head was held back")
	}
	m2 := msg("2", "a", core.FromStream)
	if next, ok := g.done(&m2, settled); !ok || next.EntryID != "4" {
		t.Fatalf("after a2: %v %v", next.EntryID, ok)
	}
	m4 := msg("4", "a", core.FromStream)
	if _, ok := g.done(&m4, settled); ok || g.backlog() != 0 {
		t.Fatal("queue not drained")
	}
	// The key is free again.
	if got := g.admit([]core.Message{msg("6", "a", core.FromStream)}); len(got) != 1 {
		t.Fatal("a free key held a message")
	}
}
