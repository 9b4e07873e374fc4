package broker

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/redis/rueidis"
)

// The fire script publishes each tick of a schedule once, whoever fires it and however often.
func TestFireTickScript(t *testing.T) {
	e := newScriptEnv(t)
	const subject, sched = "reports.daily", "nightly.v2"
	t0 := time.Date(2026, 3, 29, 7, 0, 0, 0, time.UTC)
	t1 := t0.Add(24 * time.Hour)
	headers := map[string]string{"content-type": "application/json", "x-kind": "nightly"}
	fire := func(t *testing.T, tick time.Time) (string, bool, error) {
		t.Helper()
		return e.b.FireTick(e.ctx, subject, sched, tick, []byte(`{"run":1}`), headers)
	}
	cases := []struct {
		name  string
		setup func(t *testing.T)
		ticks []time.Time
		// want per fire: appended; wantEntries in the stream; wantLast tick.
		want        []bool
		wantEntries int
		wantLast    time.Time
		// presetMarker: the setup wrote the marker itself (without a TTL).
		presetMarker bool
	}{
		{name: "first fire appends", ticks: []time.Time{t0}, want: []bool{true}, wantEntries: 1, wantLast: t0},
		{name: "repeat is refused", ticks: []time.Time{t0, t0, t0}, want: []bool{true, false, false}, wantEntries: 1, wantLast: t0},
		{name: "different ticks both append", ticks: []time.Time{t0, t1}, want: []bool{true, true}, wantEntries: 2, wantLast: t1},
		{name: "an older tick appends but keeps the last tick", ticks: []time.Time{t1, t0}, want: []bool{true, true}, wantEntries: 2, wantLast: t1},
		{name: "refused repeat of an older tick", ticks: []time.Time{t0, t1, t0}, want: []bool{true, true, false}, wantEntries: 2, wantLast: t1},
		{name: "appends to an existing stream", setup: func(t *testing.T) {
			e.must(t, "XADD", subject, "*", payloadField, "earlier")
		}, ticks: []time.Time{t0}, want: []bool{true}, wantEntries: 2, wantLast: t0},
		{name: "a marker from another process refuses the tick", setup: func(t *testing.T) {
			e.must(t, "SET", tickKey(subject, sched, t0.UnixMilli()), "1")
		}, ticks: []time.Time{t0}, want: []bool{false}, wantEntries: 0, wantLast: t0, presetMarker: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.reset(t)
			if tc.setup != nil {
				tc.setup(t)
			}
			for i, tick := range tc.ticks {
				id, appended, err := fire(t, tick)
				if err != nil {
					t.Fatalf("fire %d: %v", i, err)
				}
				if appended != tc.want[i] {
					t.Fatalf("fire %d (%s): appended %v, want %v", i, tick, appended, tc.want[i])
				}
				if id != ScheduleMessageID(subject, sched, tick) {
					t.Fatalf("fire %d: id %s", i, id)
				}
			}
			entries := e.xrange(t, subject)
			if len(entries) != tc.wantEntries {
				t.Fatalf("%d entries, want %d: %v", len(entries), tc.wantEntries, entries)
			}
			last, ok := e.str(t, "GET", lastTickKey(subject, sched))
			if !ok || last != strconv.FormatInt(tc.wantLast.UnixMilli(), 10) {
				t.Fatalf("last tick %q, want %d", last, tc.wantLast.UnixMilli())
			}
			for _, tick := range tc.ticks {
				ttl := e.int(t, "TTL", tickKey(subject, sched, tick.UnixMilli()))
				if !tc.presetMarker && (ttl <= 0 || ttl > int64(tickMarkerTTL/time.Second)) {
					t.Fatalf("marker of %s: TTL %d", tick, ttl)
				}
			}
			ids := map[string]bool{}
			for _, en := range entries {
				if _, ok := en.get(idField); !ok {
					continue // the entry appended by the setup
				}
				m := DecodeEntry(subject, rueidis.XRangeEntry{ID: en.ID, FieldValues: fieldMap(en)})
				if ids[m.ID] {
					t.Fatalf("message id %s twice in the stream", m.ID)
				}
				ids[m.ID] = true
				if string(m.Body) != `{"run":1}` || m.Headers["x-kind"] != "nightly" || m.Headers["content-type"] != "application/json" {
					t.Fatalf("entry %v decodes to %+v", en, m)
				}
			}
		})
	}
}

func fieldMap(en rawEntry) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(en.Fields); i += 2 {
		m[en.Fields[i]] = en.Fields[i+1]
	}
	return m
}

// A tick whose subject holds another type, or whose last-tick key does, is refused with a
// clear error and writes nothing: no marker that would lose the tick once the key is fixed.
func TestFireTickWrongType(t *testing.T) {
	e := newScriptEnv(t)
	tick := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name  string
		setup []string
	}{
		{"subject is a string", []string{"SET", "jobs", "x"}},
		{"subject is a list", []string{"LPUSH", "jobs", "x"}},
		{"subject is a hash", []string{"HSET", "jobs", "f", "v"}},
		{"last tick is a hash", []string{"HSET", lastTickKey("jobs", "s"), "f", "v"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.reset(t)
			e.must(t, tc.setup...)
			before := e.snapshot(t)
			_, appended, err := e.b.FireTick(e.ctx, "jobs", "s", tick, []byte("x"), nil)
			if !errors.Is(err, core.ErrWrongType) || appended {
				t.Fatalf("appended %v, err %v; want core.ErrWrongType", appended, err)
			}
			sameSnapshot(t, before, e.snapshot(t))
			// Fixed, the same tick is published.
			e.reset(t)
			if _, appended, err := e.b.FireTick(e.ctx, "jobs", "s", tick, []byte("x"), nil); err != nil || !appended {
				t.Fatalf("after the fix: appended %v, err %v", appended, err)
			}
		})
	}
}

