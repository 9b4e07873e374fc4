package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
)

// publishCall is one PublishMany call to the subject "orders" (unless subject is set).
type publishCall struct {
	subject string
	msgs    []core.Outgoing
	window  time.Duration
	sleep   time.Duration // before the call
	// dup says, per message, whether it must come back as a duplicate; sameAs gives, per
	// message, the index (in the flattened results of every call) whose id it must carry,
	// -1 for a new id.
	dup    []bool
	sameAs []int
}

func TestPublishScript(t *testing.T) {
	msg := func(body, key string) core.Outgoing {
		return core.Outgoing{Body: []byte(body), Headers: map[string]string{"content-type": "text/plain"}, IdempotencyKey: key}
	}
	cases := []struct {
		name    string
		calls   []publishCall
		entries map[string]int // XLEN per subject after the calls
		idem    []string       // idempotency keys of "orders" that must exist after
	}{
		{
			name:    "no key: every message is appended, no idempotency key written",
			calls:   []publishCall{{msgs: []core.Outgoing{msg("a", ""), msg("a", "")}, dup: []bool{false, false}, sameAs: []int{-1, -1}}},
			entries: map[string]int{"orders": 2},
		},
		{
			name: "a repeat of a key returns the first id as a duplicate and writes nothing",
			calls: []publishCall{
				{msgs: []core.Outgoing{msg("a", "k1")}, dup: []bool{false}, sameAs: []int{-1}},
				{msgs: []core.Outgoing{msg("other body", "k1")}, dup: []bool{true}, sameAs: []int{0}},
			},
			entries: map[string]int{"orders": 1},
			idem:    []string{"k1"},
		},
		{
			name: "a repeat within one batch",
			calls: []publishCall{{msgs: []core.Outgoing{msg("a", "k1"), msg("b", "k2"), msg("c", "k1")},
				dup: []bool{false, false, true}, sameAs: []int{-1, -1, 0}}},
			entries: map[string]int{"orders": 2},
			idem:    []string{"k1", "k2"},
		},
		{
			name: "keys are per subject",
			calls: []publishCall{
				{msgs: []core.Outgoing{msg("a", "k1")}, dup: []bool{false}, sameAs: []int{-1}},
				{subject: "invoices", msgs: []core.Outgoing{msg("a", "k1")}, dup: []bool{false}, sameAs: []int{-1}},
			},
			entries: map[string]int{"orders": 1, "invoices": 1},
			idem:    []string{"k1"},
		},
		{
			name: "after the window the key is forgotten",
			calls: []publishCall{
				{msgs: []core.Outgoing{msg("a", "k1")}, window: 50 * time.Millisecond, dup: []bool{false}, sameAs: []int{-1}},
				{msgs: []core.Outgoing{msg("a", "k1")}, sleep: 80 * time.Millisecond, dup: []bool{false}, sameAs: []int{-1}},
			},
			entries: map[string]int{"orders": 2},
			idem:    []string{"k1"},
		},
	}
	e := newScriptEnv(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			var all []core.Published
			for _, cl := range c.calls {
				time.Sleep(cl.sleep)
				subject, window := cl.subject, cl.window
				if subject == "" {
					subject = "orders"
				}
				if window == 0 {
					window = time.Hour
				}
				res := e.b.PublishMany(e.ctx, subject, cl.msgs, window)
				if len(res) != len(cl.msgs) {
					t.Fatalf("%d results for %d messages", len(res), len(cl.msgs))
				}
				for i, r := range res {
					if r.Err != nil {
						t.Fatalf("message %d: %v", i, r.Err)
					}
					if r.Duplicate != cl.dup[i] {
						t.Fatalf("message %d: duplicate %v, want %v", i, r.Duplicate, cl.dup[i])
					}
					if !strings.HasPrefix(r.ID, subject+":") {
						t.Fatalf("message %d: id %q not of %s", i, r.ID, subject)
					}
					if j := cl.sameAs[i]; j >= 0 && r.ID != all[j].ID {
						t.Fatalf("message %d: id %q, want %q", i, r.ID, all[j].ID)
					}
					if cl.sameAs[i] < 0 {
						for _, p := range all {
							if p.ID == r.ID {
								t.Fatalf("message %d: id %q given twice", i, r.ID)
							}
						}
					}
					all = append(all, r)
				}
				// Every new id names an entry in the stream layout.
				for i, r := range res {
					if r.Duplicate {
						continue
					}
					eid := strings.TrimPrefix(r.ID, subject+":")
					var found bool
					for _, en := range e.xrange(t, subject) {
						if en.ID == eid {
							found = true
							body, _ := en.get(payloadField)
							ct, _ := en.get("h:content-type")
							if body != string(cl.msgs[i].Body) || ct != "text/plain" || len(en.Fields) != 4 {
								t.Fatalf("entry %s: %q", eid, en.Fields)
							}
						}
					}
					if !found {
						t.Fatalf("no entry %s for id %s", eid, r.ID)
					}
				}
			}
			for subject, n := range c.entries {
				if got := e.int(t, "XLEN", subject); got != int64(n) {
					t.Fatalf("XLEN %s = %d, want %d", subject, got, n)
				}
			}
			keys := e.strs(t, "KEYS", "bridge:{orders}:idem:*")
			if len(keys) != len(c.idem) {
				t.Fatalf("idempotency keys %v, want %v", keys, c.idem)
			}
			for _, k := range c.idem {
				pttl := e.int(t, "PTTL", idemKey("orders", k))
				if pttl <= 0 || pttl > time.Hour.Milliseconds() {
					t.Fatalf("PTTL %s = %d, want within the window", k, pttl)
				}
			}
		})
	}
	t.Run("concurrent repeats of one key write exactly one entry", func(t *testing.T) {
		e.reset(t)
		const n = 20
		res := make([]core.Published, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				res[i] = e.b.PublishMany(e.ctx, "orders", []core.Outgoing{msg(fmt.Sprint(i), "same")}, time.Hour)[0]
			}()
		}
		close(start)
		wg.Wait()
		firsts := 0
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("publish %d: %v", i, r.Err)
			}
			if r.ID != res[0].ID {
				t.Fatalf("ids differ: %q and %q", r.ID, res[0].ID)
			}
			if !r.Duplicate {
				firsts++
			}
		}
		if firsts != 1 {
			t.Fatalf("%d publishes answered as the first, want 1", firsts)
		}
		if got := e.int(t, "XLEN", "orders"); got != 1 {
			t.Fatalf("XLEN %d, want 1", got)
		}
	})
	t.Run("a refused write records no key: the repeat is not a false duplicate", func(t *testing.T) {
		e.reset(t)
		e.must(t, "SET", "orders", "a string")
		r := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{msg("a", "k1")}, time.Hour)[0]
		if !errors.Is(r.Err, core.ErrWrongType) {
			t.Fatalf("publish to a string: %+v, want core.ErrWrongType", r)
		}
		if e.exists(t, idemKey("orders", "k1")) {
			t.Fatal("the idempotency key was recorded for a message that was not written")
		}
		e.must(t, "DEL", "orders")
		if r := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{msg("a", "k1")}, time.Hour)[0]; r.Err != nil || r.Duplicate {
			t.Fatalf("publish after the key was fixed: %+v", r)
		}
	})
}

