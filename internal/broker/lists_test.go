package broker

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

func testListSub(mode core.ListMode) *core.Subscription {
	s := testSub("w", "jobs")
	s.Transport, s.ListMode = core.TransportList, mode
	return s
}

// publishBodies pushes messages with the given bodies, oldest first, and returns their ids.
func (e *scriptEnv) publishBodies(t *testing.T, subject string, bodies ...string) []string {
	t.Helper()
	ids := make([]string, len(bodies))
	for i, b := range bodies {
		id, err := e.b.PublishList(e.ctx, subject, []byte(b), map[string]string{"content-type": "text/plain"})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

func joinBodies(msgs []core.Message) string {
	var b []string
	for _, m := range msgs {
		b = append(b, string(m.Body))
	}
	return strings.Join(b, ",")
}

func TestPopListScript(t *testing.T) {
	cases := []struct {
		name    string
		mode    core.ListMode
		queued  []string
		pops    []int    // counts of successive PopList calls by consumer c1
		got     []string // bodies per call, comma-separated
		left    int64    // LLEN of the queue after
		inProc  []string // bodies in c1's processing list after, newest first
		counted bool
	}{
		{name: "reliable: oldest first, into the caller's processing list, counted", mode: core.ListReliable,
			queued: []string{"m1", "m2", "m3"}, pops: []int{2}, got: []string{"m1,m2"}, left: 1, inProc: []string{"m2", "m1"}, counted: true},
		{name: "reliable: a count beyond the queue takes what is there", mode: core.ListReliable,
			queued: []string{"m1", "m2"}, pops: []int{10, 1}, got: []string{"m1,m2", ""}, left: 0, inProc: []string{"m2", "m1"}, counted: true},
		{name: "reliable: an empty queue gives nothing", mode: core.ListReliable,
			pops: []int{3}, got: []string{""}},
		{name: "simple: oldest first, popped for good", mode: core.ListSimple,
			queued: []string{"m1", "m2", "m3"}, pops: []int{2, 2}, got: []string{"m1,m2", "m3"}, left: 0},
		{name: "simple: an empty queue gives nothing", mode: core.ListSimple,
			pops: []int{3}, got: []string{""}},
	}
	e := newScriptEnv(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := testListSub(c.mode)
			ids := e.publishBodies(t, s.Subject, c.queued...)
			idOf := map[string]string{}
			for i, b := range c.queued {
				idOf[b] = ids[i]
			}
			var before map[string]string
			if len(c.queued) == 0 {
				before = e.snapshot(t)
			}
			proc := processingKey(s.Subject, s.Name, "c1")
			for i, n := range c.pops {
				msgs, err := e.b.PopList(e.ctx, s, "c1", n)
				if err != nil {
					t.Fatal(err)
				}
				if got := joinBodies(msgs); got != c.got[i] {
					t.Fatalf("pop %d: %q, want %q", i, got, c.got[i])
				}
				for _, m := range msgs {
					if m.ID != idOf[string(m.Body)] || m.Subject != s.Subject || m.Headers["content-type"] != "text/plain" {
						t.Fatalf("message %+v", m)
					}
					if c.mode == core.ListSimple {
						if m.Origin != core.Unsettled || m.Deliveries != 1 {
							t.Fatalf("simple message %+v: want unsettled, delivery 1", m)
						}
						continue
					}
					if m.Origin != core.FromList || m.Queue != proc || m.Deliveries != 1 || decodeEnvelope(s.Subject, m.EntryID).ID != m.ID {
						t.Fatalf("reliable message %+v", m)
					}
				}
			}
			if before != nil {
				sameSnapshot(t, before, e.snapshot(t))
			}
			if n := e.int(t, "LLEN", s.Subject); n != c.left {
				t.Fatalf("LLEN %d, want %d", n, c.left)
			}
			var inProc []string
			for _, raw := range e.strs(t, "LRANGE", proc, "0", "-1") {
				inProc = append(inProc, string(decodeEnvelope(s.Subject, raw).Body))
			}
			if fmt.Sprint(inProc) != fmt.Sprint(c.inProc) {
				t.Fatalf("processing list %v, want %v", inProc, c.inProc)
			}
			counts := e.hash(t, listCountKey(s.Subject, s.Name))
			if !c.counted && len(counts) > 0 || c.counted && len(counts) != len(c.inProc) {
				t.Fatalf("list counts %v", counts)
			}
			for _, b := range c.inProc {
				if counts[idOf[b]] != "1" {
					t.Fatalf("list counts %v: want 1 for %s", counts, b)
				}
			}
		})
	}
	t.Run("a value of another producer is delivered as it is, with an id of its content", func(t *testing.T) {
		e.reset(t)
		s := testListSub(core.ListReliable)
		e.must(t, "LPUSH", s.Subject, "plain text", "plain text")
		msgs, err := e.b.PopList(e.ctx, s, "c1", 2)
		if err != nil || len(msgs) != 2 {
			t.Fatalf("%+v %v", msgs, err)
		}
		for _, m := range msgs {
			if string(m.Body) != "plain text" || m.Headers["content-type"] != "application/octet-stream" ||
				!strings.HasPrefix(m.ID, "jobs:x") || m.ID != msgs[0].ID || m.EntryID != "plain text" {
				t.Fatalf("foreign value %+v", m)
			}
		}
	})
	t.Run("a key of another type is core.ErrWrongType, in both modes", func(t *testing.T) {
		e.reset(t)
		e.must(t, "SET", "jobs", "x")
		for _, mode := range []core.ListMode{core.ListReliable, core.ListSimple} {
			if _, err := e.b.PopList(e.ctx, testListSub(mode), "c1", 1); !errors.Is(err, core.ErrWrongType) {
				t.Fatalf("%s: %v, want core.ErrWrongType", mode, err)
			}
		}
	})
}

