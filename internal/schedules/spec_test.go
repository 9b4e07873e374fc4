package schedules

import (
	"strings"
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func mustParse(t *testing.T, expr, tz string) Spec {
	t.Helper()
	s, err := Parse(expr, tz)
	if err != nil {
		t.Fatalf("Parse(%q, %q): %v", expr, tz, err)
	}
	return s
}

func TestParse(t *testing.T) {
	ok := []struct{ expr, tz string }{
		{"*/5 * * * *", ""},
		{"0 9 * * 1-5", "Europe/Paris"},
		{"0 9 * * MON-FRI", "America/New_York"},
		{"  15 3 1 jan *  ", "UTC"},
		{"@every 30s", ""},
		{"@every 1s", "Asia/Kolkata"},
		{"@every 1h30m", ""},
		{"@yearly", ""}, {"@annually", ""}, {"@monthly", ""}, {"@weekly", ""},
		{"@daily", ""}, {"@midnight", ""}, {"@hourly", "Australia/Lord_Howe"},
	}
	for _, c := range ok {
		if _, err := Parse(c.expr, c.tz); err != nil {
			t.Errorf("Parse(%q, %q): %v", c.expr, c.tz, err)
		}
	}
	bad := []struct{ name, expr, tz, want string }{
		{"empty", "", "", "cron is required"},
		{"blank", "   ", "", "cron is required"},
		{"four fields", "* * * *", "", "expected exactly 5 fields, found 4"},
		{"six fields (seconds)", "0 * * * * *", "", "expected exactly 5 fields, found 6"},
		{"minute out of range", "61 * * * *", "", "above maximum (59)"},
		{"zero step", "*/0 * * * *", "", `cron "*/0 * * * *"`},
		{"words", "every day at nine", "", `cron "every day at nine"`},
		{"unknown descriptor", "@fortnightly", "", "unrecognized descriptor"},
		{"every below a second", "@every 500ms", "", "at least 1s"},
		{"every zero", "@every 0s", "", "at least 1s"},
		{"every negative", "@every -5s", "", "at least 1s"},
		{"every fraction", "@every 1.5s", "", "whole seconds"},
		{"every not a duration", "@every soon", "", "takes a duration"},
		{"zone in the expression", "TZ=UTC", "", `"timezone"`},
		{"cron zone in the expression", "CRON_TZ=Europe/Paris 0 9 * * *", "", `"timezone"`},
		{"too long", strings.Repeat("1,", 200) + "1 * * * *", "", "longer than"},
		{"unknown zone", "0 9 * * *", "Mars/Olympus_Mons", `unknown time zone "Mars/Olympus_Mons"`},
		{"local zone", "0 9 * * *", "Local", `unknown time zone "Local"`},
		{"zone path", "0 9 * * *", "../../etc/passwd", "unknown time zone"},
		{"unknown zone with every", "@every 5s", "Nowhere", "unknown time zone"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.expr, c.tz)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse(%q, %q) = %v, want an error with %q", c.expr, c.tz, err, c.want)
			}
		})
	}
}

