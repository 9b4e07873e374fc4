package broker

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

// settleModeCase prepares a message held the way one settle mode settles it, and names the
// keys that settling it may change (besides the subscription's retry set and DLQ).
type settleModeCase struct {
	name    string
	prepare func(t *testing.T, e *scriptEnv, s *core.Subscription) *core.Message
	touched func(s *core.Subscription, m *core.Message) []string
	// settled checks that the original was settled (and nothing beside it).
	settled func(t *testing.T, e *scriptEnv, s *core.Subscription, m *core.Message)
}

func settleCases() []settleModeCase {
	return []settleModeCase{
		{
			name: "stream: XACK in the subscription's own group",
			prepare: func(t *testing.T, e *scriptEnv, s *core.Subscription) *core.Message {
				m := e.streamMessage(t, s, "hello", map[string]string{"content-type": "text/plain", "x-a": "1"})
				// Another subscription of the subject holds the same entry.
				e.must(t, "XGROUP", "CREATE", s.Subject, groupName("other"), "0")
				e.must(t, "XREADGROUP", "GROUP", groupName("other"), "c9", "STREAMS", s.Subject, ">")
				return m
			},
			touched: func(s *core.Subscription, m *core.Message) []string { return []string{s.Subject} },
			settled: func(t *testing.T, e *scriptEnv, s *core.Subscription, m *core.Message) {
				if n := e.pending(t, s.Subject, groupName(s.Name)); n != 0 {
					t.Errorf("%d pending in %s, want the original acked", n, groupName(s.Name))
				}
				if n := e.pending(t, s.Subject, groupName("other")); n != 1 {
					t.Errorf("%d pending in the other subscription's group, want 1 (untouched)", n)
				}
				if n := e.int(t, "XLEN", s.Subject); n != 1 {
					t.Errorf("XLEN %d: the entry itself must stay for the other groups", n)
				}
			},
		},
		{
			name: "retry: a leased member of the retry set",
			prepare: func(t *testing.T, e *scriptEnv, s *core.Subscription) *core.Message {
				m, _ := e.retryMessage(t, s, core.MessageID(s.Subject, "5-0"), "again", map[string]string{"x-b": "2"}, 3)
				e.retryMessage(t, s, core.MessageID(s.Subject, "6-0"), "bystander", nil, 1)
				return m
			},
			touched: func(s *core.Subscription, m *core.Message) []string { return nil },
			settled: nil, // checked per script: a retry keeps it, a dead letter removes it
		},
		{
			name: "list: LREM from the processing list and HDEL of its list count",
			prepare: func(t *testing.T, e *scriptEnv, s *core.Subscription) *core.Message {
				m := e.listMessage(t, s, "c1", "first")
				e.listMessage(t, s, "c1", "second") // stays in the processing list
				return m
			},
			touched: func(s *core.Subscription, m *core.Message) []string {
				return []string{m.Queue, listCountKey(s.Subject, s.Name)}
			},
			settled: func(t *testing.T, e *scriptEnv, s *core.Subscription, m *core.Message) {
				left := e.strs(t, "LRANGE", m.Queue, "0", "-1")
				if len(left) != 1 || left[0] == m.EntryID {
					t.Errorf("processing list %q: want only the other message", left)
				}
				counts := e.hash(t, listCountKey(s.Subject, s.Name))
				if _, ok := counts[m.ID]; ok || len(counts) != 1 {
					t.Errorf("list counts %v: want only the other message's", counts)
				}
			},
		},
		{
			name: "unsettled (simple list): nothing to settle",
			prepare: func(t *testing.T, e *scriptEnv, s *core.Subscription) *core.Message {
				for _, b := range []string{"one", "two"} {
					if _, err := e.b.PublishList(e.ctx, s.Subject, []byte(b), nil); err != nil {
						t.Fatal(err)
					}
				}
				ls := *s
				ls.Transport, ls.ListMode = core.TransportList, core.ListSimple
				msgs, err := e.b.PopList(e.ctx, &ls, "c1", 1)
				if err != nil || len(msgs) != 1 || msgs[0].Origin != core.Unsettled {
					t.Fatalf("simple pop: %+v %v", msgs, err)
				}
				return &msgs[0]
			},
			touched: func(s *core.Subscription, m *core.Message) []string { return nil },
			settled: func(t *testing.T, e *scriptEnv, s *core.Subscription, m *core.Message) {
				if n := e.int(t, "LLEN", s.Subject); n != 1 {
					t.Errorf("LLEN %d, want the unpopped message left alone", n)
				}
			},
		},
	}
}

