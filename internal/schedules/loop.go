package schedules

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// Store is what the loop needs from Redis. *broker.Broker implements it. It must be safe
// for concurrent use.
type Store interface {
	SchedulesVersion(ctx context.Context) (int64, error)
	ListSchedules(ctx context.Context) ([]*core.Schedule, int64, error)
	ScheduleLastRuns(ctx context.Context, scheds []*core.Schedule) (map[string]time.Time, error)
	// FireTick publishes one tick's message unless some process published that tick
	// already (appended is false then).
	FireTick(ctx context.Context, subject, schedule string, tick time.Time, body []byte, headers map[string]string) (id string, appended bool, err error)
}

// Options configure a Loop.
type Options struct {
	Logger *zap.Logger
	// Published is called after a tick appended a message to subject's stream (the engine
	// wakes its subscriptions). It must be cheap.
	Published func(subject string)
	// PollInterval is how often the loop looks for changed schedules; default 1 s, so a
	// change is in force in every process within about that.
	PollInterval time.Duration
}

// DefaultPollInterval is the default of Options.PollInterval.
const DefaultPollInterval = time.Second

// Timing of the loop's Redis work.
const (
	fireTimeout  = 5 * time.Second
	retryAfter   = time.Second
	fireParallel = 16
)

// Loop fires the ticks of every stored schedule. Every bridge process runs one: at a tick
// each of them tries to publish it and Redis takes the first (see broker.FireTick), so a
// tick is published once however many processes run, crash or restart. Idle, a loop reads
// one version number per poll interval and sleeps until the earliest tick.
//
// A tick that a running process sees come due fires, in order, up to MaxLate late; ticks
// that came due while no process ran are missed and only the latest of them fires, once,
// when a process starts (see Spec.Due). A paused schedule fires nothing; once resumed, it
// fires from its next tick on.
type Loop struct {
	store Store
	opts  Options
	log   *zap.Logger

	ctx     context.Context
	cancel  context.CancelFunc
	started atomic.Bool
	stopped atomic.Bool
	done    chan struct{}

	// Owned by the loop's goroutine.
	entries map[string]*entry
	version int64
	loaded  bool
	listErr bool
}

// entry is one schedule as the loop runs it.
type entry struct {
	s    *core.Schedule
	spec Spec
	// after: every tick up to it is done (published, or not to be fired).
	after time.Time
	// live: after was reached while this process kept running (see Spec.Due).
	live bool
	// next is when the loop wakes for this schedule; zero for never (paused).
	next    time.Time
	failing bool
}

// New returns a loop over store; Start runs it.
func New(store Store, opts Options) *Loop {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Published == nil {
		opts.Published = func(string) {}
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Loop{store: store, opts: opts, log: opts.Logger, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), entries: map[string]*entry{}}
}

// Start runs the loop in a goroutine of its own; calls after the first do nothing.
func (l *Loop) Start() {
	if l.stopped.Load() || !l.started.CompareAndSwap(false, true) {
		return
	}
	go l.run()
}

// Stop ends the loop, cancelling a tick in flight (Redis publishes it whole or not at
// all; another process, or this one's next start, fires it then), and returns once its
// goroutines ended. Safe to call twice, and without Start.
func (l *Loop) Stop() {
	if !l.stopped.CompareAndSwap(false, true) {
		return
	}
	l.cancel()
	if l.started.Load() {
		<-l.done
	}
}

func (l *Loop) run() {
	defer close(l.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var nextPoll time.Time
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-timer.C:
		}
		if !time.Now().Before(nextPoll) {
			l.refresh()
			nextPoll = time.Now().Add(l.opts.PollInterval)
		}
		l.fire()
		wake := nextPoll
		for _, e := range l.entries {
			if !e.next.IsZero() && e.next.Before(wake) {
				wake = e.next
			}
		}
		timer.Reset(time.Until(wake))
	}
}

// refresh reloads the schedules when their version changed. A schedule that is new,
// changed, paused or resumed starts after its change and its last published tick; one
// that did not change keeps its progress.
func (l *Loop) refresh() {
	ctx, cancel := context.WithTimeout(l.ctx, fireTimeout)
	defer cancel()
	v, err := l.store.SchedulesVersion(ctx)
	if err == nil && l.loaded && v == l.version {
		return
	}
	var all []*core.Schedule
	if err == nil {
		all, v, err = l.store.ListSchedules(ctx)
	}
	var fresh []*entry
	next := make(map[string]*entry, len(all))
	if err == nil {
		for _, s := range all {
			if old := l.entries[s.Name]; old != nil && old.s.SameDefinition(s) && old.s.UpdatedAt.Equal(s.UpdatedAt) {
				next[s.Name] = old
				continue
			}
			spec, perr := Parse(s.Cron, s.Timezone)
			if perr != nil {
				// Stored by a bridge that accepted it; this one cannot read it.
				l.log.Warn("schedule not understood; it fires nothing here", zap.String("schedule", s.Name), zap.Error(perr))
				continue
			}
			e := &entry{s: s, spec: spec, after: s.UpdatedAt}
			next[s.Name] = e
			if !s.Paused {
				fresh = append(fresh, e)
			}
		}
		err = l.setStart(ctx, fresh)
	}
	if err != nil {
		if ctx.Err() == nil && !l.listErr {
			l.log.Warn("cannot read the schedules; trying again", zap.Error(err))
		}
		l.listErr = true
		return // the schedules as they were keep firing
	}
	if l.listErr {
		l.log.Info("schedules read again")
		l.listErr = false
	}
	l.entries, l.version, l.loaded = next, v, true
}

