package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

func TestDeadLetterScript(t *testing.T) {
	e := newScriptEnv(t)
	info := core.DeadLetterInfo{Reason: core.ReasonMaxDeliveries, LastStatus: 503, LastError: "upstream said no",
		At: time.UnixMilli(1732420000123)}
	for _, c := range settleCases() {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := e.live(t, testSub("a", "orders"))
			m := c.prepare(t, e, s)
			before := e.snapshot(t)
			if err := e.b.DeadLetter(e.ctx, s, m, info); err != nil {
				t.Fatal(err)
			}
			after := e.snapshot(t)
			touched := append(c.touched(s, m), dlqKey(s.Subject, s.Name))
			if m.Origin == core.FromRetry {
				touched = append(touched, retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name))
			}
			checkOnlyTouched(t, before, after, touched)

			entries := e.xrange(t, dlqKey(s.Subject, s.Name))
			if len(entries) != 1 {
				t.Fatalf("%d dead letters, want 1", len(entries))
			}
			checkDLQEntry(t, entries[0], m, info)
			if m.Origin == core.FromRetry {
				if _, ok := e.zset(t, retryKey(s.Subject, s.Name))[m.ID]; ok {
					t.Error("still in the retry zset")
				}
				for _, k := range []string{retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)} {
					h := e.hash(t, k)
					if _, ok := h[m.ID]; ok || len(h) != 1 {
						t.Errorf("%s = %v: want only the bystander", k, h)
					}
				}
			}
			if c.settled != nil {
				c.settled(t, e, s, m)
			}
		})
		for _, ms := range markerStates {
			t.Run(c.name+"/subscription "+ms.name+": ErrGone, nothing written", func(t *testing.T) {
				e.reset(t)
				s := e.live(t, testSub("a", "orders"))
				m := c.prepare(t, e, s)
				ms.set(t, e, s)
				before := e.snapshot(t)
				if err := e.b.DeadLetter(e.ctx, s, m, info); !errors.Is(err, core.ErrGone) {
					t.Fatalf("DeadLetter: %v, want core.ErrGone", err)
				}
				sameSnapshot(t, before, e.snapshot(t))
			})
		}
	}
	t.Run("binary body, a previous reason replaced, read back whole", func(t *testing.T) {
		e.reset(t)
		s := e.live(t, testSub("a", "orders"))
		m := &core.Message{ID: "orders:7-0", Subject: "orders", Origin: core.Unsettled,
			Body:       []byte("\x00\xff\xfe binary \r\n"),
			Headers:    map[string]string{"content-type": "application/octet-stream", core.HeaderDeadLetterReason: "old"},
			Deliveries: 5}
		if err := e.b.DeadLetter(e.ctx, s, m, core.DeadLetterInfo{Reason: core.ReasonDropped, LastStatus: 404, At: info.At}); err != nil {
			t.Fatal(err)
		}
		entries := e.xrange(t, dlqKey(s.Subject, s.Name))
		if len(entries) != 1 {
			t.Fatalf("%d dead letters", len(entries))
		}
		checkDLQEntry(t, entries[0], m, core.DeadLetterInfo{Reason: core.ReasonDropped, LastStatus: 404, At: info.At})
		d, err := e.b.GetDeadLetter(e.ctx, s, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := core.DeadLetter{EntryID: entries[0].ID, ID: m.ID, Body: m.Body,
			Headers: map[string]string{"content-type": "application/octet-stream", core.HeaderDeadLetterReason: core.ReasonDropped},
			Reason:  core.ReasonDropped, LastStatus: 404, Deliveries: 5, At: info.At.UTC(), Size: len(m.Body)}
		if !reflect.DeepEqual(d, want) {
			t.Fatalf("read back %+v\nwant %+v", d, want)
		}
	})
}

// checkDLQEntry checks a dead-letter entry field by field: ruststream-fred's layout plus the
// reason header and the bridge's _-fields, nothing else.
func checkDLQEntry(t *testing.T, got rawEntry, m *core.Message, info core.DeadLetterInfo) {
	t.Helper()
	want := map[string]string{
		payloadField:                       string(m.Body),
		"h:" + core.HeaderDeadLetterReason: info.Reason,
		"_id":                              m.ID,
		"_status":                          strconv.Itoa(info.LastStatus),
		"_error":                           info.LastError,
		"_deliveries":                      strconv.Itoa(m.Deliveries),
		"_time":                            strconv.FormatInt(info.At.UnixMilli(), 10),
	}
	for k, v := range m.Headers {
		if k != core.HeaderDeadLetterReason {
			want["h:"+k] = v
		}
	}
	if len(got.Fields) != 2*len(want) {
		t.Errorf("dead letter fields %q: want exactly %v", got.Fields, want)
	}
	for k, v := range want {
		if n := got.count(k); n != 1 {
			t.Errorf("field %s appears %d times", k, n)
		}
		if g, _ := got.get(k); g != v {
			t.Errorf("field %s = %q, want %q", k, g, v)
		}
	}
}

