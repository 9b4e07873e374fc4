package broker

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

// nextMessage appends an entry that the subscription's existing group reads.
func (e *scriptEnv) nextMessage(t *testing.T, s *core.Subscription, body string) *core.Message {
	t.Helper()
	eid, _ := e.str(t, "XADD", s.Subject, "*", payloadField, body)
	e.must(t, "XREADGROUP", "GROUP", groupName(s.Name), "c1", "STREAMS", s.Subject, ">")
	return &core.Message{ID: core.MessageID(s.Subject, eid), Subject: s.Subject, EntryID: eid,
		Origin: core.FromStream, Body: []byte(body), Deliveries: 1}
}

func testAttempt(m *core.Message, outcome string, status int, errText string) *core.Attempt {
	return &core.Attempt{MessageID: m.ID, Delivery: m.Deliveries, Status: status, Error: errText,
		Latency: 1500 * time.Microsecond, Outcome: outcome, Process: "p1"}
}

// Every settlement logs its attempt with it: the ack pipeline, the retry script and the
// dead-letter script; an attempt-only settlement (Pub/Sub, simple lists) logs just that.
// A settlement refused because its subscription is gone logs nothing.
func TestAttemptsRideWithSettlements(t *testing.T) {
	e := newScriptEnv(t)
	e.b = New(e.c, WithAttemptLog(100))
	s := e.live(t, testSub("s", "orders"))
	log := attemptsKey("orders", "s")

	acked := e.streamMessage(t, s, "a", nil)
	retried, dead := e.nextMessage(t, s, "r"), e.nextMessage(t, s, "d")
	err := e.b.Settle(e.ctx, []core.Settlement{
		{Sub: s, Origin: core.FromStream, Handle: acked.EntryID, Attempt: testAttempt(acked, core.OutcomeAck, 200, "")},
		{Sub: s, Origin: core.Unsettled, Attempt: &core.Attempt{MessageID: "orders:p1-x", Delivery: 1, Outcome: core.OutcomeFailed, Error: "timeout", Process: "p1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.Retry(e.ctx, s, retried, time.Now().Add(time.Hour), testAttempt(retried, core.OutcomeRetry, 503, "")); err != nil {
		t.Fatal(err)
	}
	info := core.DeadLetterInfo{Reason: core.ReasonDropped, LastStatus: 400, At: time.Now(), Attempt: testAttempt(dead, core.OutcomeDeadLetter, 400, "bad request")}
	if err := e.b.DeadLetter(e.ctx, s, dead, info); err != nil {
		t.Fatal(err)
	}
	// The dead letter itself is whole: the attempt's arguments did not leak into it.
	dl := e.xrange(t, dlqKey("orders", "s"))
	if len(dl) != 1 {
		t.Fatalf("dead letters: %v", dl)
	}
	if v, _ := dl[0].get("_payload"); v != "d" {
		t.Fatalf("dead letter payload %q", v)
	}
	if _, ok := dl[0].get("m"); ok {
		t.Fatal("attempt fields in the dead letter")
	}

	page, err := e.b.Attempts(e.ctx, s, core.AttemptQuery{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range page.Attempts {
		got = append(got, fmt.Sprintf("%s/%s/%d/%q/%s", a.MessageID, a.Outcome, a.Status, a.Error, a.Latency))
	}
	want := []string{
		dead.ID + `/dead_letter/400/"bad request"/1.5ms`,
		retried.ID + `/retry/503/""/1.5ms`,
		`orders:p1-x/failed/0/"timeout"/0s`,
		acked.ID + `/ack/200/""/1.5ms`,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || page.Next != "" {
		t.Fatalf("attempts newest first:\n got %v\nwant %v (next %q)", got, want, page.Next)
	}
	if page.Attempts[0].At.IsZero() || page.Attempts[0].Process != "p1" || page.Attempts[0].Delivery != 1 {
		t.Fatalf("attempt %+v", page.Attempts[0])
	}

	// A gone subscription: the scripts write nothing, the attempt included.
	for _, st := range markerStates {
		t.Run(st.name, func(t *testing.T) {
			live := e.live(t, testSub("s", "orders"))
			m := e.nextMessage(t, live, "x")
			before := e.int(t, "XLEN", log)
			st.set(t, e, live)
			if err := e.b.Retry(e.ctx, live, m, time.Now(), testAttempt(m, core.OutcomeRetry, 500, "")); !errors.Is(err, core.ErrGone) {
				t.Fatalf("retry: %v, want ErrGone", err)
			}
			info := core.DeadLetterInfo{Reason: core.ReasonDropped, At: time.Now(), Attempt: testAttempt(m, core.OutcomeDeadLetter, 400, "")}
			if err := e.b.DeadLetter(e.ctx, live, m, info); !errors.Is(err, core.ErrGone) {
				t.Fatalf("dead letter: %v, want ErrGone", err)
			}
			if n := e.int(t, "XLEN", log); n != before {
				t.Fatalf("attempt log grew from %d to %d", before, n)
			}
		})
	}
}

// The log is capped (MAXLEN ~), listed newest first with an outcome filter and pages, and
// searched per message from a time.
func TestAttemptLogBoundsAndQueries(t *testing.T) {
	e := newScriptEnv(t)
	e.b = New(e.c, WithAttemptLog(1000))
	s := e.live(t, testSub("s", "orders"))
	var batch []core.Settlement
	for i := range 5000 {
		outcome := core.OutcomeAck
		if i%10 == 0 {
			outcome = core.OutcomeRetry
		}
		batch = append(batch, core.Settlement{Sub: s, Origin: core.Unsettled,
			Attempt: &core.Attempt{MessageID: "orders:" + strconv.Itoa(i%50) + "-0", Delivery: 1, Outcome: outcome, Process: "p"}})
	}
	if err := e.b.Settle(e.ctx, batch); err != nil {
		t.Fatal(err)
	}
	// MAXLEN ~ trims whole nodes: at most one node (100 entries) over the cap.
	if n := e.int(t, "XLEN", attemptsKey("orders", "s")); n < 1000 || n > 1100 {
		t.Fatalf("log length %d, want about 1000", n)
	}
	page, err := e.b.Attempts(e.ctx, s, core.AttemptQuery{Limit: 7, Outcome: core.OutcomeRetry})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Attempts) != 7 || page.Next == "" {
		t.Fatalf("retry page: %d attempts, next %q", len(page.Attempts), page.Next)
	}
	for _, a := range page.Attempts {
		if a.Outcome != core.OutcomeRetry {
			t.Fatalf("filtered attempt %+v", a)
		}
	}
	total := 0
	for before := ""; ; {
		p, err := e.b.Attempts(e.ctx, s, core.AttemptQuery{Limit: 333, Before: before})
		if err != nil {
			t.Fatal(err)
		}
		total += len(p.Attempts)
		if p.Next == "" {
			break
		}
		before = p.Next
	}
	if n := e.int(t, "XLEN", attemptsKey("orders", "s")); int64(total) != n {
		t.Fatalf("paged %d attempts, log holds %d", total, n)
	}
	// One message's attempts, across more entries than one scan step reads.
	got, err := e.b.MessageAttempts(e.ctx, s, "orders:7-0", time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) < e.int(t, "XLEN", attemptsKey("orders", "s"))/50-1 || len(got) == 0 {
		t.Fatalf("%d attempts of orders:7-0", len(got))
	}
	for i, a := range got {
		if a.MessageID != "orders:7-0" || (i > 0 && a.Cursor <= got[i-1].Cursor && len(a.Cursor) == len(got[i-1].Cursor)) {
			t.Fatalf("attempt %d: %+v", i, a)
		}
	}
	if got, _ := e.b.MessageAttempts(e.ctx, s, "orders:7-0", time.Now().Add(time.Minute)); len(got) != 0 {
		t.Fatalf("attempts from the future: %d", len(got))
	}
	if got, _ := e.b.MessageAttempts(e.ctx, testSub("none", "orders"), "orders:7-0", time.Time{}); len(got) != 0 {
		t.Fatalf("attempts of a subscription without a log: %d", len(got))
	}
}

// The retention pass trims attempts older than the attempt retention; deleting a
// subscription deletes its log.
func TestAttemptLogRetentionAndDelete(t *testing.T) {
	e := newScriptEnv(t)
	s := e.live(t, testSub("s", "orders"))
	log := attemptsKey("orders", "s")
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	e.must(t, "XADD", log, strconv.FormatInt(old, 10)+"-0", "m", "orders:1-0", "o", "ack")
	e.must(t, "XADD", log, "*", "m", "orders:2-0", "o", "ack")
	e.must(t, "XADD", "orders", "*", "_payload", "x")
	if _, err := e.b.Trim(e.ctx, "orders", core.TrimParams{Now: time.Now(), Retention: time.Hour, AttemptRetention: time.Hour,
		Subscriptions: []*core.Subscription{s}}); err != nil {
		t.Fatal(err)
	}
	if n := e.int(t, "XLEN", log); n != 1 {
		t.Fatalf("after the pass the log holds %d attempts, want 1 (the recent one)", n)
	}
	if err := e.b.DestroySubscription(e.ctx, s); err != nil {
		t.Fatal(err)
	}
	if e.exists(t, log) {
		t.Fatal("attempt log left after delete")
	}
}

func TestParseMessageID(t *testing.T) {
	cases := []struct {
		id, subject string
		kind        idKind
		ms          int64
		ok          bool
	}{
		{"orders:1732420000000-0", "orders", kindStream, 1732420000000, true},
		{"orders~eu:1732420000000-5", "orders.eu", kindStream, 1732420000000, true},
		{"a:b:17-1", "a:b", kindStream, 17, true},
		{"jobs:l1732420000000-9f86d081", "jobs", kindList, 1732420000000, true},
		{"chat:p1732420000000-9f86d081", "chat", kindPubSub, 1732420000000, true},
		{"orders:s1732420000000-9f86d081", "orders", kindScheduled, 1732420000000, true},
		{"orders~eu:c1732420000000-9f86d081a2b3", "orders.eu", kindTick, 1732420000000, true},
		{"jobs:xabc123", "jobs", kindForeign, 0, true},
		{"orders:1-", "", 0, 0, false},
		{"orders:-1", "", 0, 0, false},
		{"orders:l-1", "", 0, 0, false},
		{"orders:q1-1", "", 0, 0, false},
		{"orders", "", 0, 0, false},
		{":1-0", "", 0, 0, false},
		{"orders:", "", 0, 0, false},
		{"bridge:x:1-0", "", 0, 0, false},
		{"or ders:1-0", "", 0, 0, false},
		{"orders:99999999999999999999999-0", "", 0, 0, false},
	}
	for _, c := range cases {
		subject, kind, at, ok := parseMessageID(c.id)
		if ok != c.ok || subject != c.subject || kind != c.kind || (ok && c.ms != 0 && at.UnixMilli() != c.ms) {
			t.Errorf("%q: %q %c %v %v", c.id, subject, kind, at, ok)
		}
	}
}
