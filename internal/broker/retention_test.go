package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/redis/rueidis"
)

// retentionCase runs the trim script on a stream of explicit ids 1000-0 .. 10000-0 (one per
// second of a made-up clock) with the given groups, at the given made-up times.
type retentionCase struct {
	name string
	// setup prepares groups on the stream "s" (entries 1000-0 ... 10000-0 exist).
	setup func(t *testing.T, do func(args ...string) rueidis.RedisResult)
	// passes are the made-up times (ms) of the passes; the last one's result is checked.
	passes       []int64
	retention    time.Duration
	maxRetention time.Duration
	// firstLeft is the id of the first entry left; "" when the stream is empty.
	firstLeft string
	expired   map[string]int64
}

func TestTrimScript(t *testing.T) {
	ms := time.Millisecond
	cases := []retentionCase{
		{
			name:   "no group: entries older than the retention, once a sample is that old",
			passes: []int64{6000, 6500, 7100}, retention: 1000 * ms,
			firstLeft: "6000-0",
		},
		{
			name:   "no group: nothing before a sample is old enough",
			passes: []int64{6000, 6500}, retention: 1000 * ms,
			firstLeft: "1000-0",
		},
		{
			name: "a group that read and acked up to 4000: kept from 5000",
			setup: func(t *testing.T, do func(args ...string) rueidis.RedisResult) {
				do("XGROUP", "CREATE", "s", "bridge:a", "4000-0")
			},
			passes: []int64{20000, 30000}, retention: 1000 * ms,
			firstLeft: "5000-0",
		},
		{
			name: "a pending entry holds everything after it",
			setup: func(t *testing.T, do func(args ...string) rueidis.RedisResult) {
				do("XGROUP", "CREATE", "s", "bridge:a", "2000-0")
				do("XREADGROUP", "GROUP", "bridge:a", "c", "COUNT", "5", "STREAMS", "s", ">") // 3000..7000 pending
				do("XACK", "s", "bridge:a", "3000-0", "5000-0")
			},
			passes: []int64{20000, 30000}, retention: 1000 * ms,
			firstLeft: "4000-0",
		},
		{
			name: "a foreign group (ruststream-fred's) counts like the bridge's",
			setup: func(t *testing.T, do func(args ...string) rueidis.RedisResult) {
				do("XGROUP", "CREATE", "s", "bridge:a", "$")
				do("XGROUP", "CREATE", "s", "rust-workers", "0")
				do("XREADGROUP", "GROUP", "rust-workers", "w1", "COUNT", "3", "STREAMS", "s", ">") // 1000..3000 pending
				do("XACK", "s", "rust-workers", "1000-0")
			},
			passes: []int64{20000, 30000}, retention: 1000 * ms,
			firstLeft: "2000-0",
		},
		{
			name: "acked, but not yet for the retention",
			setup: func(t *testing.T, do func(args ...string) rueidis.RedisResult) {
				do("XGROUP", "CREATE", "s", "bridge:a", "$")
			},
			passes: []int64{20000, 20500}, retention: 1000 * ms,
			firstLeft: "1000-0",
		},
		{
			name: "the hard cap removes what a paused group never read, and counts it",
			setup: func(t *testing.T, do func(args ...string) rueidis.RedisResult) {
				do("XGROUP", "CREATE", "s", "bridge:paused", "0")
				do("XGROUP", "CREATE", "s", "bridge:busy", "0")
				do("XREADGROUP", "GROUP", "bridge:busy", "c", "COUNT", "4", "STREAMS", "s", ">") // 1000..4000 pending
			},
			passes: []int64{7500}, retention: 1000 * ms, maxRetention: 4000 * ms,
			firstLeft: "4000-0",
			expired:   map[string]int64{"bridge:paused": 3, "bridge:busy": 3},
		},
	}
	run := func(t *testing.T, c retentionCase, client rueidis.Client) {
		ctx := context.Background()
		b := New(client)
		do := func(args ...string) rueidis.RedisResult {
			res := client.Do(ctx, client.B().Arbitrary(args[0]).Args(args[1:]...).Build())
			if err := res.Error(); err != nil {
				t.Fatalf("%v: %v", args, err)
			}
			return res
		}
		do("FLUSHALL")
		for i := 1; i <= 10; i++ {
			do("XADD", "s", fmt.Sprintf("%d-0", i*1000), "_payload", "x")
		}
		if c.setup != nil {
			c.setup(t, do)
		}
		var res core.TrimResult
		for _, at := range c.passes {
			var err error
			res, err = b.Trim(ctx, "s", core.TrimParams{Now: time.UnixMilli(at), Retention: c.retention, MaxRetention: c.maxRetention})
			if err != nil {
				t.Fatal(err)
			}
		}
		entries, err := client.Do(ctx, client.B().Xrange().Key("s").Start("-").End("+").Count(1).Build()).AsXRange()
		if err != nil {
			t.Fatal(err)
		}
		first := ""
		if len(entries) > 0 {
			first = entries[0].ID
		}
		if first != c.firstLeft {
			t.Fatalf("first entry left %q, want %q (result %+v)", first, c.firstLeft, res)
		}
		if n, _ := client.Do(ctx, client.B().Xlen().Key("s").Build()).AsInt64(); n != res.Length {
			t.Fatalf("reported length %d, XLEN %d", res.Length, n)
		}
		if fmt.Sprint(res.Expired) != fmt.Sprint(c.expired) {
			t.Fatalf("expired %v, want %v", res.Expired, c.expired)
		}
		// Expired pending entries were acknowledged: no reclaim finds them missing later.
		for g := range c.expired {
			p, _ := client.Do(ctx, client.B().Xpending().Key("s").Group(g).Start("-").End("("+c.firstLeft).Count(100).Build()).ToArray()
			if len(p) != 0 {
				t.Fatalf("%s still has %d pending entries below the cap", g, len(p))
			}
		}
	}
	rs := redistest.Start(t, redistest.Options{})
	embedded, err := Connect(ConnOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(embedded.Close)
	for _, c := range cases {
		t.Run("redis/"+c.name, func(t *testing.T) { run(t, c, rs.Client(t)) })
		t.Run("embedded/"+c.name, func(t *testing.T) { run(t, c, embedded.Client) })
	}
}

// Dead letters older than their subscription's dlq_retention go; in-flight reports of
// processes long gone leave the stats; a missing stream or a key of another type is no
// error.
func TestTrimDeadLettersAndStaleReports(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	b := New(rs.Client(t))
	ctx := context.Background()
	sub := &core.Subscription{Name: "a", Subject: "gone", DLQRetention: core.Duration(time.Hour)}
	now := time.Now()
	rs.Do(t, "XADD", dlqKey("gone", "a"), fmt.Sprintf("%d-0", now.Add(-2*time.Hour).UnixMilli()), "_payload", "old")
	rs.Do(t, "XADD", dlqKey("gone", "a"), fmt.Sprintf("%d-0", now.Add(-time.Minute).UnixMilli()), "_payload", "new")
	rs.Do(t, "HSET", statsKey("gone", "a"), "delivered", "5",
		"inflight:dead", fmt.Sprintf("0:%d", now.Add(-2*time.Hour).UnixMilli()),
		"inflight:alive", fmt.Sprintf("1:%d", now.UnixMilli()))
	res, err := b.Trim(ctx, "gone", core.TrimParams{Now: now, Retention: time.Minute, Subscriptions: []*core.Subscription{sub}})
	if err != nil || res.Exists || res.DeadLettersTrimmed != 1 {
		t.Fatalf("trim: %+v %v", res, err)
	}
	if n, _ := rs.Do(t, "XLEN", dlqKey("gone", "a")).AsInt64(); n != 1 {
		t.Fatalf("%d dead letters left, want the recent one", n)
	}
	fields, _ := rs.Do(t, "HKEYS", statsKey("gone", "a")).AsStrSlice()
	if fmt.Sprint(fields) != "[delivered inflight:alive]" {
		t.Fatalf("stats fields %v", fields)
	}
	rs.Do(t, "SET", "astring", "x")
	if res, err := b.Trim(ctx, "astring", core.TrimParams{Now: now, Retention: time.Minute}); err != nil || res.Exists {
		t.Fatalf("trim of a string: %+v %v", res, err)
	}
}
