// Package schedules runs the bridge's schedules (SPEC §11): it reads their cron
// expressions and time zones, says when they tick, and fires every tick from every bridge
// process, Redis publishing each tick once (see Loop).
package schedules

import (
	"errors"
	"fmt"
	"strings"
	"time"
	// Time zones come with the binary: a schedule must tick at the same instants in every
	// process, whatever zoneinfo (if any) each host or image has.
	_ "time/tzdata"

	"github.com/robfig/cron/v3"
)

// MinEvery is the shortest "@every" interval.
const MinEvery = time.Second

// Limits of what Parse reads.
const (
	maxExprLen = 256
	maxZoneLen = 64
)

// parser reads the 5 standard fields (minute, hour, day of month, month, day of week) and
// the descriptors (@yearly, @monthly, @weekly, @daily, @hourly, @every <duration>).
var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Spec says when a schedule ticks. Ticks fall on whole seconds. A 5-field expression or a
// descriptor ticks at the wall-clock times it names in its time zone (a time skipped by a
// daylight-saving change does not tick that day; one repeated by it ticks twice); "@every
// d" ticks at the whole multiples of d since the Unix epoch, so every process computes
// the same ticks whenever it started. The zero Spec never ticks. A Spec is immutable and
// safe for concurrent use.
type Spec struct {
	cron  *cron.SpecSchedule
	every time.Duration
}

// Parse reads a cron expression in the IANA time zone tz ("" is UTC). Its errors say what
// is wrong in words a caller can show.
func Parse(expr, tz string) (Spec, error) {
	loc, err := LoadZone(tz)
	if err != nil {
		return Spec{}, err
	}
	expr = strings.TrimSpace(expr)
	switch {
	case expr == "":
		return Spec{}, errors.New("cron is required")
	case len(expr) > maxExprLen:
		return Spec{}, fmt.Errorf("cron is longer than %d bytes", maxExprLen)
	case strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ="):
		// robfig/cron would take the zone from here (and panics on "TZ=x" alone).
		return Spec{}, errors.New(`give the time zone in "timezone", not in the cron expression`)
	}
	if d, ok := strings.CutPrefix(expr, "@every "); ok {
		every, err := time.ParseDuration(strings.TrimSpace(d))
		switch {
		case err != nil:
			return Spec{}, fmt.Errorf("cron %q: @every takes a duration such as 30s, 5m or 1h30m", expr)
		case every < MinEvery:
			return Spec{}, fmt.Errorf("cron %q: @every must be at least %s", expr, MinEvery)
		case every%time.Second != 0:
			return Spec{}, fmt.Errorf("cron %q: @every takes whole seconds", expr)
		}
		return Spec{every: every}, nil
	}
	s, err := parser.Parse(expr)
	if err != nil {
		return Spec{}, fmt.Errorf("cron %q: %w", expr, err)
	}
	ss, ok := s.(*cron.SpecSchedule)
	if !ok {
		// Only @every makes anything else, and it was handled above ("@every" with a tab, say).
		return Spec{}, fmt.Errorf("cron %q: not a schedule the bridge supports", expr)
	}
	ss.Location = loc
	return Spec{cron: ss}, nil
}

// LoadZone returns the IANA time zone name ("" is UTC). "Local" is refused: a schedule
// would tick at different instants on hosts in different zones.
func LoadZone(name string) (*time.Location, error) {
	switch {
	case name == "" || name == "UTC":
		return time.UTC, nil
	case name == "Local" || len(name) > maxZoneLen:
		return nil, fmt.Errorf("unknown time zone %q: give an IANA name such as Europe/Paris", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q: give an IANA name such as Europe/Paris", name)
	}
	return loc, nil
}

// Next returns the first tick strictly after t, in UTC; the zero time when there is none
// within five years (a date such as 30 February never comes).
func (s Spec) Next(t time.Time) time.Time {
	switch {
	case s.every > 0:
		d := int64(s.every / time.Second)
		return time.Unix((floorDiv(t.Unix(), d)+1)*d, 0).UTC()
	case s.cron != nil:
		return s.cron.Next(t).UTC()
	}
	return time.Time{}
}

// NextRuns returns the next n ticks after t (fewer when the schedule ends sooner).
func (s Spec) NextRuns(t time.Time, n int) []time.Time {
	out := make([]time.Time, 0, n)
	for len(out) < n {
		if t = s.Next(t); t.IsZero() {
			break
		}
		out = append(out, t)
	}
	return out
}

// Latest returns the last tick in (after, now], if any.
func (s Spec) Latest(after, now time.Time) (time.Time, bool) {
	if !now.After(after) {
		return time.Time{}, false
	}
	if s.every > 0 {
		d := int64(s.every / time.Second)
		t := time.Unix(floorDiv(now.Unix(), d)*d, 0).UTC()
		return t, t.After(after)
	}
	// Cron has no "previous": walk forward from a little before now, looking further back
	// only when that finds nothing, so a schedule idle for years costs a few dozen steps.
	for _, back := range lookBack {
		from := now.Add(-back)
		if !from.After(after) {
			from = after
		}
		if ticks := s.between(from, now, -1); len(ticks) > 0 {
			return ticks[len(ticks)-1], true
		}
		if from.Equal(after) {
			break
		}
	}
	return time.Time{}, false
}

// lookBack are the windows Latest searches, each a few times the last: a tick found in a
// window is at most a few dozen steps from its start.
var lookBack = []time.Duration{
	2 * time.Minute, 2 * time.Hour, 50 * time.Hour, 32 * 24 * time.Hour, 367 * 24 * time.Hour, 5 * 367 * 24 * time.Hour,
}

// between returns the ticks in (from, to], in order, the last one only when limit is -1,
// else at most limit of them (the first ones).
func (s Spec) between(from, to time.Time, limit int) []time.Time {
	var out []time.Time
	for t := s.Next(from); !t.IsZero() && !t.After(to); t = s.Next(t) {
		if limit == -1 {
			out = append(out[:0], t)
			continue
		}
		if len(out) == limit {
			break
		}
		out = append(out, t)
	}
	return out
}

// MaxLate is how late a running process still fires a tick: one that was paused (a
// stop-the-world moment, Redis unreachable for a while) fires every tick of the last
// minute in order once it can. Older ticks, and every tick that came due while no bridge
// process ran, are missed: of those only the latest fires.
const MaxLate = time.Minute

// maxBurst bounds the ticks one pass fires for one schedule; a minute of "@every 1s" is 60.
const maxBurst = 120

// Due returns the ticks to fire at now for a schedule whose ticks up to after are done.
// live says after was reached by this process while it kept running; otherwise (a process
// that starts, a schedule just created, changed or resumed) the ticks in (after, now] were
// missed and only the latest fires.
func (s Spec) Due(after, now time.Time, live bool) []time.Time {
	if !now.After(after) {
		return nil
	}
	if live {
		from := after
		if f := now.Add(-MaxLate); f.After(from) {
			from = f
		}
		if ticks := s.between(from, now, maxBurst); len(ticks) > 0 {
			return ticks
		}
	}
	if t, ok := s.Latest(after, now); ok {
		return []time.Time{t}
	}
	return nil
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
