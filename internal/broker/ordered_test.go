package broker

import (
	"testing"
	"time"
)

func TestLeaseScripts(t *testing.T) {
	type step struct {
		op     string // "hold", "release", "sleep"
		sub    string // subscription name, "o" unless set
		who    string
		ttl    time.Duration
		want   bool          // hold: whether who holds it afterwards
		sleep  time.Duration // sleep
		holder string        // the lease key's value after the step, "" = no key
		minTTL time.Duration // hold that succeeds: the key's PTTL is at least this
	}
	hold := func(who string, ttl time.Duration, want bool, holder string) step {
		return step{op: "hold", who: who, ttl: ttl, want: want, holder: holder}
	}
	release := func(who, holder string) step { return step{op: "release", who: who, holder: holder} }
	sleep := func(d time.Duration, holder string) step { return step{op: "sleep", sleep: d, holder: holder} }
	cases := []struct {
		name  string
		steps []step
	}{
		{"the first caller takes it, another is refused", []step{
			hold("A", 10*time.Second, true, "A"),
			hold("B", 10*time.Second, false, "A"),
		}},
		{"the holder renews, for the new ttl", []step{
			hold("A", 10*time.Second, true, "A"),
			{op: "hold", who: "A", ttl: time.Minute, want: true, holder: "A", minTTL: 50 * time.Second},
		}},
		{"a renewal keeps it past the first ttl", []step{
			hold("A", 300*time.Millisecond, true, "A"),
			sleep(200*time.Millisecond, "A"),
			hold("A", 300*time.Millisecond, true, "A"),
			sleep(200*time.Millisecond, "A"),
			hold("B", time.Second, false, "A"),
		}},
		{"the ttl lapses: another takes over, the old holder is refused", []step{
			hold("A", 100*time.Millisecond, true, "A"),
			hold("B", time.Second, false, "A"),
			sleep(150*time.Millisecond, ""),
			hold("B", 10*time.Second, true, "B"),
			hold("A", 10*time.Second, false, "B"),
		}},
		{"only the holder releases", []step{
			hold("A", 10*time.Second, true, "A"),
			release("B", "A"),
			hold("B", 10*time.Second, false, "A"),
			release("A", ""),
			hold("B", 10*time.Second, true, "B"),
		}},
		{"releasing a free lease is harmless", []step{
			release("A", ""),
			hold("A", 10*time.Second, true, "A"),
		}},
		{"each subscription has its own lease", []step{
			hold("A", 10*time.Second, true, "A"),
			{op: "hold", sub: "p", who: "B", ttl: 10 * time.Second, want: true, holder: "B"},
			{op: "release", sub: "p", who: "B", holder: ""},
			{op: "hold", who: "A", ttl: 10 * time.Second, want: true, holder: "A"},
		}},
	}
	e := newScriptEnv(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			for i, st := range c.steps {
				name := st.sub
				if name == "" {
					name = "o"
				}
				s := testSub(name, "orders")
				s.Ordered = true
				switch st.op {
				case "hold":
					got, err := e.b.HoldLease(e.ctx, s, st.who, st.ttl)
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					if got != st.want {
						t.Fatalf("step %d: HoldLease(%s) = %v, want %v", i, st.who, got, st.want)
					}
					if got {
						pttl := e.int(t, "PTTL", leaderKey(s.Subject, s.Name))
						if pttl <= 0 || pttl > st.ttl.Milliseconds() || pttl < st.minTTL.Milliseconds() {
							t.Fatalf("step %d: PTTL %d ms after holding for %v", i, pttl, st.ttl)
						}
					}
				case "release":
					if err := e.b.ReleaseLease(e.ctx, s, st.who); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
				case "sleep":
					time.Sleep(st.sleep)
				}
				got, _ := e.str(t, "GET", leaderKey(s.Subject, s.Name))
				if got != st.holder {
					t.Fatalf("step %d (%s %s): lease held by %q, want %q", i, st.op, st.who, got, st.holder)
				}
			}
		})
	}
}