// scheduledEntry returns the stream entries of subject carrying the scheduled id.
func (e *scriptEnv) scheduledEntries(t *testing.T, subject, id string) []rawEntry {
	t.Helper()
	var out []rawEntry
	for _, en := range e.xrange(t, subject) {
		if v, _ := en.get(idField); v == id {
			out = append(out, en)
		}
	}
	return out
}

func TestScheduleScripts(t *testing.T) {
	e := newScriptEnv(t)
	t.Run("scheduled, not yet due, then moved once", func(t *testing.T) {
		e.reset(t)
		due := time.Now().Add(time.Hour).Truncate(time.Millisecond)
		res := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{{Body: []byte("later"),
			Headers: map[string]string{"content-type": "text/plain"}, NotBefore: due}}, time.Hour)
		if res[0].Err != nil || res[0].Duplicate {
			t.Fatal(res[0])
		}
		id := res[0].ID
		if want := fmt.Sprintf("orders:s%d-", due.UnixMilli()); !strings.HasPrefix(id, want) {
			t.Fatalf("id %q, want prefix %q", id, want)
		}
		if got := e.zset(t, scheduledDueKey); len(got) != 1 || got[id] != due.UnixMilli() {
			t.Fatalf("due set %v", got)
		}
		raw, _ := e.str(t, "HGET", scheduledDataKey, id)
		var rec scheduledRecord
		if err := json.Unmarshal([]byte(raw), &rec); err != nil || rec.Subject != "orders" || string(rec.Body) != "later" || rec.Headers["content-type"] != "text/plain" {
			t.Fatalf("record %q: %+v %v", raw, rec, err)
		}
		if e.exists(t, "orders") {
			t.Fatal("the stream was written before the due time")
		}
		mv, err := e.b.MoveDueScheduled(e.ctx, due.Add(-time.Millisecond), 10)
		if err != nil || mv.Moved != 0 || !mv.Next.Equal(due) {
			t.Fatalf("before due: %+v %v; want nothing moved, next %v", mv, err, due)
		}
		mv, err = e.b.MoveDueScheduled(e.ctx, due, 10)
		if err != nil || mv.Moved != 1 || len(mv.Dropped) != 0 {
			t.Fatalf("at due: %+v %v", mv, err)
		}
		entries := e.scheduledEntries(t, "orders", id)
		if len(entries) != 1 {
			t.Fatalf("%d entries with the scheduled id, want 1", len(entries))
		}
		if body, _ := entries[0].get(payloadField); body != "later" {
			t.Fatalf("entry %q", entries[0].Fields)
		}
		if ct, _ := entries[0].get("h:content-type"); ct != "text/plain" {
			t.Fatalf("entry %q", entries[0].Fields)
		}
		xr, err := e.c.Do(e.ctx, e.c.B().Xrange().Key("orders").Start("-").End("+").Build()).AsXRange()
		if err != nil || len(xr) != 1 {
			t.Fatal(xr, err)
		}
		if m := DecodeEntry("orders", xr[0]); m.ID != id {
			t.Fatalf("decoded id %q, want the scheduled %q", m.ID, id)
		}
		if e.exists(t, scheduledDueKey) || e.exists(t, scheduledDataKey) {
			t.Fatal("the schedule was not removed after the append")
		}
		if mv, err := e.b.MoveDueScheduled(e.ctx, due.Add(time.Hour), 10); err != nil || mv.Moved != 0 || !mv.Next.IsZero() {
			t.Fatalf("a later pass: %+v %v", mv, err)
		}
	})
	t.Run("a time already past publishes at once", func(t *testing.T) {
		e.reset(t)
		res := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{{Body: []byte("now"), NotBefore: time.Now().Add(-time.Second)}}, time.Hour)
		if res[0].Err != nil || strings.Contains(res[0].ID, ":s") || e.int(t, "XLEN", "orders") != 1 || e.exists(t, scheduledDueKey) {
			t.Fatalf("%+v", res[0])
		}
	})
	t.Run("the limit moves the earliest; next is the earliest left", func(t *testing.T) {
		e.reset(t)
		base := time.Now().Add(time.Hour).Truncate(time.Millisecond)
		var ids []string
		for i := range 3 {
			res := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{{Body: []byte(fmt.Sprint(i)), NotBefore: base.Add(time.Duration(i) * time.Millisecond)}}, time.Hour)
			ids = append(ids, res[0].ID)
		}
		mv, err := e.b.MoveDueScheduled(e.ctx, base.Add(time.Second), 2)
		if err != nil || mv.Moved != 2 || !mv.Next.Equal(base.Add(2*time.Millisecond)) {
			t.Fatalf("%+v %v", mv, err)
		}
		if len(e.scheduledEntries(t, "orders", ids[0])) != 1 || len(e.scheduledEntries(t, "orders", ids[1])) != 1 || len(e.scheduledEntries(t, "orders", ids[2])) != 0 {
			t.Fatal("not the two earliest moved")
		}
		if got := e.zset(t, scheduledDueKey); len(got) != 1 || got[ids[2]] == 0 {
			t.Fatalf("left scheduled %v, want the third", got)
		}
	})
	t.Run("an unreadable record is dropped once, not re-leased forever", func(t *testing.T) {
		e.reset(t)
		e.must(t, "ZADD", scheduledDueKey, "1000", "orders:sbroken")
		e.must(t, "HSET", scheduledDataKey, "orders:sbroken", "not json")
		mv, err := e.b.MoveDueScheduled(e.ctx, time.UnixMilli(2000), 10)
		if err != nil || mv.Moved != 0 || len(mv.Dropped) != 1 || mv.Dropped[0].ID != "orders:sbroken" {
			t.Fatalf("%+v %v", mv, err)
		}
		if e.exists(t, scheduledDueKey) || e.exists(t, scheduledDataKey) {
			t.Fatal("the unreadable record is still scheduled")
		}
	})
	t.Run("an idempotency key: the repeat is a duplicate, one schedule", func(t *testing.T) {
		e.reset(t)
		out := core.Outgoing{Body: []byte("x"), IdempotencyKey: "k", NotBefore: time.Now().Add(time.Hour)}
		first := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{out}, time.Hour)[0]
		again := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{out}, time.Hour)[0]
		if first.Err != nil || first.Duplicate || again.Err != nil || !again.Duplicate || again.ID != first.ID {
			t.Fatalf("first %+v, again %+v", first, again)
		}
		if n := e.int(t, "ZCARD", scheduledDueKey); n != 1 {
			t.Fatalf("%d scheduled, want 1", n)
		}
	})
	t.Run("concurrent repeats of one key schedule exactly one message", func(t *testing.T) {
		e.reset(t)
		const n = 20
		res := make([]core.Published, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		notBefore := time.Now().Add(time.Hour)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				res[i] = e.b.PublishMany(e.ctx, "orders", []core.Outgoing{{Body: []byte(fmt.Sprint(i)), IdempotencyKey: "same", NotBefore: notBefore}}, time.Hour)[0]
			}()
		}
		close(start)
		wg.Wait()
		firsts := 0
		for i, r := range res {
			if r.Err != nil || r.ID != res[0].ID {
				t.Fatalf("publish %d: %+v (first %+v)", i, r, res[0])
			}
			if !r.Duplicate {
				firsts++
			}
		}
		if firsts != 1 {
			t.Fatalf("%d answered as the first, want 1", firsts)
		}
		if got := e.zset(t, scheduledDueKey); len(got) != 1 || got[res[0].ID] == 0 {
			t.Fatalf("scheduled %v, want only %s", got, res[0].ID)
		}
		if n := e.int(t, "HLEN", scheduledDataKey); n != 1 {
			t.Fatalf("%d records, want 1", n)
		}
	})
}

