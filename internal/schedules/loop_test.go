package schedules_test

import (
	"context"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/broker"
	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/bridge-dev/bridge/internal/schedules"
	"go.uber.org/goleak"
)

var _ schedules.Store = (*broker.Broker)(nil)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ticks returns the scheduled times of the messages in subject's stream, in stream order,
// and fails on a message id seen twice.
func ticks(t *testing.T, rs *redistest.Server, subject string) []time.Time {
	t.Helper()
	arr, err := rs.Do(t, "XRANGE", subject, "-", "+").ToArray()
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []time.Time
	for _, v := range arr {
		e, err := v.AsXRangeEntry()
		if err != nil {
			t.Fatal(err)
		}
		m := broker.DecodeEntry(subject, e)
		if seen[m.ID] {
			t.Fatalf("message %s twice in the stream", m.ID)
		}
		seen[m.ID] = true
		at, err := time.Parse(time.RFC3339, m.Headers[core.HeaderScheduledTime])
		if err != nil {
			t.Fatalf("entry %v: %v", e, err)
		}
		out = append(out, at)
	}
	return out
}

// consecutive fails unless ts are distinct ticks step apart, in order.
func consecutive(t *testing.T, ts []time.Time, step time.Duration) {
	t.Helper()
	for i := 1; i < len(ts); i++ {
		if d := ts[i].Sub(ts[i-1]); d != step {
			t.Fatalf("ticks %s and %s are %s apart, want %s (all: %v)", ts[i-1], ts[i], d, step, ts)
		}
	}
}

type env struct {
	rs        *redistest.Server
	b         *broker.Broker
	published atomic.Int64
}

func newEnv(t *testing.T, opts ...redistest.Options) *env {
	t.Helper()
	o := redistest.Options{}
	if len(opts) > 0 {
		o = opts[0]
	}
	rs := redistest.Start(t, o)
	return &env{rs: rs, b: broker.New(rs.Client(t))}
}

func (e *env) loop(t *testing.T) *schedules.Loop {
	t.Helper()
	// Each loop has a client of its own, as each bridge process has.
	l := schedules.New(broker.New(e.rs.Client(t)), schedules.Options{
		PollInterval: 200 * time.Millisecond,
		Published:    func(string) { e.published.Add(1) },
	})
	l.Start()
	t.Cleanup(l.Stop)
	return l
}