// Wall-clock schedules follow the zone's offset across daylight-saving changes.
func TestNextRunsAcrossDST(t *testing.T) {
	cases := []struct {
		name, expr, tz, from string
		want                 []string
	}{
		{"Paris spring: 09:00 is 08:00Z, then 07:00Z", "0 9 * * *", "Europe/Paris", "2026-03-26T12:00:00Z",
			[]string{"2026-03-27T08:00:00Z", "2026-03-28T08:00:00Z", "2026-03-29T07:00:00Z", "2026-03-30T07:00:00Z", "2026-03-31T07:00:00Z"}},
		{"Paris autumn: 09:00 is 07:00Z, then 08:00Z", "0 9 * * *", "Europe/Paris", "2026-10-23T12:00:00Z",
			[]string{"2026-10-24T07:00:00Z", "2026-10-25T08:00:00Z", "2026-10-26T08:00:00Z", "2026-10-27T08:00:00Z", "2026-10-28T08:00:00Z"}},
		{"New York spring: 14:00Z, then 13:00Z", "0 9 * * *", "America/New_York", "2026-03-06T12:00:00Z",
			[]string{"2026-03-06T14:00:00Z", "2026-03-07T14:00:00Z", "2026-03-08T13:00:00Z", "2026-03-09T13:00:00Z", "2026-03-10T13:00:00Z"}},
		{"a time the spring change skips does not tick that day", "30 2 * * *", "America/New_York", "2026-03-06T00:00:00Z",
			[]string{"2026-03-06T07:30:00Z", "2026-03-07T07:30:00Z", "2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z", "2026-03-11T06:30:00Z"}},
		{"a time the autumn change repeats ticks twice", "30 1 * * *", "America/New_York", "2026-10-30T00:00:00Z",
			[]string{"2026-10-30T05:30:00Z", "2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z", "2026-11-02T06:30:00Z"}},
		{"UTC by default", "*/5 * * * *", "", "2026-01-01T00:03:10Z",
			[]string{"2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z", "2026-01-01T00:15:00Z", "2026-01-01T00:20:00Z", "2026-01-01T00:25:00Z"}},
		{"hourly in a half-hour zone", "@hourly", "Asia/Kolkata", "2026-01-01T00:10:00Z",
			[]string{"2026-01-01T00:30:00Z", "2026-01-01T01:30:00Z", "2026-01-01T02:30:00Z", "2026-01-01T03:30:00Z", "2026-01-01T04:30:00Z"}},
		{"every: whole multiples since the epoch, whatever the zone", "@every 30s", "Asia/Kolkata", "2026-01-01T00:00:10.5Z",
			[]string{"2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z", "2026-01-01T00:01:30Z", "2026-01-01T00:02:00Z", "2026-01-01T00:02:30Z"}},
		{"every: from a tick, the next one", "@every 1h", "", "2026-01-01T05:00:00Z",
			[]string{"2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z", "2026-01-01T08:00:00Z", "2026-01-01T09:00:00Z", "2026-01-01T10:00:00Z"}},
		{"a date that never comes", "0 0 30 2 *", "", "2026-01-01T00:00:00Z", []string{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := mustParse(t, c.expr, c.tz).NextRuns(utc(c.from), 5)
			var s []string
			for _, g := range got {
				if g.Location() != time.UTC {
					t.Fatalf("%s is not in UTC", g)
				}
				s = append(s, g.Format(time.RFC3339))
			}
			if strings.Join(s, " ") != strings.Join(c.want, " ") {
				t.Fatalf("next runs\n got %v\nwant %v", s, c.want)
			}
		})
	}
}

func TestLatest(t *testing.T) {
	cases := []struct {
		name, expr, after, now, want string // want "" = none
	}{
		{"every: the tick at now", "@every 2s", "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z", "2026-01-01T00:00:10Z"},
		{"every: the tick before now", "@every 2s", "2026-01-01T00:00:00Z", "2026-01-01T00:00:11.9Z", "2026-01-01T00:00:10Z"},
		{"every: none after after", "@every 2s", "2026-01-01T00:00:10Z", "2026-01-01T00:00:11Z", ""},
		{"cron: minutes", "* * * * *", "2026-01-01T00:00:00Z", "2026-01-01T03:07:30Z", "2026-01-01T03:07:00Z"},
		{"cron: every five minutes", "*/5 * * * *", "2026-01-01T00:00:00Z", "2026-01-01T03:04:59Z", "2026-01-01T03:00:00Z"},
		{"cron: daily, years idle", "0 9 * * *", "2020-01-01T00:00:00Z", "2026-06-01T08:00:00Z", "2026-05-31T09:00:00Z"},
		{"cron: yearly", "@yearly", "2020-06-01T00:00:00Z", "2026-06-01T00:00:00Z", "2026-01-01T00:00:00Z"},
		{"cron: leap day, years idle", "0 0 29 2 *", "2019-01-01T00:00:00Z", "2026-06-01T00:00:00Z", "2024-02-29T00:00:00Z"},
		{"cron: none since after", "0 9 * * *", "2026-06-01T09:00:00Z", "2026-06-02T08:59:59Z", ""},
		{"now before after", "* * * * *", "2026-06-01T09:00:00Z", "2026-06-01T08:00:00Z", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := mustParse(t, c.expr, "").Latest(utc(c.after), utc(c.now))
			if c.want == "" {
				if ok {
					t.Fatalf("got %s, want none", got)
				}
				return
			}
			if !ok || !got.Equal(utc(c.want)) {
				t.Fatalf("got %s %v, want %s", got, ok, c.want)
			}
		})
	}
}