// checkOnlyTouched fails when a key outside allowed changed between two snapshots.
func checkOnlyTouched(t *testing.T, before, after map[string]string, allowed []string) {
	t.Helper()
	ok := map[string]bool{}
	for _, k := range allowed {
		ok[k] = true
	}
	for k, v := range after {
		if !ok[k] && before[k] != v {
			t.Errorf("key %s changed", k)
		}
	}
	for k := range before {
		if _, there := after[k]; !there && !ok[k] {
			t.Errorf("key %s deleted", k)
		}
	}
}

func TestRetryScript(t *testing.T) {
	e := newScriptEnv(t)
	for _, c := range settleCases() {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := e.live(t, testSub("a", "orders"))
			m := c.prepare(t, e, s)
			// A retried message keeps the time of its first attempt; a first failure
			// records its own. Either way the record carries the failed attempt's status.
			wantFirst := time.Now().Add(-10 * time.Millisecond).UnixMilli()
			if m.Origin == core.FromRetry {
				m.FirstAttempt = time.UnixMilli(1_700_000_000_000)
				wantFirst = 1_700_000_000_000
			}
			before := e.snapshot(t)
			due := time.Now().Add(time.Minute).Truncate(time.Millisecond)
			attempt := &core.Attempt{MessageID: m.ID, Status: 503, Latency: 10 * time.Millisecond, Outcome: core.OutcomeRetry}
			m.LastStatus = 503 // the engine sets the failure context on what it retries
			if err := e.b.Retry(e.ctx, s, m, due, attempt); err != nil {
				t.Fatal(err)
			}
			after := e.snapshot(t)
			checkOnlyTouched(t, before, after, append(c.touched(s, m),
				retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)))

			if got := e.zset(t, retryKey(s.Subject, s.Name))[m.ID]; got != due.UnixMilli() {
				t.Errorf("due %d, want %d", got, due.UnixMilli())
			}
			if n, _ := e.str(t, "HGET", retryCountKey(s.Subject, s.Name), m.ID); n != strconv.Itoa(m.Deliveries) {
				t.Errorf("count %q, want %d (the deliveries so far)", n, m.Deliveries)
			}
			raw, _ := e.str(t, "HGET", retryDataKey(s.Subject, s.Name), m.ID)
			if m.Origin == core.FromRetry {
				if n := len(e.zset(t, retryKey(s.Subject, s.Name))); n != 2 {
					t.Errorf("%d in the retry set, want 2", n)
				}
			}
			var rec retryRecord
			if err := json.Unmarshal([]byte(raw), &rec); err != nil {
				t.Fatalf("record %q: %v", raw, err)
			}
			if m.Origin != core.FromRetry && rec.FirstAttempt >= wantFirst-50 && rec.FirstAttempt <= time.Now().UnixMilli() {
				rec.FirstAttempt = wantFirst // a first failure: its own time, less the push's latency
			}
			want := retryRecord{ID: m.ID, Body: m.Body, Headers: m.Headers, LastStatus: 503, FirstAttempt: wantFirst}
			if len(want.Headers) == 0 {
				want.Headers = nil // omitted when empty
			}
			if !reflect.DeepEqual(rec, want) {
				t.Errorf("record %+v, want %+v", rec, want)
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
				err := e.b.Retry(e.ctx, s, m, time.Now(), nil)
				if !errors.Is(err, core.ErrGone) {
					t.Fatalf("Retry: %v, want core.ErrGone", err)
				}
				sameSnapshot(t, before, e.snapshot(t))
			})
		}
	}
}

func TestAckRetriesScript(t *testing.T) {
	e := newScriptEnv(t)
	cases := []struct {
		name string
		ack  []string
		left []string
	}{
		{"the given ids leave zset, records and counts; unknown ids are ignored", []string{"m1", "m3", "nope"}, []string{"m2"}},
		{"all of them: the keys are gone", []string{"m1", "m2", "m3"}, nil},
		{"twice the same id", []string{"m2", "m2"}, []string{"m1", "m3"}},
		{"no ids: nothing happens", nil, []string{"m1", "m2", "m3"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.reset(t)
			s := testSub("a", "orders")
			for _, id := range []string{"m1", "m2", "m3"} {
				e.retryMessage(t, s, id, "body-"+id, nil, 2)
			}
			if err := e.b.AckRetries(e.ctx, s, c.ack...); err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)} {
				var got []string
				if key == retryKey(s.Subject, s.Name) {
					got = e.strs(t, "ZRANGE", key, "0", "-1")
				} else {
					got = e.strs(t, "HKEYS", key)
				}
				if len(got) != len(c.left) {
					t.Fatalf("%s holds %v, want %v", key, got, c.left)
				}
				have := map[string]bool{}
				for _, id := range got {
					have[id] = true
				}
				for _, id := range c.left {
					if !have[id] {
						t.Fatalf("%s holds %v, want %v", key, got, c.left)
					}
				}
			}
		})
	}
}

