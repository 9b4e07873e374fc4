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

func TestAddStatsScript(t *testing.T) {
	at1, at2 := time.UnixMilli(1732420000123), time.UnixMilli(1732420005000)
	type call struct {
		consumer string
		delta    core.StatsDelta
		expired  int64 // > 0: AddExpired(expired) instead of AddStats
	}
	cases := []struct {
		name  string
		calls []call
		// fields is the stats hash after the calls, in-flight reports as "n" (their time is
		// checked to be about now).
		fields map[string]string
		shared core.SharedStats
	}{
		{
			name: "counters add up across calls and processes; each process reports its in-flight",
			calls: []call{
				{consumer: "p1", delta: core.StatsDelta{Delivered: 3, Retried: 1, InFlight: 2}},
				{consumer: "p2", delta: core.StatsDelta{Delivered: 2, DeadLettered: 1, Lost: 4, InFlight: 1}},
				{consumer: "p1", delta: core.StatsDelta{Delivered: 1, InFlight: 5}},
			},
			fields: map[string]string{"delivered": "6", "retried": "1", "dead_lettered": "1", "lost": "4",
				"inflight:p1": "5", "inflight:p2": "1"},
			shared: core.SharedStats{Delivered: 6, Retried: 1, DeadLettered: 1, Lost: 4, InFlight: 6},
		},
		{
			name:   "zero counters write no field",
			calls:  []call{{consumer: "p1", delta: core.StatsDelta{}}},
			fields: map[string]string{"inflight:p1": "0"},
		},
		{
			name: "last status, error and time are written with LastAt and kept without it",
			calls: []call{
				{consumer: "p1", delta: core.StatsDelta{Retried: 1, LastStatus: 500, LastError: "boom", LastAt: at1}},
				{consumer: "p1", delta: core.StatsDelta{Delivered: 1}},
			},
			fields: map[string]string{"delivered": "1", "retried": "1", "inflight:p1": "0",
				"last_status": "500", "last_error": "boom", "last_at": "1732420000123"},
			shared: core.SharedStats{Delivered: 1, Retried: 1, LastStatus: 500, LastError: "boom", LastAt: at1.UTC()},
		},
		{
			name: "a later outcome replaces the last one, an empty error included",
			calls: []call{
				{consumer: "p1", delta: core.StatsDelta{Retried: 1, LastStatus: 500, LastError: "boom", LastAt: at1}},
				{consumer: "p2", delta: core.StatsDelta{Delivered: 1, LastStatus: 204, LastAt: at2}},
			},
			fields: map[string]string{"delivered": "1", "retried": "1", "inflight:p1": "0", "inflight:p2": "0",
				"last_status": "204", "last_error": "", "last_at": "1732420005000"},
			shared: core.SharedStats{Delivered: 1, Retried: 1, LastStatus: 204, LastAt: at2.UTC()},
		},
		{
			name:   "AddExpired counts expired entries only",
			calls:  []call{{expired: 3}, {expired: 4}},
			fields: map[string]string{"expired": "7"},
			shared: core.SharedStats{Expired: 7},
		},
		{
			name: "expired beside delivery counters",
			calls: []call{
				{consumer: "p1", delta: core.StatsDelta{Delivered: 2, InFlight: 1}},
				{expired: 5},
			},
			fields: map[string]string{"delivered": "2", "expired": "5", "inflight:p1": "1"},
			shared: core.SharedStats{Delivered: 2, Expired: 5, InFlight: 1},
		},
	}
	e := newScriptEnv(t)
	apply := func(s *core.Subscription, c call) error {
		if c.expired > 0 {
			return e.b.AddExpired(e.ctx, s, c.expired)
		}
		return e.b.AddStats(e.ctx, s, c.consumer, c.delta)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := e.live(t, testSub("a", "orders"))
			start := time.Now().UnixMilli()
			for _, cl := range c.calls {
				if err := apply(s, cl); err != nil {
					t.Fatal(err)
				}
			}
			end := time.Now().UnixMilli()
			got := e.hash(t, statsKey(s.Subject, s.Name))
			for k, v := range got {
				if !strings.HasPrefix(k, inFlightPrefix) {
					continue
				}
				n, ms, _ := strings.Cut(v, ":")
				if at, err := strconv.ParseInt(ms, 10, 64); err != nil || at < start || at > end {
					t.Errorf("%s = %q: its time is not the time of the call", k, v)
				}
				got[k] = n
			}
			if fmt.Sprint(got) != fmt.Sprint(c.fields) {
				t.Fatalf("stats hash %v, want %v", got, c.fields)
			}
			st, err := e.b.SubscriptionStats(e.ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			if st.Shared != c.shared {
				t.Fatalf("shared stats %+v, want %+v", st.Shared, c.shared)
			}
		})
		for _, ms := range markerStates {
			t.Run(c.name+"/subscription "+ms.name+": ErrGone, nothing written", func(t *testing.T) {
				e.reset(t)
				s := e.live(t, testSub("a", "orders"))
				e.must(t, "HSET", statsKey(s.Subject, s.Name), "delivered", "1") // left by the old incarnation
				ms.set(t, e, s)
				before := e.snapshot(t)
				for _, cl := range c.calls {
					if err := apply(s, cl); !errors.Is(err, core.ErrGone) {
						t.Fatalf("%+v: %v, want core.ErrGone", cl, err)
					}
				}
				sameSnapshot(t, before, e.snapshot(t))
			})
		}
	}
	t.Run("a stale in-flight report is not counted", func(t *testing.T) {
		e.reset(t)
		s := e.live(t, testSub("a", "orders"))
		if err := e.b.AddStats(e.ctx, s, "alive", core.StatsDelta{InFlight: 2}); err != nil {
			t.Fatal(err)
		}
		e.must(t, "HSET", statsKey(s.Subject, s.Name), "inflight:dead",
			fmt.Sprintf("7:%d", time.Now().Add(-inFlightFresh-time.Second).UnixMilli()))
		st, err := e.b.SubscriptionStats(e.ctx, s)
		if err != nil || st.Shared.InFlight != 2 {
			t.Fatalf("in flight %d, %v; want 2", st.Shared.InFlight, err)
		}
	})
}