// On Redis Cluster every key of the fire script is in the subject's slot (rueidis refuses
// a cross-slot script before sending it).
func TestFireTickOnCluster(t *testing.T) {
	c := redistest.StartCluster(t, 1)
	b := New(c.Client(t))
	ctx := t.Context()
	for _, subject := range []string{"orders", "orders.eu", "a:b"} {
		_, appended, err := b.FireTick(ctx, subject, "every.minute", time.Unix(1700000000, 0), []byte("x"), map[string]string{"k": "v"})
		if err != nil || !appended {
			t.Fatalf("%s: appended %v, err %v", subject, appended, err)
		}
	}
}

func TestScheduleMessageID(t *testing.T) {
	tick := time.UnixMilli(1732420000000)
	id := ScheduleMessageID("orders.eu", "nightly.report", tick)
	if id[:len("orders~eu:c1732420000000-")] != "orders~eu:c1732420000000-" || len(id) != len("orders~eu:c1732420000000-")+12 {
		t.Fatalf("id %q", id)
	}
	if !validID(id) {
		t.Fatalf("id %q is not a valid message id", id)
	}
	if other := ScheduleMessageID("orders.eu", "nightly-report", tick); other == id {
		t.Fatalf("two schedules give one id %q", id)
	}
	subject, kind, at, ok := parseMessageID(id)
	if !ok || subject != "orders.eu" || kind != kindTick || !at.Equal(tick) {
		t.Fatalf("parse %q: %s %c %s %v", id, subject, kind, at, ok)
	}
}

// Put, get, list, version and delete of the schedule records.
func TestScheduleRecords(t *testing.T) {
	e := newScriptEnv(t)
	ctx := e.ctx
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s := &core.Schedule{Name: "nightly", Cron: "0 9 * * *", Timezone: "Europe/Paris", Subject: "reports",
		Data: []byte(`{"a":1}`), ContentType: "application/json", Headers: map[string]string{"x-a": "1"},
		CreatedAt: now, UpdatedAt: now}
	if replaced, err := e.b.PutSchedule(ctx, s); err != nil || replaced {
		t.Fatalf("create: replaced %v, err %v", replaced, err)
	}
	if v, err := e.b.SchedulesVersion(ctx); err != nil || v != 1 {
		t.Fatalf("version %d, err %v", v, err)
	}
	got, err := e.b.GetSchedule(ctx, "nightly")
	if err != nil || !got.SameDefinition(s) || !got.CreatedAt.Equal(now) {
		t.Fatalf("get: %+v, %v", got, err)
	}
	if _, err := e.b.GetSchedule(ctx, "nope"); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if _, _, err := e.b.FireTick(ctx, "reports", "nightly", now, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	runs, err := e.b.ScheduleLastRuns(ctx, []*core.Schedule{s, {Name: "other", Subject: "reports"}})
	if err != nil || len(runs) != 1 || !runs["nightly"].Equal(now) {
		t.Fatalf("last runs %v, err %v", runs, err)
	}

	// A new subject: the old subject's last tick goes.
	moved := *s
	moved.Subject = "reports.v2"
	if replaced, err := e.b.PutSchedule(ctx, &moved); err != nil || !replaced {
		t.Fatalf("replace: replaced %v, err %v", replaced, err)
	}
	if e.exists(t, lastTickKey("reports", "nightly")) {
		t.Fatal("the old subject's last tick stayed")
	}
	all, v, err := e.b.ListSchedules(ctx)
	if err != nil || v != 2 || len(all) != 1 || all[0].Subject != "reports.v2" {
		t.Fatalf("list %+v, version %d, err %v", all, v, err)
	}

	// A subject holding another type is refused, nothing stored.
	e.must(t, "SET", "a-string", "x")
	bad := *s
	bad.Name, bad.Subject = "bad", "a-string"
	before := e.snapshot(t)
	if _, err := e.b.PutSchedule(ctx, &bad); !errors.Is(err, core.ErrWrongType) {
		t.Fatalf("put on a string: %v", err)
	}
	sameSnapshot(t, before, e.snapshot(t))

	if _, _, err := e.b.FireTick(ctx, "reports.v2", "nightly", now, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if err := e.b.DeleteSchedule(ctx, "nightly"); err != nil {
		t.Fatal(err)
	}
	if err := e.b.DeleteSchedule(ctx, "nightly"); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if e.exists(t, lastTickKey("reports.v2", "nightly")) {
		t.Fatal("the last tick of a deleted schedule stayed")
	}
	if v, _ := e.b.SchedulesVersion(ctx); v != 3 {
		t.Fatalf("version after delete %d, want 3", v)
	}
}
