// Package retention keeps Redis memory bounded (SPEC §8): it trims each subject's stream
// of what every consumer group has acknowledged for longer than the retention, never
// what a group still needs (before the hard cap), and the dead letters older than their
// subscription's dlq_retention. Any number of processes may run it: a pass is one atomic
// script, idempotent, in the subject's cluster slot.
package retention

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// Broker is what retention needs from Redis. *broker.Broker implements it.
type Broker interface {
	Trim(ctx context.Context, subject string, p core.TrimParams) (core.TrimResult, error)
	AddExpired(ctx context.Context, s *core.Subscription, n int64) error
	RememberSubjects(ctx context.Context, subjects []string) error
	KnownSubjects(ctx context.Context) ([]string, error)
	ForgetSubject(ctx context.Context, subject string) error
}

// Metrics is what retention reports; *metrics.Metrics implements it.
type Metrics interface {
	StreamEntries(subject string, n int64)
	Trimmed(subject string, n int64)
	Expired(subscription string, n int64)
	ForgetStream(subject string)
}

type noMetrics struct{}

func (noMetrics) StreamEntries(string, int64) {}
func (noMetrics) Trimmed(string, int64)       {}
func (noMetrics) Expired(string, int64)       {}
func (noMetrics) ForgetStream(string)         {}

// Defaults (SPEC §8).
const (
	DefaultRetention    = time.Hour
	DefaultMaxRetention = 7 * 24 * time.Hour
	DefaultInterval     = 10 * time.Second
)

// Options tune the trimmer.
type Options struct {
	// Retention is how long an entry stays after every group acknowledged it (0 = no wait).
	Retention time.Duration
	// MaxRetention removes even unacknowledged entries older than this (0 = never).
	MaxRetention time.Duration
	// Interval is how often a subject with traffic is looked at.
	Interval time.Duration
	// AttemptRetention is how long attempts stay in the attempt logs.
	AttemptRetention time.Duration
	Logger           *zap.Logger
	Metrics          Metrics
}

// How often a subject is looked at once its traffic stopped: often enough to trim what
// the retention frees (a few times per retention; dead letters are trimmed on the same
// pass), rarely enough that thousands of idle subjects cost Redis next to nothing; an
// empty stream without subscriptions only once an hour.
const (
	// activeFor is how many intervals a subject counts as active after its last traffic:
	// one more pass records where the safe point stood when traffic stopped; from then on
	// idle looks trim it when the retention has passed.
	activeFor    = 1
	maxIdleLook  = 15 * time.Minute
	emptyLook    = time.Hour
	passTimeout  = 10 * time.Second
	errLogRepeat = time.Minute
)

// Trimmer runs retention passes. Touch is safe for concurrent use and cheap enough for
// every publish; SetSubscriptions may be called at any time.
type Trimmer struct {
	b    Broker
	opts Options
	log  *zap.Logger

	// touched maps a subject to a flag set by Touch and cleared by the pass loop.
	touched sync.Map

	mu   sync.Mutex
	subs map[string][]*core.Subscription // stream subscriptions by subject

	// Owned by the loop goroutine.
	subjects map[string]*subjectState
	lastErr  time.Time

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

type subjectState struct {
	lastActive time.Time
	nextLook   time.Time
}

// New returns a trimmer; it does nothing until Start.
func New(b Broker, opts Options) *Trimmer {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Metrics == nil {
		opts.Metrics = noMetrics{}
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	return &Trimmer{b: b, opts: opts, log: opts.Logger, subs: map[string][]*core.Subscription{},
		subjects: map[string]*subjectState{}, stop: make(chan struct{}), done: make(chan struct{})}
}

// Touch notes traffic on subject (a publish, a read): it is looked at every interval for
// a while. It costs an atomic load once the subject is known.
func (t *Trimmer) Touch(subject string) {
	if v, ok := t.touched.Load(subject); ok {
		if f := v.(*atomic.Bool); !f.Load() {
			f.Store(true)
		}
		return
	}
	f := new(atomic.Bool)
	f.Store(true)
	if v, loaded := t.touched.LoadOrStore(subject, f); loaded {
		v.(*atomic.Bool).Store(true)
	}
}

// SetSubscriptions gives the trimmer the current subscriptions: their subjects are always
// looked at, their dead letters trimmed (lists have them too) and, on streams, their
// losses to the hard cap counted.
func (t *Trimmer) SetSubscriptions(all []*core.Subscription) {
	subs := make(map[string][]*core.Subscription, len(all))
	for _, s := range all {
		subs[s.Subject] = append(subs[s.Subject], s)
	}
	t.mu.Lock()
	t.subs = subs
	t.mu.Unlock()
}

// Start runs the passes in a goroutine of their own until Stop.
func (t *Trimmer) Start() {
	go func() {
		defer close(t.done)
		t.loop()
	}()
}

// Stop ends the passes and waits for the one running (bounded by its timeout). It is
// safe to call twice.
func (t *Trimmer) Stop() {
	t.once.Do(func() { close(t.stop) })
	<-t.done
}

func (t *Trimmer) loop() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-t.stop
		cancel()
	}()
	now := time.Now()
	known, err := t.b.KnownSubjects(ctx)
	if err != nil {
		t.logErr("cannot read the subjects to trim; will learn them from traffic", err)
	}
	for i, s := range known {
		// Staggered over one interval, so a restart does not look at everything at once.
		t.subjects[s] = &subjectState{nextLook: now.Add(time.Duration(i) * t.opts.Interval / time.Duration(len(known)))}
	}
	tick := time.NewTicker(t.opts.Interval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		t.round(ctx, time.Now())
	}
}