// The missed-tick rule: a running process fires every tick up to MaxLate late, in order;
// ticks missed while no process ran (not live) collapse into the latest.
func TestDue(t *testing.T) {
	at := func(s string) time.Time { return utc("2026-01-01T" + s + "Z") }
	seq := func(from, n int) []time.Time { // ticks of @every 1s at 12:00:from..
		var out []time.Time
		for i := range n {
			out = append(out, at("12:00:00").Add(time.Duration(from+i)*time.Second))
		}
		return out
	}
	cases := []struct {
		name, expr string
		after, now time.Time
		live       bool
		want       []time.Time
	}{
		{"live: the tick due now", "@every 1s", at("12:00:00"), at("12:00:01.02"), true, seq(1, 1)},
		{"live: nothing due yet", "@every 1s", at("12:00:00"), at("12:00:00.99"), true, nil},
		{"live: now equals after", "@every 1s", at("12:00:00"), at("12:00:00"), true, nil},
		{"live: a stalled process fires the late ticks in order", "@every 1s", at("12:00:00"), at("12:00:03.5"), true, seq(1, 3)},
		{"live: at most MaxLate late", "@every 1s", at("12:00:00"), at("12:05:00"), true, seq(241, 60)},
		{"live: an hourly tick long late still fires", "@hourly", at("09:00:00"), at("11:30:00"), true, []time.Time{at("11:00:00")}},
		{"not live: missed ticks collapse into the latest", "@every 2s", at("12:00:00"), at("12:00:09"), false, []time.Time{at("12:00:08")}},
		{"not live: one missed tick fires", "@every 2s", at("12:00:00"), at("12:00:02.5"), false, []time.Time{at("12:00:02")}},
		{"not live: nothing missed", "@every 2s", at("12:00:00"), at("12:00:01"), false, nil},
		{"not live: a daily schedule down three days fires once", "0 9 * * *", at("09:00:00"), utc("2026-01-04T10:00:00Z"), false, []time.Time{utc("2026-01-04T09:00:00Z")}},
		{"not live: after in the future (a clock ahead)", "@every 1s", at("12:00:05"), at("12:00:03"), false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := mustParse(t, c.expr, "").Due(c.after, c.now, c.live)
			if len(got) != len(c.want) {
				t.Fatalf("got %d ticks %v, want %v", len(got), got, c.want)
			}
			for i := range got {
				if !got[i].Equal(c.want[i]) {
					t.Fatalf("tick %d: got %s, want %s", i, got[i], c.want[i])
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"*/5 * * * *", "@every 30s", "@hourly", "0 9 * * MON-FRI", "TZ=", "TZ=UTC",
		"CRON_TZ=x", "@every", "@every ", "1-60/0 * * * *", "0 0 30 2 *", "? ? ? ? ?", "L W # * *", "*/1-2 * * * *",
		"5-1 * * * *", "0 0 * * 7", "@every 2562047h"} {
		f.Add(s, "UTC")
	}
	f.Add("0 9 * * *", "Europe/Paris")
	f.Add("0 9 * * *", "")
	start := utc("2026-03-08T06:00:00Z")
	f.Fuzz(func(t *testing.T, expr, tz string) {
		s, err := Parse(expr, tz)
		if err != nil {
			return
		}
		prev := start
		for _, r := range s.NextRuns(start, 3) {
			if !r.After(prev) {
				t.Fatalf("Parse(%q, %q): run %s not after %s", expr, tz, r, prev)
			}
			prev = r
		}
	})
}