// Lag comes from XINFO GROUPS while Redis knows entries-read; once it forgot (XGROUP SETID),
// countAfterScript counts the entries after the group's last-delivered id.
func TestLagCountAfterScript(t *testing.T) {
	cases := []struct {
		name     string
		setup    func(t *testing.T, e *scriptEnv)
		forgot   bool // the case relies on Redis reporting entries-read or lag as null (so the script counts)
		lag      int64
		pending  int64
		streamLn int64
	}{
		{name: "entries-read known: Redis's own lag", lag: 7, pending: 3, streamLn: 10},
		{name: "entries-read known but lag unknown (a deletion after the cursor): counted", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "XDEL", "orders", "8-0")
		}, forgot: true, lag: 6, pending: 3, streamLn: 9},
		{name: "SETID to an entry: counted after it", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "XGROUP", "SETID", "orders", "bridge:a", "4-0")
		}, forgot: true, lag: 6, pending: 3, streamLn: 10},
		{name: "SETID between entries", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "XGROUP", "SETID", "orders", "bridge:a", "5-5")
		}, forgot: true, lag: 5, pending: 3, streamLn: 10},
		{name: "SETID 0: every entry", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "XGROUP", "SETID", "orders", "bridge:a", "0")
		}, forgot: true, lag: 10, pending: 3, streamLn: 10},
		{name: "SETID $: nothing", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "XGROUP", "SETID", "orders", "bridge:a", "$")
		}, forgot: true, lag: 0, pending: 3, streamLn: 10},
		{name: "deleted entries are not counted", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "XDEL", "orders", "6-0", "9-0")
			e.must(t, "XGROUP", "SETID", "orders", "bridge:a", "3-0")
		}, forgot: true, lag: 5, pending: 3, streamLn: 8},
		{name: "more than one batch of a hundred", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "EVAL", "for i = 11, 260 do redis.call('XADD', KEYS[1], i .. '-0', '_payload', 'x') end", "1", "orders")
			e.must(t, "XGROUP", "SETID", "orders", "bridge:a", "3-0")
		}, forgot: true, lag: 257, pending: 3, streamLn: 260},
		{name: "the count stops at its cap", setup: func(t *testing.T, e *scriptEnv) {
			e.must(t, "EVAL", "for i = 11, "+strconv.Itoa(lagCountCap+150)+" do redis.call('XADD', KEYS[1], i .. '-0', '_payload', 'x') end", "1", "orders")
			e.must(t, "XGROUP", "SETID", "orders", "bridge:a", "0")
		}, forgot: true, lag: lagCountCap, pending: 3, streamLn: lagCountCap + 150},
	}
	e := newScriptEnv(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			for i := 1; i <= 10; i++ {
				e.must(t, "XADD", "orders", fmt.Sprintf("%d-0", i), "_payload", "x")
			}
			e.must(t, "XGROUP", "CREATE", "orders", "bridge:a", "0")
			e.must(t, "XGROUP", "CREATE", "orders", "bridge:other", "$")
			e.must(t, "XREADGROUP", "GROUP", "bridge:a", "c", "COUNT", "3", "STREAMS", "orders", ">")
			if c.setup != nil {
				c.setup(t, e)
			}
			if got := lagUnknown(t, e, "orders", "bridge:a"); got != c.forgot {
				t.Fatalf("premise: XINFO GROUPS entries-read or lag null = %v, want %v", got, c.forgot)
			}
			st, err := e.b.SubscriptionStats(e.ctx, testSub("a", "orders"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Lag != c.lag || st.Pending != c.pending || st.StreamLength != c.streamLn {
				t.Fatalf("lag %d pending %d length %d; want %d %d %d", st.Lag, st.Pending, st.StreamLength, c.lag, c.pending, c.streamLn)
			}
		})
	}
	t.Run("countAfter on a missing stream and from the start", func(t *testing.T) {
		e.reset(t)
		if n, err := e.b.countAfter(e.ctx, "missing", ""); err != nil || n != 0 {
			t.Fatalf("missing stream: %d %v", n, err)
		}
		e.must(t, "XADD", "s", "1-0", "f", "v")
		e.must(t, "XADD", "s", "2-0", "f", "v")
		if n, err := e.b.countAfter(e.ctx, "s", ""); err != nil || n != 2 {
			t.Fatalf("from the start: %d %v", n, err)
		}
		if n, err := e.b.countAfter(e.ctx, "s", "2-0"); err != nil || n != 0 {
			t.Fatalf("after the last: %d %v", n, err)
		}
	})
}