// round looks at every subject whose time has come.
func (t *Trimmer) round(ctx context.Context, now time.Time) {
	var fresh []string
	t.touched.Range(func(k, v any) bool {
		if f := v.(*atomic.Bool); f.Load() {
			f.Store(false)
			subject := k.(string)
			st := t.subjects[subject]
			if st == nil {
				st = &subjectState{}
				t.subjects[subject] = st
				fresh = append(fresh, subject)
			}
			st.lastActive = now
			if st.nextLook.After(now) {
				st.nextLook = now
			}
		}
		return true
	})
	if len(fresh) > 0 {
		if err := t.b.RememberSubjects(ctx, fresh); err != nil {
			t.logErr("cannot record subjects to trim", err)
		}
	}
	t.mu.Lock()
	subs := t.subs
	t.mu.Unlock()
	for subject := range subs {
		if t.subjects[subject] == nil {
			t.subjects[subject] = &subjectState{}
		}
	}
	for subject, st := range t.subjects {
		if ctx.Err() != nil {
			return
		}
		if now.Before(st.nextLook) {
			continue
		}
		t.pass(ctx, subject, st, subs[subject], now)
	}
}

// pass trims one subject and decides when to look at it again.
func (t *Trimmer) pass(ctx context.Context, subject string, st *subjectState, subs []*core.Subscription, now time.Time) {
	pctx, cancel := context.WithTimeout(ctx, passTimeout)
	defer cancel()
	if ce := t.log.Check(zap.DebugLevel, "retention pass"); ce != nil {
		ce.Write(zap.String("subject", subject), zap.Time("last_active", st.lastActive))
	}
	res, err := t.b.Trim(pctx, subject, core.TrimParams{
		Now: now, Retention: t.opts.Retention, MaxRetention: t.opts.MaxRetention, Subscriptions: subs,
		AttemptRetention: t.opts.AttemptRetention,
	})
	if err != nil {
		t.logErr("retention pass failed; trying again", err)
		st.nextLook = now.Add(t.opts.Interval)
		return
	}
	if res.Trimmed > 0 {
		t.opts.Metrics.Trimmed(subject, res.Trimmed)
	}
	for group, n := range res.Expired {
		name, ok := strings.CutPrefix(group, "bridge:")
		if !ok {
			continue // another consumer's group: not the bridge's to count
		}
		for _, s := range subs {
			if s.Name != name {
				continue
			}
			t.log.Warn("messages removed by BRIDGE_MAX_RETENTION before they were delivered; counted as expired",
				zap.String("subscription", s.Name), zap.String("subject", subject), zap.Int64("count", n),
				zap.Duration("max_retention", t.opts.MaxRetention))
			t.opts.Metrics.Expired(s.Name, n)
			if err := t.b.AddExpired(pctx, s, n); err != nil {
				t.logErr("cannot count expired messages", err)
			}
		}
	}
	if !res.Exists && len(subs) == 0 {
		// Nothing left to trim and nobody reads it: forget it until it sees traffic again.
		if err := t.b.ForgetSubject(pctx, subject); err == nil {
			delete(t.subjects, subject)
			t.opts.Metrics.ForgetStream(subject)
			return
		}
	}
	t.opts.Metrics.StreamEntries(subject, res.Length)
	switch {
	case now.Sub(st.lastActive) < activeFor*t.opts.Interval:
		st.nextLook = now.Add(t.opts.Interval)
	case res.Length == 0 && len(subs) == 0:
		// An empty stream nobody reads: only new traffic (or a slow sweep) brings work.
		st.nextLook = now.Add(emptyLook)
	default:
		st.nextLook = now.Add(min(max(t.opts.Retention/4, t.opts.Interval), maxIdleLook))
	}
}

func (t *Trimmer) logErr(msg string, err error) {
	if time.Since(t.lastErr) > errLogRepeat {
		t.log.Warn(msg, zap.Error(err))
		t.lastErr = time.Now()
	}
}
