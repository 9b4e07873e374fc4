package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
)

// A delayed publish to a key of another type is refused at once; a scheduled message whose
// subject turned into another type by its due time is dropped once, not re-leased forever.
func TestScheduledWrongType(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	b := New(rs.Client(t))
	ctx := context.Background()
	rs.Do(t, "SET", "a-string", "x")
	res := b.PublishMany(ctx, "a-string", []core.Outgoing{{Body: []byte("x"), NotBefore: time.Now().Add(time.Hour)}}, time.Hour)
	if !errors.Is(res[0].Err, core.ErrWrongType) {
		t.Fatalf("delayed publish to a string: %+v", res[0])
	}
	if n, _ := rs.Do(t, "ZCARD", scheduledDueKey).AsInt64(); n != 0 {
		t.Fatalf("%d scheduled after a refused publish", n)
	}

	due := time.Now().Add(50 * time.Millisecond)
	res = b.PublishMany(ctx, "turns-string", []core.Outgoing{
		{Body: []byte("lost"), NotBefore: due},
	}, time.Hour)
	okRes := b.PublishMany(ctx, "stays-stream", []core.Outgoing{{Body: []byte("kept"), NotBefore: due}}, time.Hour)
	if res[0].Err != nil || okRes[0].Err != nil {
		t.Fatal(res[0].Err, okRes[0].Err)
	}
	rs.Do(t, "SET", "turns-string", "now a string")
	time.Sleep(60 * time.Millisecond)
	mv, err := b.MoveDueScheduled(ctx, time.Now(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if mv.Moved != 1 || len(mv.Dropped) != 1 || mv.Dropped[0].ID != res[0].ID || mv.Dropped[0].Subject != "turns-string" {
		t.Fatalf("move: %+v", mv)
	}
	if n, _ := rs.Do(t, "ZCARD", scheduledDueKey).AsInt64(); n != 0 {
		t.Fatalf("%d left scheduled: the dropped one would be re-leased forever", n)
	}
	if n, _ := rs.Do(t, "HLEN", scheduledDataKey).AsInt64(); n != 0 {
		t.Fatalf("%d records left", n)
	}
	if n, _ := rs.Do(t, "XLEN", "stays-stream").AsInt64(); n != 1 {
		t.Fatalf("the other message was not appended: XLEN %d", n)
	}
}