// MoveDueScheduled appends and then unschedules, in two steps. A process that dies between
// them leaves the message leased; after the lease another pass appends it again: the
// message may be duplicated (same _id), never lost.
func TestScheduledCrashPoints(t *testing.T) {
	cases := []struct {
		name     string
		appended bool // the dead process appended before it died
		want     int  // entries carrying the id in the end
	}{
		{"died after claiming, before appending: appended once after the lease", false, 1},
		{"died after appending, before unscheduling: appended again, same id", true, 2},
	}
	e := newScriptEnv(t)
	const lease = 100 * time.Millisecond
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			due := time.Now().Add(time.Hour).Truncate(time.Millisecond)
			res := e.b.PublishMany(e.ctx, "orders", []core.Outgoing{{Body: []byte("once"),
				Headers: map[string]string{"x-h": "v"}, NotBefore: due}}, time.Hour)
			if res[0].Err != nil {
				t.Fatal(res[0].Err)
			}
			id := res[0].ID
			// The process that dies: claims with its own (short) lease...
			items, _, err := e.b.claimLeased(e.ctx, []string{scheduledDueKey, scheduledDataKey}, due, lease, 10)
			if err != nil || len(items) != 1 || items[0].ID != id {
				t.Fatalf("claim: %+v %v", items, err)
			}
			if c.appended { // ... appends the way MoveDueScheduled does ...
				var rec scheduledRecord
				if err := json.Unmarshal([]byte(items[0].Record), &rec); err != nil {
					t.Fatal(err)
				}
				args := append([]string{"XADD", rec.Subject, "*"}, streamArgs(rec.Body, rec.Headers, idField, items[0].ID)...)
				e.must(t, args...)
			}
			// ... and dies before unscheduling.

			// Within the lease nobody else touches it.
			mv, err := e.b.MoveDueScheduled(e.ctx, due.Add(lease-time.Millisecond), 10)
			if err != nil || mv.Moved != 0 || !mv.Next.Equal(due.Add(lease)) {
				t.Fatalf("during the lease: %+v %v; want nothing moved, next %v", mv, err, due.Add(lease))
			}
			// After it, another process moves it.
			mv, err = e.b.MoveDueScheduled(e.ctx, due.Add(lease), 10)
			if err != nil || mv.Moved != 1 {
				t.Fatalf("after the lease: %+v %v", mv, err)
			}
			entries := e.scheduledEntries(t, "orders", id)
			if len(entries) != c.want {
				t.Fatalf("%d entries carry %s, want %d", len(entries), id, c.want)
			}
			for _, en := range entries {
				if body, _ := en.get(payloadField); body != "once" {
					t.Fatalf("entry %q", en.Fields)
				}
				if h, _ := en.get("h:x-h"); h != "v" {
					t.Fatalf("entry %q", en.Fields)
				}
			}
			if e.exists(t, scheduledDueKey) || e.exists(t, scheduledDataKey) {
				t.Fatal("still scheduled after the second move")
			}
		})
	}
}