func TestAckListScript(t *testing.T) {
	cases := []struct {
		name string
		ack  []int    // indexes of the popped messages m1..m3 to ack
		left []string // bodies left in the processing list, newest first
	}{
		{"the given messages and their counts go", []int{0, 2}, []string{"m2"}},
		{"all of them", []int{0, 1, 2}, nil},
		{"none: nothing", nil, []string{"m3", "m2", "m1"}},
		{"the same message twice", []int{1, 1}, []string{"m3", "m1"}},
	}
	e := newScriptEnv(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := testListSub(core.ListReliable)
			e.publishBodies(t, s.Subject, "m1", "m2", "m3")
			msgs, err := e.b.PopList(e.ctx, s, "c1", 3)
			if err != nil || len(msgs) != 3 {
				t.Fatalf("%+v %v", msgs, err)
			}
			var ack []*core.Message
			for _, i := range c.ack {
				ack = append(ack, &msgs[i])
			}
			if err := e.b.AckList(e.ctx, s, ack...); err != nil {
				t.Fatal(err)
			}
			var left []string
			for _, raw := range e.strs(t, "LRANGE", processingKey(s.Subject, s.Name, "c1"), "0", "-1") {
				left = append(left, string(decodeEnvelope(s.Subject, raw).Body))
			}
			if fmt.Sprint(left) != fmt.Sprint(c.left) {
				t.Fatalf("processing list %v, want %v", left, c.left)
			}
			counts := e.hash(t, listCountKey(s.Subject, s.Name))
			if len(counts) != len(c.left) {
				t.Fatalf("counts %v, want those of %v", counts, c.left)
			}
		})
	}
	t.Run("one of two equal values is removed", func(t *testing.T) {
		e.reset(t)
		s := testListSub(core.ListReliable)
		e.must(t, "LPUSH", s.Subject, "dup", "dup")
		msgs, err := e.b.PopList(e.ctx, s, "c1", 2)
		if err != nil || len(msgs) != 2 {
			t.Fatalf("%+v %v", msgs, err)
		}
		if err := e.b.AckList(e.ctx, s, &msgs[0]); err != nil {
			t.Fatal(err)
		}
		if got := e.strs(t, "LRANGE", msgs[0].Queue, "0", "-1"); len(got) != 1 {
			t.Fatalf("processing list %q, want one copy left", got)
		}
	})
}