// deadLetterUnsettled dead-letters a message that has nothing to settle, the quickest way
// to fill a DLQ through the script.
func (e *scriptEnv) deadLetterUnsettled(t *testing.T, s *core.Subscription, id, body string) {
	t.Helper()
	m := &core.Message{ID: id, Subject: s.Subject, Origin: core.Unsettled, Body: []byte(body),
		Headers: map[string]string{"content-type": "text/plain", "x-k": "v"}, Deliveries: 5}
	if err := e.b.DeadLetter(e.ctx, s, m, core.DeadLetterInfo{Reason: core.ReasonMaxDeliveries, LastStatus: 500, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

// dlqIDs returns the _id of every dead letter of s, oldest first.
func (e *scriptEnv) dlqIDs(t *testing.T, s *core.Subscription) []string {
	t.Helper()
	var ids []string
	for _, en := range e.xrange(t, dlqKey(s.Subject, s.Name)) {
		id, _ := en.get("_id")
		ids = append(ids, id)
	}
	return ids
}

func TestReplayDeadLettersScript(t *testing.T) {
	e := newScriptEnv(t)
	const A, B, C = "orders:1-0", "orders:2-0", "orders:3-0"
	type replayCase struct {
		name  string
		setup func(t *testing.T, s *core.Subscription)
		// calls are ReplayDeadLetters calls, made one after another; concurrent ones at once.
		calls      [][]string
		concurrent bool
		moved      int // summed over the calls
		dlqLeft    []string
		retrying   []string
	}
	cases := []replayCase{
		{name: "one id: only it moves", calls: [][]string{{B}}, moved: 1, dlqLeft: []string{A, C}, retrying: []string{B}},
		{name: "nil: every dead letter", calls: [][]string{nil}, moved: 3, retrying: []string{A, B, C}},
		{name: "an empty list: nothing", calls: [][]string{{}}, moved: 0, dlqLeft: []string{A, B, C}},
		{name: "two ids", calls: [][]string{{C, A}}, moved: 2, dlqLeft: []string{B}, retrying: []string{A, C}},
		{name: "the same id twice in one call moves it once", calls: [][]string{{B, B}}, moved: 1, dlqLeft: []string{A, C}, retrying: []string{B}},
		{name: "replayed twice: the second call finds nothing", calls: [][]string{{B}, {B}}, moved: 1, dlqLeft: []string{A, C}, retrying: []string{B}},
		{name: "concurrent replays of one id move it once", calls: [][]string{{B}, {B}, {B}, {B}, {B}, {B}, {B}, {B}},
			concurrent: true, moved: 1, dlqLeft: []string{A, C}, retrying: []string{B}},
		{name: "concurrent replays of everything move each once", calls: [][]string{nil, nil, nil, nil},
			concurrent: true, moved: 3, retrying: []string{A, B, C}},
		{name: "an unknown id: nothing", calls: [][]string{{"orders:9-0"}}, moved: 0, dlqLeft: []string{A, B, C}},
		{
			name: "a stale delivery count starts again at 0",
			setup: func(t *testing.T, s *core.Subscription) {
				e.must(t, "HSET", retryCountKey(s.Subject, s.Name), B, "4")
			},
			calls: [][]string{{B}}, moved: 1, dlqLeft: []string{A, C}, retrying: []string{B},
		},
		{
			name: "another subscription's dead letters stay where they are",
			setup: func(t *testing.T, s *core.Subscription) {
				other := e.live(t, testSub("other", s.Subject))
				e.deadLetterUnsettled(t, other, B, "theirs")
			},
			calls: [][]string{nil}, moved: 3, retrying: []string{A, B, C},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := e.live(t, testSub("a", "orders"))
			for _, id := range []string{A, B, C} {
				e.deadLetterUnsettled(t, s, id, "body of "+id)
			}
			if c.setup != nil {
				c.setup(t, s)
			}
			moved := 0
			if c.concurrent {
				var mu sync.Mutex
				var wg sync.WaitGroup
				for _, ids := range c.calls {
					wg.Add(1)
					go func() {
						defer wg.Done()
						n, err := e.b.ReplayDeadLetters(e.ctx, s, ids)
						if err != nil {
							t.Error(err)
						}
						mu.Lock()
						moved += n
						mu.Unlock()
					}()
				}
				wg.Wait()
			} else {
				for _, ids := range c.calls {
					n, err := e.b.ReplayDeadLetters(e.ctx, s, ids)
					if err != nil {
						t.Fatal(err)
					}
					moved += n
				}
			}
			if moved != c.moved {
				t.Errorf("moved %d, want %d", moved, c.moved)
			}
			if got := e.dlqIDs(t, s); fmt.Sprint(got) != fmt.Sprint(c.dlqLeft) {
				t.Errorf("dead letters left %v, want %v", got, c.dlqLeft)
			}
			zset := e.zset(t, retryKey(s.Subject, s.Name))
			if len(zset) != len(c.retrying) {
				t.Errorf("retry set %v, want %v", zset, c.retrying)
			}
			now := time.Now().UnixMilli()
			for _, id := range c.retrying {
				if due, ok := zset[id]; !ok || due > now || due < now-5000 {
					t.Errorf("%s due %d (there %v), want about now %d", id, due, ok, now)
				}
				raw, _ := e.str(t, "HGET", retryDataKey(s.Subject, s.Name), id)
				var rec retryRecord
				if err := json.Unmarshal([]byte(raw), &rec); err != nil {
					t.Fatalf("record of %s %q: %v", id, raw, err)
				}
				want := retryRecord{ID: id, Body: []byte("body of " + id), Headers: map[string]string{"content-type": "text/plain", "x-k": "v"}}
				if !reflect.DeepEqual(rec, want) {
					t.Errorf("record %+v, want %+v (no dead-letter reason)", rec, want)
				}
				if n, _ := e.str(t, "HGET", retryCountKey(s.Subject, s.Name), id); n != "0" {
					t.Errorf("count of %s %q, want a fresh 0", id, n)
				}
			}
			if len(c.retrying) > 0 {
				msgs, _, err := e.b.ClaimRetries(e.ctx, s, time.Now(), time.Minute, 10)
				if err != nil || len(msgs) != len(c.retrying) {
					t.Fatalf("claim after replay: %+v %v", msgs, err)
				}
				for _, m := range msgs {
					if m.Deliveries != 1 {
						t.Errorf("%s comes back as delivery %d, want 1", m.ID, m.Deliveries)
					}
				}
			}
			if other := testSub("other", s.Subject); e.exists(t, dlqKey(other.Subject, other.Name)) {
				if got := e.dlqIDs(t, other); len(got) != 1 || e.exists(t, retryKey(other.Subject, other.Name)) {
					t.Errorf("the other subscription's dead letters %v were touched", got)
				}
			}
		})
	}
	t.Run("more than a page, and entries of another producer", func(t *testing.T) {
		e.reset(t)
		s := e.live(t, testSub("a", "orders"))
		key := dlqKey(s.Subject, s.Name)
		cmds := make(rueidis.Commands, 0, 1201)
		for i := 1; i <= 1200; i++ {
			cmds = append(cmds, e.c.B().Arbitrary("XADD").Keys(key).Args(fmt.Sprintf("%d-0", i),
				payloadField, "x", "_id", fmt.Sprintf("orders:%d-0", i)).Build())
		}
		cmds = append(cmds, e.c.B().Arbitrary("XADD").Keys(key).Args("5000-0", "foreign", "yes").Build())
		for _, r := range e.c.DoMulti(e.ctx, cmds...) {
			if err := r.Error(); err != nil {
				t.Fatal(err)
			}
		}
		n, err := e.b.ReplayDeadLetters(e.ctx, s, nil)
		if err != nil || n != 1201 {
			t.Fatalf("replayed %d, %v; want 1201", n, err)
		}
		if e.exists(t, key) && e.int(t, "XLEN", key) != 0 {
			t.Fatal("dead letters left")
		}
		if n := e.int(t, "ZCARD", retryKey(s.Subject, s.Name)); n != 1201 {
			t.Fatalf("%d retrying, want 1201", n)
		}
		// Without a stored id, the entry's own id names it.
		if _, ok := e.str(t, "HGET", retryDataKey(s.Subject, s.Name), core.MessageID(s.Subject, "5000-0")); !ok {
			t.Fatal("the foreign entry is not retrying under its derived id")
		}
	})
}

func TestDeadLetterPageScript(t *testing.T) {
	const MiB = 1 << 20
	type want struct {
		ids       []string // entry ids
		sizes     []int
		truncated []bool
		more      bool
	}
	cases := []struct {
		name   string
		bodies []int // sizes of entries 1-0, 2-0, ...
		after  string
		limit  int
		cut    int
		want   want
	}{
		{name: "fewer than the limit: all, no more", bodies: []int{10, 10, 10}, limit: 10, cut: 100,
			want: want{ids: []string{"1-0", "2-0", "3-0"}, sizes: []int{10, 10, 10}, truncated: []bool{false, false, false}}},
		{name: "the limit ends the page: more", bodies: []int{1, 1, 1, 1, 1}, limit: 2, cut: 100,
			want: want{ids: []string{"1-0", "2-0"}, sizes: []int{1, 1}, truncated: []bool{false, false}, more: true}},
		{name: "after a cursor", bodies: []int{1, 1, 1, 1, 1}, after: "2-0", limit: 2, cut: 100,
			want: want{ids: []string{"3-0", "4-0"}, sizes: []int{1, 1}, truncated: []bool{false, false}, more: true}},
		{name: "a page ending exactly at the end says more; the next is empty", bodies: []int{1, 1, 1, 1}, after: "2-0", limit: 2, cut: 100,
			want: want{ids: []string{"3-0", "4-0"}, sizes: []int{1, 1}, truncated: []bool{false, false}, more: true}},
		{name: "after the last entry: empty, no more", bodies: []int{1, 1}, after: "2-0", limit: 2, cut: 100, want: want{}},
		{name: "bodies over the cut are cut and keep their whole size", bodies: []int{5, 10, 11}, limit: 10, cut: 10,
			want: want{ids: []string{"1-0", "2-0", "3-0"}, sizes: []int{5, 10, 11}, truncated: []bool{false, false, true}}},
		{name: "cut 0: no bodies, sizes kept", bodies: []int{5, 0}, limit: 10, cut: 0,
			want: want{ids: []string{"1-0", "2-0"}, sizes: []int{5, 0}, truncated: []bool{true, false}}},
		{name: "the 4 MiB byte budget ends a page early", bodies: []int{3 * MiB, 3 * MiB, 3 * MiB}, limit: 10, cut: 4 * MiB,
			want: want{ids: []string{"1-0", "2-0"}, sizes: []int{3 * MiB, 3 * MiB}, truncated: []bool{false, false}, more: true}},
		{name: "the budget counts what is returned, not the whole bodies", bodies: []int{3 * MiB, 3 * MiB, 3 * MiB}, limit: 10, cut: 1024,
			want: want{ids: []string{"1-0", "2-0", "3-0"}, sizes: []int{3 * MiB, 3 * MiB, 3 * MiB}, truncated: []bool{true, true, true}}},
		{name: "no dead-letter stream: an empty page", limit: 10, cut: 10, want: want{}},
	}
	e := newScriptEnv(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := testSub("a", "orders")
			key := dlqKey(s.Subject, s.Name)
			for i, n := range c.bodies {
				body := strings.Repeat(string(rune('a'+i)), n)
				e.must(t, "XADD", key, fmt.Sprintf("%d-0", i+1), payloadField, body, "h:content-type", "text/plain",
					"_id", fmt.Sprintf("orders:%d-0", i+1))
			}
			page, err := e.b.DeadLetters(e.ctx, s, c.after, c.limit, c.cut)
			if err != nil {
				t.Fatal(err)
			}
			var got want
			got.more = page.More
			for _, d := range page.DeadLetters {
				got.ids = append(got.ids, d.EntryID)
				got.sizes = append(got.sizes, d.Size)
				got.truncated = append(got.truncated, d.Truncated)
				i, _ := strconv.Atoi(strings.TrimSuffix(d.EntryID, "-0"))
				whole := strings.Repeat(string(rune('a'+i-1)), c.bodies[i-1])
				if !strings.HasPrefix(whole, string(d.Body)) || len(d.Body) != min(len(whole), c.cut) {
					t.Errorf("%s: body of %d bytes, want the first %d", d.EntryID, len(d.Body), min(len(whole), c.cut))
				}
				if d.ID != "orders:"+d.EntryID || d.Headers["content-type"] != "text/plain" {
					t.Errorf("%s: id %q headers %v", d.EntryID, d.ID, d.Headers)
				}
				if _, ok := d.Headers[sizeField]; ok {
					t.Errorf("%s: _size leaked into the headers", d.EntryID)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Fatalf("page %+v, want %+v", got, c.want)
			}
		})
	}
	t.Run("an entry of another producer is listed as JSON of its fields", func(t *testing.T) {
		e.reset(t)
		s := testSub("a", "orders")
		e.must(t, "XADD", dlqKey(s.Subject, s.Name), "1-0", "foo", "bar")
		page, err := e.b.DeadLetters(e.ctx, s, "", 10, 100)
		if err != nil || len(page.DeadLetters) != 1 || page.More {
			t.Fatalf("page %+v %v", page, err)
		}
		d := page.DeadLetters[0]
		if string(d.Body) != `{"foo":"bar"}` || d.Headers["content-type"] != "application/json" {
			t.Fatalf("foreign dead letter %+v", d)
		}
	})
}

func TestFindDeadLetterScript(t *testing.T) {
	e := newScriptEnv(t)
	s := testSub("a", "orders")
	key := dlqKey(s.Subject, s.Name)
	big := strings.Repeat("z", 100<<10)
	setup := func(t *testing.T) {
		e.reset(t)
		e.must(t, "XADD", key, "1-0", payloadField, "a1", "_id", "orders:10-0")
		e.must(t, "XADD", key, "2-0", payloadField, big, "_id", "orders:20-0")
		// The same message dead-lettered again after a replay: the newest wins.
		e.must(t, "XADD", key, "3-0", payloadField, "a2", "_id", "orders:10-0")
	}
	cases := []struct {
		name, id string
		entry    string // "" = core.ErrNotFound
		body     string
	}{
		{"by entry id", "2-0", "2-0", big},
		{"by message id: the newest of its dead letters", "orders:10-0", "3-0", "a2"},
		{"by message id, whole body (no cut)", "orders:20-0", "2-0", big},
		{"an unknown message id", "orders:99-0", "", ""},
		{"an unknown entry id", "99-0", "", ""},
		{"a message id never matches an entry id", "orders:1-0", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			setup(t)
			d, err := e.b.GetDeadLetter(e.ctx, s, c.id)
			if c.entry == "" {
				if !errors.Is(err, core.ErrNotFound) {
					t.Fatalf("GetDeadLetter(%s) = %+v, %v; want core.ErrNotFound", c.id, d.EntryID, err)
				}
				return
			}
			if err != nil || d.EntryID != c.entry || string(d.Body) != c.body || d.Truncated || d.Size != len(c.body) {
				t.Fatalf("GetDeadLetter(%s) = entry %s, %d bytes, truncated %v, %v; want %s", c.id, d.EntryID, len(d.Body), d.Truncated, err, c.entry)
			}
		})
	}
	t.Run("the search looks at the newest DeadLetterSearchDepth entries only", func(t *testing.T) {
		e.reset(t)
		e.must(t, "XADD", key, "1-0", payloadField, "deep", "_id", "orders:deep")
		e.must(t, "XADD", key, "2-0", payloadField, "edge", "_id", "orders:edge")
		cmds := make(rueidis.Commands, 0, DeadLetterSearchDepth-1)
		for i := range DeadLetterSearchDepth - 1 {
			cmds = append(cmds, e.c.B().Arbitrary("XADD").Keys(key).Args(fmt.Sprintf("%d-0", i+3), payloadField, "x", "_id", "orders:filler").Build())
		}
		for _, r := range e.c.DoMulti(e.ctx, cmds...) {
			if err := r.Error(); err != nil {
				t.Fatal(err)
			}
		}
		if d, err := e.b.GetDeadLetter(e.ctx, s, "orders:edge"); err != nil || d.EntryID != "2-0" {
			t.Fatalf("the entry at the search depth: %+v %v", d.EntryID, err)
		}
		if _, err := e.b.GetDeadLetter(e.ctx, s, "orders:deep"); !errors.Is(err, core.ErrNotFound) {
			t.Fatalf("an entry beyond the search depth: %v, want core.ErrNotFound", err)
		}
		if d, err := e.b.GetDeadLetter(e.ctx, s, "1-0"); err != nil || string(d.Body) != "deep" {
			t.Fatalf("by entry id it is still found: %+v %v", d, err)
		}
	})
}