// ClaimRetries is the claim script on a subscription's counted retry set: the lifecycle of
// one message from its first failure to its ack.
func TestClaimRetries(t *testing.T) {
	e := newScriptEnv(t)
	s := e.live(t, testSub("a", "orders"))
	other := e.live(t, testSub("b", "orders"))
	headers := map[string]string{"content-type": "application/json", "x-a": "1"}
	m := e.streamMessage(t, s, `{"n":1}`, headers)
	now := time.Now().Truncate(time.Millisecond)
	due := now.Add(time.Hour)
	lease := 30 * time.Second

	claim := func(t *testing.T, sub *core.Subscription, at time.Time) ([]core.Message, time.Time) {
		t.Helper()
		msgs, next, err := e.b.ClaimRetries(e.ctx, sub, at, lease, 10)
		if err != nil {
			t.Fatal(err)
		}
		return msgs, next
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a failed first delivery waits in the retry set", func(t *testing.T) {
			if err := e.b.Retry(e.ctx, s, m, due, nil); err != nil {
				t.Fatal(err)
			}
		}},
		{"not due: nothing, next is its due time", func(t *testing.T) {
			msgs, next := claim(t, s, now)
			if len(msgs) != 0 || !next.Equal(due) {
				t.Fatalf("claimed %+v, next %v; want nothing, next %v", msgs, next, due)
			}
		}},
		{"another subscription of the subject never sees it", func(t *testing.T) {
			if msgs, next := claim(t, other, due); len(msgs) != 0 || !next.IsZero() {
				t.Fatalf("other subscription claimed %+v, next %v", msgs, next)
			}
		}},
		{"due: handed out as the second delivery, leased", func(t *testing.T) {
			msgs, next := claim(t, s, due)
			want := core.Message{ID: m.ID, Subject: s.Subject, Origin: core.FromRetry, Body: m.Body, Headers: headers, Deliveries: 2}
			if len(msgs) == 1 && time.Since(msgs[0].FirstAttempt) < time.Minute {
				want.FirstAttempt = msgs[0].FirstAttempt // when the first delivery failed
			}
			if len(msgs) != 1 || !reflect.DeepEqual(msgs[0], want) {
				t.Fatalf("claimed %+v, want %+v", msgs, want)
			}
			if !next.Equal(due.Add(lease)) {
				t.Fatalf("next %v, want the lease end %v", next, due.Add(lease))
			}
		}},
		{"leased: not handed out again before the lease ends", func(t *testing.T) {
			if msgs, _ := claim(t, s, due.Add(lease-time.Millisecond)); len(msgs) != 0 {
				t.Fatalf("claimed %+v during the lease", msgs)
			}
		}},
		{"the holder died: after the lease it comes again, third delivery", func(t *testing.T) {
			msgs, _ := claim(t, s, due.Add(lease))
			if len(msgs) != 1 || msgs[0].Deliveries != 3 {
				t.Fatalf("claimed %+v, want the message as delivery 3", msgs)
			}
			// It failed again: back to the set, its record kept.
			if err := e.b.Retry(e.ctx, s, &msgs[0], due.Add(2*time.Hour), nil); err != nil {
				t.Fatal(err)
			}
		}},
		{"claimed once more: fourth delivery, same body and headers", func(t *testing.T) {
			msgs, _ := claim(t, s, due.Add(2*time.Hour))
			if len(msgs) != 1 || msgs[0].Deliveries != 4 || string(msgs[0].Body) != string(m.Body) || !reflect.DeepEqual(msgs[0].Headers, headers) {
				t.Fatalf("claimed %+v", msgs)
			}
		}},
		{"acked: the set is empty, next zero", func(t *testing.T) {
			if err := e.b.AckRetries(e.ctx, s, m.ID); err != nil {
				t.Fatal(err)
			}
			if msgs, next := claim(t, s, due.Add(10*time.Hour)); len(msgs) != 0 || !next.IsZero() {
				t.Fatalf("claimed %+v, next %v after the ack", msgs, next)
			}
			for _, k := range []string{retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)} {
				if e.exists(t, k) {
					t.Fatalf("%s left after the ack", k)
				}
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			return
		}
	}
}