func TestRecoverListScript(t *testing.T) {
	type consumer struct {
		name string
		pop  int   // messages it takes from the queue, in order
		beat int64 // heartbeat age in ms; -1: no heartbeat at all
	}
	cases := []struct {
		name      string
		consumers []consumer
		// run is the call under test; it returns what came back.
		run  func(t *testing.T, e *scriptEnv, s *core.Subscription) int
		back int
		// order is the pop order of the queue afterwards, bodies.
		order string
		// kept are the consumers still registered afterwards, with their processing lists.
		kept map[string]string
	}{
		{
			name:      "a stale consumer's list returns to the front, oldest first; a fresh one keeps its own",
			consumers: []consumer{{name: "dead", pop: 2, beat: 10000}, {name: "alive", pop: 2, beat: 0}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				n, err := e.b.RecoverList(e.ctx, s, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				return n
			},
			back: 2, order: "m1,m2,m5", kept: map[string]string{"alive": "m3,m4"},
		},
		{
			name:      "every stale consumer: each list in order, ahead of what was queued",
			consumers: []consumer{{name: "d1", pop: 2, beat: 20000}, {name: "d2", pop: 2, beat: 10000}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				n, err := e.b.RecoverList(e.ctx, s, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				return n
			},
			back: 4, order: "m3,m4,m1,m2,m5", kept: map[string]string{},
		},
		{
			name:      "fresh heartbeats: nothing moves",
			consumers: []consumer{{name: "a", pop: 2, beat: 100}, {name: "b", pop: 2, beat: 0}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				n, err := e.b.RecoverList(e.ctx, s, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				return n
			},
			back: 0, order: "m5", kept: map[string]string{"a": "m1,m2", "b": "m3,m4"},
		},
		{
			name:      "a stale consumer holding nothing is forgotten",
			consumers: []consumer{{name: "idle", pop: 0, beat: 10000}, {name: "alive", pop: 1, beat: 0}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				n, err := e.b.RecoverList(e.ctx, s, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				return n
			},
			back: 0, order: "m2,m3,m4,m5", kept: map[string]string{"alive": "m1"},
		},
		{
			name:      "the script checks the heartbeat again: one that became fresh keeps its list",
			consumers: []consumer{{name: "back", pop: 2, beat: 1000}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				// Found stale by the listing; by the time the script runs its beat is at the cutoff.
				hb := e.zset(t, consumersKey(s.Subject, s.Name))["back"]
				n, err := recoverScript.Exec(e.ctx, e.c, []string{consumersKey(s.Subject, s.Name), processingKey(s.Subject, s.Name, "back"), s.Subject},
					[]string{"back", strconv.FormatInt(hb, 10)}).AsInt64()
				if err != nil {
					t.Fatal(err)
				}
				return int(n)
			},
			back: 0, order: "m3,m4,m5", kept: map[string]string{"back": "m1,m2"},
		},
		{
			name:      "the script with a heartbeat just before the cutoff recovers",
			consumers: []consumer{{name: "gone", pop: 2, beat: 1000}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				hb := e.zset(t, consumersKey(s.Subject, s.Name))["gone"]
				n, err := recoverScript.Exec(e.ctx, e.c, []string{consumersKey(s.Subject, s.Name), processingKey(s.Subject, s.Name, "gone"), s.Subject},
					[]string{"gone", strconv.FormatInt(hb+1, 10)}).AsInt64()
				if err != nil {
					t.Fatal(err)
				}
				return int(n)
			},
			back: 2, order: "m1,m2,m3,m4,m5", kept: map[string]string{},
		},
		{
			name:      "ReleaseList hands back the caller's list at once, however fresh",
			consumers: []consumer{{name: "me", pop: 2, beat: 0}, {name: "other", pop: 1, beat: 0}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				if err := e.b.ReleaseList(e.ctx, s, "me"); err != nil {
					t.Fatal(err)
				}
				return 2
			},
			back: 2, order: "m1,m2,m4,m5", kept: map[string]string{"other": "m3"},
		},
		{
			name:      "ReleaseList of a consumer without a heartbeat or messages",
			consumers: []consumer{{name: "me", pop: 0, beat: -1}, {name: "other", pop: 1, beat: 0}},
			run: func(t *testing.T, e *scriptEnv, s *core.Subscription) int {
				if err := e.b.ReleaseList(e.ctx, s, "me"); err != nil {
					t.Fatal(err)
				}
				return 0
			},
			back: 0, order: "m2,m3,m4,m5", kept: map[string]string{"other": "m1"},
		},
	}
	e := newScriptEnv(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := testListSub(core.ListReliable)
			e.publishBodies(t, s.Subject, "m1", "m2", "m3", "m4", "m5")
			now := time.Now().UnixMilli()
			for _, cs := range c.consumers {
				if cs.pop > 0 {
					if msgs, err := e.b.PopList(e.ctx, s, cs.name, cs.pop); err != nil || len(msgs) != cs.pop {
						t.Fatalf("%s pops: %+v %v", cs.name, msgs, err)
					}
				}
				if cs.beat >= 0 {
					e.must(t, "ZADD", consumersKey(s.Subject, s.Name), strconv.FormatInt(now-cs.beat, 10), cs.name)
				}
			}
			if n := c.run(t, e, s); n != c.back {
				t.Fatalf("%d came back, want %d", n, c.back)
			}
			for _, cs := range c.consumers {
				want, kept := c.kept[cs.name]
				var inProc []string
				raws := e.strs(t, "LRANGE", processingKey(s.Subject, s.Name, cs.name), "0", "-1")
				for i := len(raws) - 1; i >= 0; i-- { // oldest first
					inProc = append(inProc, string(decodeEnvelope(s.Subject, raws[i]).Body))
				}
				if got := strings.Join(inProc, ","); got != want {
					t.Errorf("%s holds %q, want %q", cs.name, got, want)
				}
				_, registered := e.zset(t, consumersKey(s.Subject, s.Name))[cs.name]
				if registered != kept {
					t.Errorf("%s registered %v, want %v", cs.name, registered, kept)
				}
			}
			// What came back is delivered again, first, with its delivery counted again.
			msgs, err := e.b.PopList(e.ctx, s, "next", 10)
			if err != nil {
				t.Fatal(err)
			}
			if got := joinBodies(msgs); got != c.order {
				t.Fatalf("queue pops %q, want %q", got, c.order)
			}
			for _, m := range msgs[:c.back] {
				if m.Deliveries != 2 {
					t.Errorf("%s: delivery %d after recovery, want 2", m.Body, m.Deliveries)
				}
			}
		})
	}
}
