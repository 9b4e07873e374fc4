package broker

import (
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"
)

// claimStep is one call of claimLeased on a made-up clock (ms).
type claimStep struct {
	at    int64
	lease time.Duration
	limit int
	want  []leased // Record is filled in from the case's records
	next  int64    // 0: nothing left in the set
}

type leasedCase struct {
	name    string
	counted bool
	due     map[string]int64  // zset: member -> due ms
	records map[string]string // member -> record; members missing here have none
	counts  map[string]int64
	steps   []claimStep
	// after is the zset once the steps ran; afterCounts the counts hash (counted sets).
	after       map[string]int64
	afterCounts map[string]int64
}

// The claim script of the leased sets (retries, scheduled publishes), called directly so
// the clock and the lease are the test's.
func TestClaimLeasedScript(t *testing.T) {
	ms := time.Millisecond
	recs := func(ids ...string) map[string]string {
		m := map[string]string{}
		for _, id := range ids {
			m[id] = "rec-" + id
		}
		return m
	}
	cases := []leasedCase{
		{
			name:    "due members (score <= now) are leased until now+lease and counted; a future one stays",
			counted: true, due: map[string]int64{"a": 900, "b": 1000, "c": 1100}, records: recs("a", "b", "c"),
			steps: []claimStep{{at: 1000, lease: 500 * ms, limit: 10,
				want: []leased{{ID: "a", Count: 1}, {ID: "b", Count: 1}}, next: 1100}},
			after:       map[string]int64{"a": 1500, "b": 1500, "c": 1100},
			afterCounts: map[string]int64{"a": 1, "b": 1},
		},
		{
			name:    "the count grows from the stored one",
			counted: true, due: map[string]int64{"a": 900}, records: recs("a"), counts: map[string]int64{"a": 2},
			steps: []claimStep{{at: 1000, lease: 500 * ms, limit: 10,
				want: []leased{{ID: "a", Count: 3}}, next: 1500}},
			after:       map[string]int64{"a": 1500},
			afterCounts: map[string]int64{"a": 3},
		},
		{
			name:    "a leased member is not handed out again before its lease ends, then is",
			counted: true, due: map[string]int64{"a": 1000}, records: recs("a"),
			steps: []claimStep{
				{at: 1000, lease: 500 * ms, limit: 10, want: []leased{{ID: "a", Count: 1}}, next: 1500},
				{at: 1200, lease: 500 * ms, limit: 10, next: 1500},
				{at: 1499, lease: 500 * ms, limit: 10, next: 1500},
				{at: 1500, lease: 500 * ms, limit: 10, want: []leased{{ID: "a", Count: 2}}, next: 2000},
			},
			after:       map[string]int64{"a": 2000},
			afterCounts: map[string]int64{"a": 2},
		},
		{
			name:    "a member without a record is dropped with its count",
			counted: true, due: map[string]int64{"a": 900, "gone": 950, "b": 5000}, records: recs("a", "b"),
			counts: map[string]int64{"gone": 3},
			steps: []claimStep{{at: 1000, lease: 500 * ms, limit: 10,
				want: []leased{{ID: "a", Count: 1}}, next: 1500}},
			after:       map[string]int64{"a": 1500, "b": 5000},
			afterCounts: map[string]int64{"a": 1},
		},
		{
			name:    "the limit is respected, earliest first; next is the earliest member left",
			counted: true, due: map[string]int64{"e": 500, "d": 400, "c": 300, "b": 200, "a": 100},
			records: recs("a", "b", "c", "d", "e"),
			steps: []claimStep{
				{at: 1000, lease: 500 * ms, limit: 2, want: []leased{{ID: "a", Count: 1}, {ID: "b", Count: 1}}, next: 300},
				{at: 1000, lease: 500 * ms, limit: 2, want: []leased{{ID: "c", Count: 1}, {ID: "d", Count: 1}}, next: 500},
			},
			after:       map[string]int64{"a": 1500, "b": 1500, "c": 1500, "d": 1500, "e": 500},
			afterCounts: map[string]int64{"a": 1, "b": 1, "c": 1, "d": 1},
		},
		{
			name:    "limit 0 claims nothing",
			counted: true, due: map[string]int64{"a": 100}, records: recs("a"),
			steps: []claimStep{{at: 1000, lease: 500 * ms, limit: 0, next: 100}},
			after: map[string]int64{"a": 100},
		},
		{
			name:    "nothing due: next is the earliest member",
			counted: true, due: map[string]int64{"a": 2000, "b": 3000}, records: recs("a", "b"),
			steps: []claimStep{{at: 1000, lease: 500 * ms, limit: 10, next: 2000}},
			after: map[string]int64{"a": 2000, "b": 3000},
		},
		{
			name:    "empty set: nothing, next zero",
			counted: true,
			steps:   []claimStep{{at: 1000, lease: 500 * ms, limit: 10}},
			after:   map[string]int64{},
		},
		{
			name:    "a record is handed out byte for byte",
			counted: true, due: map[string]int64{"a": 100}, records: map[string]string{"a": "\x00\xff{\"x\":1}\r\n"},
			steps:       []claimStep{{at: 1000, lease: 500 * ms, limit: 10, want: []leased{{ID: "a", Count: 1}}, next: 1500}},
			after:       map[string]int64{"a": 1500},
			afterCounts: map[string]int64{"a": 1},
		},
		{
			name:    "wall-clock scores survive the round trip exactly",
			counted: true, due: map[string]int64{"a": 1732420000123}, records: recs("a"),
			steps: []claimStep{{at: 1732420000123, lease: 30 * time.Second, limit: 10,
				want: []leased{{ID: "a", Count: 1}}, next: 1732420030123}},
			after:       map[string]int64{"a": 1732420030123},
			afterCounts: map[string]int64{"a": 1},
		},
		{
			name: "uncounted set: leased, no count anywhere",
			due:  map[string]int64{"a": 900, "b": 2000}, records: recs("a", "b"),
			steps: []claimStep{{at: 1000, lease: 500 * ms, limit: 10, want: []leased{{ID: "a"}}, next: 1500}},
			after: map[string]int64{"a": 1500, "b": 2000},
		},
		{
			name:  "uncounted set: a member without a record is dropped",
			due:   map[string]int64{"x": 900},
			steps: []claimStep{{at: 1000, lease: 500 * ms, limit: 10}},
			after: map[string]int64{},
		},
	}
	e := newScriptEnv(t)
	zkey, rkey, ckey := retryKey("t", "s"), retryDataKey("t", "s"), retryCountKey("t", "s")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			for id, score := range c.due {
				e.must(t, "ZADD", zkey, strconv.FormatInt(score, 10), id)
			}
			for id, rec := range c.records {
				e.must(t, "HSET", rkey, id, rec)
			}
			for id, n := range c.counts {
				e.must(t, "HSET", ckey, id, strconv.FormatInt(n, 10))
			}
			keys := []string{zkey, rkey}
			if c.counted {
				keys = append(keys, ckey)
			}
			for i, st := range c.steps {
				items, next, err := e.b.claimLeased(e.ctx, keys, time.UnixMilli(st.at), st.lease, st.limit)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				want := make([]leased, len(st.want))
				for j, w := range st.want {
					w.Record = c.records[w.ID]
					want[j] = w
				}
				if (len(items) != 0 || len(want) != 0) && !reflect.DeepEqual(items, want) {
					t.Fatalf("step %d: claimed %+v, want %+v", i, items, want)
				}
				if st.next == 0 && !next.IsZero() || st.next != 0 && next.UnixMilli() != st.next {
					t.Fatalf("step %d: next %v (%d ms), want %d ms", i, next, next.UnixMilli(), st.next)
				}
			}
			if got := e.zset(t, zkey); fmt.Sprint(got) != fmt.Sprint(c.after) {
				t.Fatalf("zset after: %v, want %v", got, c.after)
			}
			gotCounts := map[string]int64{}
			for id, v := range e.hash(t, ckey) {
				gotCounts[id], _ = strconv.ParseInt(v, 10, 64)
			}
			wantCounts := c.afterCounts
			if wantCounts == nil {
				wantCounts = map[string]int64{}
			}
			if !c.counted && len(c.counts) == 0 && e.exists(t, ckey) {
				t.Fatal("an uncounted claim wrote counts")
			}
			if fmt.Sprint(gotCounts) != fmt.Sprint(wantCounts) {
				t.Fatalf("counts after: %v, want %v", gotCounts, wantCounts)
			}
			// Records are never touched by a claim.
			if got := e.hash(t, rkey); len(got) != len(c.records) {
				t.Fatalf("records after: %v, want %v", got, c.records)
			}
		})
	}
}