func (e *env) put(t *testing.T, s *core.Schedule) {
	t.Helper()
	if s.UpdatedAt.IsZero() {
		s.UpdatedAt = time.Now().UTC()
	}
	if _, err := e.b.PutSchedule(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// Three loops (three processes) fire each tick of a schedule once, each with its message.
func TestLoopsFireEachTickOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for range 3 {
		e.loop(t)
	}
	e.put(t, &core.Schedule{Name: "every.second", Cron: "@every 1s", Subject: "ticks", Data: []byte(`{"n":1}`),
		ContentType: "application/json", Headers: map[string]string{"x-from": "test"}})
	time.Sleep(3500 * time.Millisecond)
	// Published is called once a tick is written: the two agree between ticks (read
	// together, a tick landing in between made them differ by one, seen in CI).
	var ts []time.Time
	redistest.Eventually(t, 2*time.Second, func() bool {
		n := e.published.Load()
		ts = ticks(t, e.rs, "ticks")
		return n == int64(len(ts))
	}, "Published not called once per tick")
	if len(ts) < 2 || len(ts) > 5 {
		t.Fatalf("%d ticks in 3.5-4 s: %v", len(ts), ts)
	}
	consecutive(t, ts, time.Second)
	arr, _ := e.rs.Do(t, "XRANGE", "ticks", "-", "+").ToArray()
	m0, _ := arr[0].AsXRangeEntry()
	m := broker.DecodeEntry("ticks", m0)
	if string(m.Body) != `{"n":1}` || m.Headers["x-from"] != "test" || m.Headers["content-type"] != "application/json" ||
		m.Headers[core.HeaderSchedule] != "every.second" || m.ID != broker.ScheduleMessageID("ticks", "every.second", ts[0]) {
		t.Fatalf("message %+v", m)
	}
}

// A process that starts after every process was down fires only the latest missed tick,
// once, then every tick again; a second start fires nothing more.
func TestLoopFiresOnlyTheLatestMissedTick(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	longAgo := time.Now().Add(-time.Hour).UTC()
	e.put(t, &core.Schedule{Name: "s", Cron: "@every 2s", Subject: "missed", Data: []byte("1"), UpdatedAt: longAgo, CreatedAt: longAgo})
	// The last tick published ten minutes ago: three hundred ticks missed since.
	lastMs := (time.Now().Add(-10*time.Minute).Unix() / 2) * 2 * 1000
	e.rs.Do(t, "SET", "bridge:{missed}:last-tick:s", strconv.FormatInt(lastMs, 10))
	start := time.Now()
	e.loop(t)
	redistest.Eventually(t, 2*time.Second, func() bool { return len(ticks(t, e.rs, "missed")) >= 1 }, "no catch-up tick")
	ts := ticks(t, e.rs, "missed")
	// The latest tick missed when the loop started (or the one after, had it come due
	// before the loop's first look): nothing older.
	latestMissed := time.Unix(start.Unix()/2*2, 0)
	if ts[0].Before(latestMissed) || ts[0].After(latestMissed.Add(2*time.Second)) {
		t.Fatalf("catch-up tick %s, want the latest missed one %s", ts[0], latestMissed)
	}
	time.Sleep(2500 * time.Millisecond)
	ts = ticks(t, e.rs, "missed")
	if len(ts) < 2 {
		t.Fatalf("no regular tick after the catch-up: %v", ts)
	}
	consecutive(t, ts, 2*time.Second)
	// Another process starting now has nothing to catch up.
	e.loop(t)
	time.Sleep(300 * time.Millisecond)
	consecutive(t, ticks(t, e.rs, "missed"), 2*time.Second)
}

// A new schedule does not fire for ticks before its creation; a paused one fires nothing,
// and once resumed only from its next tick; a deleted one stops.
func TestLoopCreatePauseResumeDelete(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loop(t)
	s := &core.Schedule{Name: "s", Cron: "@every 1s", Subject: "changes", Data: []byte("1")}
	e.put(t, s)
	created := s.UpdatedAt
	redistest.Eventually(t, 3*time.Second, func() bool { return len(ticks(t, e.rs, "changes")) >= 1 }, "no tick")
	if ts := ticks(t, e.rs, "changes"); !ts[0].After(created) {
		t.Fatalf("first tick %s is not after the creation %s", ts[0], created)
	}

	s.Paused, s.UpdatedAt = true, time.Now().UTC()
	e.put(t, s)
	time.Sleep(500 * time.Millisecond) // the loop polls every 200 ms
	n := len(ticks(t, e.rs, "changes"))
	time.Sleep(2200 * time.Millisecond)
	if m := len(ticks(t, e.rs, "changes")); m != n {
		t.Fatalf("a paused schedule fired %d ticks", m-n)
	}

	s.Paused, s.UpdatedAt = false, time.Now().UTC()
	resumed := s.UpdatedAt
	e.put(t, s)
	redistest.Eventually(t, 3*time.Second, func() bool { return len(ticks(t, e.rs, "changes")) > n }, "no tick after resume")
	if ts := ticks(t, e.rs, "changes"); !ts[n].After(resumed) {
		t.Fatalf("after resume at %s, the paused tick %s fired", resumed, ts[n])
	}

	if err := e.b.DeleteSchedule(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	n = len(ticks(t, e.rs, "changes"))
	time.Sleep(1500 * time.Millisecond)
	if m := len(ticks(t, e.rs, "changes")); m != n {
		t.Fatalf("a deleted schedule fired %d ticks", m-n)
	}
}

// A process that cannot reach Redis for a few seconds fires the ticks it missed once
// Redis is back, in order; none is lost or doubled.
func TestLoopRetriesAfterRedisOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, redistest.Options{AOF: true})
	e.loop(t)
	e.put(t, &core.Schedule{Name: "s", Cron: "@every 1s", Subject: "outage", Data: []byte("1")})
	redistest.Eventually(t, 3*time.Second, func() bool { return len(ticks(t, e.rs, "outage")) >= 1 }, "no tick")
	e.rs.Kill(t)
	time.Sleep(2500 * time.Millisecond)
	e.rs.Restart(t) // the data survives in the append-only file
	// Past the outage's ticks and two more. How soon the client reconnects and the loop's
	// retry (every second) gets through depends on the machine's load, so the wait is
	// bounded rather than fixed; any tick missed for good shows as a gap below.
	redistest.Eventually(t, 15*time.Second, func() bool { return len(ticks(t, e.rs, "outage")) >= 5 },
		"fewer than 5 ticks 15 s after the outage")
	consecutive(t, ticks(t, e.rs, "outage"), time.Second)
}

// Several schedules on one subject each fire their own ticks, with ids of their own.
func TestLoopSchedulesShareASubject(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.loop(t)
	e.loop(t)
	for _, name := range []string{"a", "b.c", "b-c"} {
		e.put(t, &core.Schedule{Name: name, Cron: "@every 1s", Subject: "shared", Data: []byte(`"` + name + `"`)})
	}
	time.Sleep(2500 * time.Millisecond)
	arr, _ := e.rs.Do(t, "XRANGE", "shared", "-", "+").ToArray()
	per := map[string][]time.Time{}
	ids := map[string]bool{}
	for _, v := range arr {
		en, _ := v.AsXRangeEntry()
		m := broker.DecodeEntry("shared", en)
		if ids[m.ID] {
			t.Fatalf("id %s twice", m.ID)
		}
		ids[m.ID] = true
		at, _ := time.Parse(time.RFC3339, m.Headers[core.HeaderScheduledTime])
		per[m.Headers[core.HeaderSchedule]] = append(per[m.Headers[core.HeaderSchedule]], at)
	}
	if len(per) != 3 {
		t.Fatalf("schedules that fired: %v", per)
	}
	for name, ts := range per {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
		if len(ts) < 1 {
			t.Fatalf("%s fired nothing", name)
		}
		consecutive(t, ts, time.Second)
	}
}

// Stop is safe twice and without Start, and leaves no goroutine behind (TestMain).
func TestLoopStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := schedules.New(e.b, schedules.Options{})
	l.Stop()
	l.Stop()
	l.Start() // after Stop: does nothing
	l2 := schedules.New(e.b, schedules.Options{})
	l2.Start()
	l2.Start()
	l2.Stop()
	l2.Stop()
}