// lagUnknown reports whether XINFO GROUPS leaves entries-read or lag of group null.
func lagUnknown(t *testing.T, e *scriptEnv, stream, group string) bool {
	t.Helper()
	groups, err := e.must(t, "XINFO", "GROUPS", stream).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		kv, err := g.AsMap()
		if err != nil {
			t.Fatal(err)
		}
		nm := kv["name"]
		if name, _ := nm.ToString(); name == group {
			read, ok1 := kv["entries-read"]
			lag, ok2 := kv["lag"]
			if !ok1 || !ok2 {
				t.Fatalf("XINFO GROUPS has no entries-read or lag (Redis < 7?): %v", kv)
			}
			return read.IsNil() || lag.IsNil()
		}
	}
	t.Fatalf("no group %s", group)
	return false
}

// The hard retention cap removes entries a group never read. Redis before the fixes of
// redis/redis#13473 and #13958 (7.0 and 7.2 among them) keeps counting them in XINFO GROUPS
// lag, and keeps a wrong entries-read after the group reads on; the trim script corrects
// the group's entries-read, so the lag is right at once and stays right.
func TestLagAfterHardCapExpiry(t *testing.T) {
	e := newScriptEnv(t)
	for i := 1; i <= 10; i++ {
		e.must(t, "XADD", "orders", fmt.Sprintf("%d-0", i*1000), "_payload", "x")
	}
	e.must(t, "XGROUP", "CREATE", "orders", "bridge:a", "0")
	e.must(t, "XREADGROUP", "GROUP", "bridge:a", "c", "COUNT", "1", "STREAMS", "orders", ">") // 1000 pending
	// Entries before 3500 expire: 1000 (pending, acked by the trim), 2000 and 3000 (never read).
	res, err := e.b.Trim(e.ctx, "orders", core.TrimParams{Now: time.UnixMilli(7500), Retention: time.Second, MaxRetention: 4 * time.Second})
	if err != nil || res.Expired["bridge:a"] != 3 {
		t.Fatalf("trim: %+v %v", res, err)
	}
	s := testSub("a", "orders")
	st, err := e.b.SubscriptionStats(e.ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if st.Lag != 7 || st.StreamLength != 7 {
		t.Errorf("after the expiry: lag %d (stream %d), want 7: entries 4000..10000 are left to read", st.Lag, st.StreamLength)
	}
	e.must(t, "XREADGROUP", "GROUP", "bridge:a", "c", "COUNT", "100", "STREAMS", "orders", ">")
	if st, err = e.b.SubscriptionStats(e.ctx, s); err != nil || st.Lag != 0 {
		t.Errorf("after reading everything: lag %d, %v; want 0", st.Lag, err)
	}
}