// setStart sets where fresh entries start: after their change and their last published tick.
func (l *Loop) setStart(ctx context.Context, fresh []*entry) error {
	if len(fresh) == 0 {
		return nil
	}
	scheds := make([]*core.Schedule, len(fresh))
	for i, e := range fresh {
		scheds[i] = e.s
	}
	last, err := l.store.ScheduleLastRuns(ctx, scheds)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, e := range fresh {
		if t, ok := last[e.s.Name]; ok && t.After(e.after) {
			e.after = t
		}
		e.next = e.spec.Next(e.after)
		// Nothing missed: from now on this process sees every tick come due.
		e.live = e.next.After(now)
	}
	return nil
}

// fire publishes the ticks that are due, one goroutine per schedule (a few at a time),
// each schedule's ticks in order, and waits for them.
func (l *Loop) fire() {
	now := time.Now()
	type job struct {
		e     *entry
		ticks []time.Time
		done  int  // ticks done (published, refused as already published, or unpublishable)
		err   bool // stopped on a failure: the rest is tried again
	}
	var jobs []*job
	for _, e := range l.entries {
		if e.next.IsZero() || e.next.After(now) {
			continue
		}
		ticks := e.spec.Due(e.after, now, e.live)
		if len(ticks) == 0 {
			e.live, e.next = true, e.spec.Next(latest(e.after, now))
			continue
		}
		if !e.live && !ticks[0].Equal(e.next) {
			l.log.Info("ticks missed while no bridge process ran: firing the latest only",
				zap.String("schedule", e.s.Name), zap.Time("missed_from", e.next), zap.Time("tick", ticks[0]))
		}
		jobs = append(jobs, &job{e: e, ticks: ticks})
	}
	if len(jobs) == 0 {
		return
	}
	sem := make(chan struct{}, fireParallel)
	var wg sync.WaitGroup
	for _, j := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for _, tick := range j.ticks {
				if !l.fireOne(j.e, tick) {
					j.err = true
					return
				}
				j.done++
			}
		})
	}
	wg.Wait()
	for _, j := range jobs {
		e := j.e
		if j.done > 0 {
			e.after = j.ticks[j.done-1]
		}
		e.live = true
		e.next = e.spec.Next(e.after)
		if j.err {
			e.next = time.Now().Add(retryAfter)
		}
	}
}

// fireOne publishes one tick and reports whether it is done with.
func (l *Loop) fireOne(e *entry, tick time.Time) bool {
	s := e.s
	body, headers := Message(s, tick)
	ctx, cancel := context.WithTimeout(l.ctx, fireTimeout)
	defer cancel()
	id, appended, err := l.store.FireTick(ctx, s.Subject, s.Name, tick, body, headers)
	if errors.Is(err, core.ErrWrongType) {
		// No retry can publish it; the ticks after it fire once the key is fixed.
		if !e.failing {
			l.log.Warn("schedule's subject holds another type than a stream: its ticks are not published",
				zap.String("schedule", s.Name), zap.String("subject", s.Subject), zap.Time("tick", tick))
			e.failing = true
		}
		return true
	}
	if err != nil {
		if l.ctx.Err() != nil {
			return false
		}
		if !e.failing {
			l.log.Warn("cannot publish a schedule's tick; trying again", zap.String("schedule", s.Name),
				zap.String("subject", s.Subject), zap.Time("tick", tick), zap.Error(err))
			e.failing = true
		}
		return false
	}
	if e.failing {
		l.log.Info("schedule publishes again", zap.String("schedule", s.Name))
		e.failing = false
	}
	if appended {
		l.opts.Published(s.Subject)
	}
	if ce := l.log.Check(zap.DebugLevel, "tick"); ce != nil {
		ce.Write(zap.String("schedule", s.Name), zap.Time("tick", tick), zap.String("id", id), zap.Bool("appended", appended))
	}
	return true
}

// Message is the body and headers a schedule publishes for tick: its data, content type
// and headers, plus bridge-schedule and bridge-scheduled-time (RFC 3339, UTC).
func Message(s *core.Schedule, tick time.Time) ([]byte, map[string]string) {
	h := make(map[string]string, len(s.Headers)+3)
	for k, v := range s.Headers {
		h[strings.ToLower(k)] = v
	}
	if s.ContentType != "" {
		h[core.HeaderContentType] = s.ContentType
	}
	h[core.HeaderSchedule] = s.Name
	h[core.HeaderScheduledTime] = tick.UTC().Format(time.RFC3339)
	return s.Body(), h
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