// A single publish stores ruststream-fred's layout: the body in _payload and each header
// as h:<lower-cased name>, for the headers built into the command without a lookup and
// for any other.
func TestPublishStoresTheLayout(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	br := New(rs.Client(t))
	headers := map[string]string{
		core.HeaderContentType: "application/json", core.HeaderContentEncoding: "gzip",
		core.HeaderTraceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		core.HeaderTracestate:  "a=b", core.HeaderPartitionKey: "k", "ce-type": "order.created",
		"X-Mixed-Case": "v",
	}
	id, err := br.Publish(context.Background(), "orders", []byte(`{"n":1}`), headers)
	if err != nil {
		t.Fatal(err)
	}
	entry, ok := strings.CutPrefix(id, "orders:")
	if !ok {
		t.Fatalf("message id %q", id)
	}
	got, err := rs.Client(t).Do(context.Background(), rs.Client(t).B().Xrange().Key("orders").Start(entry).End(entry).Build()).AsXRange()
	if err != nil || len(got) != 1 {
		t.Fatalf("XRANGE: %v, %v", got, err)
	}
	want := map[string]string{"_payload": `{"n":1}`}
	for k, v := range headers {
		want["h:"+strings.ToLower(k)] = v
	}
	if !maps.Equal(got[0].FieldValues, want) {
		t.Fatalf("fields %v, want %v", got[0].FieldValues, want)
	}
}

// BenchmarkPublish is one publish with a content type, as the publish handler makes it
// (with the Redis round trip).
func BenchmarkPublish(b *testing.B) {
	rs := redistest.Start(b, redistest.Options{})
	br := New(rs.Client(b))
	ctx := context.Background()
	body := []byte(strings.Repeat("x", 256))
	headers := map[string]string{core.HeaderContentType: "application/octet-stream"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.Publish(ctx, "bench.publish", body, headers); err != nil {
			b.Fatal(err)
		}
	}
}
