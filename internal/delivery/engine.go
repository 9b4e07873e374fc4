// Package delivery is the engine that reads each subscription through its consumer group,
// pushes every message to the webhook and settles it: ack, durable delayed retry, or
// dead-letter.
package delivery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// Broker is what the engine needs from Redis. *broker.Broker implements it.
type Broker interface {
	ListSubscriptions(ctx context.Context) ([]*core.Subscription, int64, error)
	SubscriptionsVersion(ctx context.Context) (int64, error)
	PauseSubscription(ctx context.Context, name, reason string) error
	// Read returns an error wrapping ErrNoGroup when the subscription's group is missing.
	Read(ctx context.Context, s *core.Subscription, consumer string, count int, block time.Duration) ([]core.Message, error)
	GetSubscription(ctx context.Context, name string) (*core.Subscription, error)
	EnsureGroup(ctx context.Context, subject, sub, start string) (bool, error)
	Ack(ctx context.Context, subject, sub string, entryIDs ...string) error
	Retry(ctx context.Context, s *core.Subscription, m *core.Message, due time.Time) error
	ClaimRetries(ctx context.Context, s *core.Subscription, now time.Time, lease time.Duration, limit int) ([]core.Message, time.Time, error)
	AckRetries(ctx context.Context, s *core.Subscription, ids ...string) error
	DeadLetter(ctx context.Context, s *core.Subscription, m *core.Message, info core.DeadLetterInfo) error
	Reclaim(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error)
	MoveDueScheduled(ctx context.Context, now time.Time, limit int) (core.ScheduledMove, error)
	AddStats(ctx context.Context, s *core.Subscription, consumer string, d core.StatsDelta) error
	ForgetInFlight(ctx context.Context, s *core.Subscription, consumer string) error
	WatchChanges(ctx context.Context, onChange func())

	PopList(ctx context.Context, s *core.Subscription, consumer string, count int, block time.Duration) ([]core.Message, error)
	AckList(ctx context.Context, s *core.Subscription, msgs ...*core.Message) error
	Heartbeat(ctx context.Context, s *core.Subscription, consumer string) error
	RecoverList(ctx context.Context, s *core.Subscription, staleAfter time.Duration) (int, error)
	ReleaseList(ctx context.Context, s *core.Subscription, consumer string) error

	HoldLease(ctx context.Context, s *core.Subscription, holder string, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, s *core.Subscription, holder string) error
	RetryingKeys(ctx context.Context, s *core.Subscription) ([]string, error)
	PruneConsumers(ctx context.Context, s *core.Subscription, idleOver time.Duration) (int, error)
	ReclaimOthers(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error)

	SubscribePubSub(ctx context.Context, s *core.Subscription, onSubscribed func(), fn func(core.Message)) error
	ClaimPubSub(ctx context.Context, s *core.Subscription, id string) (bool, error)

	// MarkLive restores the marker that lets a live subscription's settlements write.
	MarkLive(ctx context.Context, s *core.Subscription) error
	// ReportProcess records that consumer is alive and has applied registry version.
	ReportProcess(ctx context.Context, consumer string, version int64) error
	ForgetProcess(ctx context.Context, consumer string) error
	Processes(ctx context.Context) (map[string]core.ProcessState, error)
}

// Metrics is what the engine reports; *metrics.Metrics implements it.
type Metrics interface {
	Pushed(sub string, status int, outcome string, d time.Duration)
	Lost(sub string, n int)
	ScheduledDropped(subject string)
}

type noMetrics struct{}

func (noMetrics) Pushed(string, int, string, time.Duration) {}
func (noMetrics) Lost(string, int)                          {}
func (noMetrics) ScheduledDropped(string)                   {}

// Options tune the engine; zero values take the defaults.
type Options struct {
	// Consumer names this process in every consumer group; default host-pid-random.
	Consumer string
	// Client sends the pushes; default NewHTTPClient(nil) (no SSRF guard: set one in production).
	Client *http.Client
	Logger *zap.Logger
	// RegistryPoll is how often the subscription registry is checked for changes (default 1 s,
	// which keeps SPEC's "seen by all processes within 2 s").
	RegistryPoll time.Duration
	// Metrics records pushes; nil records nothing.
	Metrics Metrics
	// Block bounds each XREADGROUP wait (default 250 ms): a pause or stop takes effect
	// within it, since a read already waiting may still hand out entries.
	Block time.Duration
	// RegistryLost, when set, is called when the subscription registry, once seen, is found
	// missing (Redis lost its data), so the caller can restore what it knows.
	RegistryLost func(ctx context.Context)
	// OnApply, when set, is called with every registry snapshot the engine applies.
	OnApply func(subs []*core.Subscription)
	// Touch, when set, is called with a subject each time entries were read from it (the
	// retention trimmer looks at subjects with traffic).
	Touch func(subject string)
}

// Engine delivers every active subscription. Start it once; Shutdown it once (a second
// call returns at once). Safe for concurrent use.
type Engine struct {
	b        Broker
	client   *http.Client
	metrics  Metrics
	log      *zap.Logger
	consumer string
	opts     Options

	// abortCtx is cancelled only when the shutdown grace runs out: pushes still running
	// are then cut and their messages left unsettled for reclaim.
	abortCtx  context.Context
	abort     context.CancelFunc
	stop      chan struct{}
	flushStop chan struct{}
	// changed wakes the registry watcher when a change is announced (size one: a pending
	// wake-up already covers any later change).
	changed  chan struct{}
	watchCtx context.Context
	unwatch  context.CancelFunc
	// flushDone is closed when the stats flusher ended (after its last flush).
	flushDone chan struct{}
	// finalCtx bounds the last stats flush: the shutdown's grace.
	finalCtx context.Context
	stopped  atomic.Bool
	running  atomic.Bool
	wg       sync.WaitGroup // watcher and every runner's goroutines

	generation atomic.Int64 // numbers runners, see runner.consumer

	// applied is the registry version this process has applied; appliedCh is closed (and
	// replaced) whenever it moves, under appliedMu.
	applied   atomic.Int64
	appliedMu sync.Mutex
	appliedCh chan struct{}

	mu      sync.Mutex
	runners map[string]*runner
	live    map[string]*liveSub
}

// New returns an engine over b. It does nothing until Start.
func New(b Broker, opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Client == nil {
		opts.Client = NewHTTPClient(nil)
	}
	if opts.Consumer == "" {
		opts.Consumer = defaultConsumer()
	}
	if opts.RegistryPoll <= 0 {
		opts.RegistryPoll = time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = noMetrics{}
	}
	if opts.Block <= 0 {
		opts.Block = 250 * time.Millisecond
	}
	if opts.OnApply == nil {
		opts.OnApply = func([]*core.Subscription) {}
	}
	if opts.Touch == nil {
		opts.Touch = func(string) {}
	}
	abortCtx, abort := context.WithCancel(context.Background())
	watchCtx, unwatch := context.WithCancel(context.Background())
	return &Engine{
		b: b, client: opts.Client, metrics: opts.Metrics, log: opts.Logger, consumer: opts.Consumer, opts: opts,
		abortCtx: abortCtx, abort: abort, stop: make(chan struct{}), flushStop: make(chan struct{}),
		changed: make(chan struct{}, 1), watchCtx: watchCtx, unwatch: unwatch,
		runners: map[string]*runner{}, live: map[string]*liveSub{}, appliedCh: make(chan struct{}),
	}
}

func defaultConsumer() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Consumer is this process's consumer name.
func (e *Engine) Consumer() string { return e.consumer }

// Running reports whether the engine has started and is not shutting down.
func (e *Engine) Running() bool { return e.running.Load() }

// Start begins watching the subscription registry and delivering.
func (e *Engine) Start() {
	e.running.Store(true)
	e.flushDone = make(chan struct{})
	go func() {
		defer close(e.flushDone)
		e.flushStatsLoop()
	}()
	e.wg.Add(3)
	go func() {
		defer e.wg.Done()
		e.watch()
	}()
	go func() {
		defer e.wg.Done()
		e.b.WatchChanges(e.watchCtx, func() {
			select {
			case e.changed <- struct{}{}:
			default:
			}
		})
	}()
	go func() {
		defer e.wg.Done()
		e.moveScheduled()
	}()
	e.log.Info("delivery engine started", zap.String("consumer", e.consumer))
}

// Shutdown stops reading from Redis and waits for in-flight pushes to finish and be
// settled. When ctx ends first, the remaining pushes are cancelled and their messages stay
// pending, to be reclaimed after their visibility timeout; ctx's error is returned then.
// Shutdown returns within ctx's deadline (plus the time to cancel what still runs),
// whatever a webhook or Redis does.
func (e *Engine) Shutdown(ctx context.Context) error {
	if !e.stopped.CompareAndSwap(false, true) {
		return nil
	}
	e.running.Store(false)
	close(e.stop)
	e.unwatch()
	e.mu.Lock()
	for _, r := range e.runners {
		r.stopReading()
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		// Past the grace: cut pushes and settlements (every Redis call of a runner hangs off
		// abortCtx), so what remains stays pending for reclaim.
		e.abort()
		<-done
	}
	e.finalCtx = ctx
	close(e.flushStop)
	if e.flushDone != nil {
		<-e.flushDone
	}
	e.abort()
	e.client.CloseIdleConnections()
	return err
}

// redisCtx bounds one Redis call of the delivery work: a settlement, a read, a claim. It
// ends early once the shutdown grace is over.
func (e *Engine) redisCtx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.abortCtx, d)
}

// statsFlushEvery is how often this process adds its counters to the shared ones in Redis
// and reports itself alive.
const statsFlushEvery = time.Second

func (e *Engine) flushStatsLoop() {
	t := time.NewTicker(statsFlushEvery)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-e.flushStop:
			e.flushStats(true)
			return
		case <-t.C:
			e.flushStats(false)
			e.report()
			if n%60 == 0 {
				e.pruneProcesses()
			}
		}
	}
}

// pruneProcesses removes the reports of processes silent for processForget (killed, or
// gone without a clean stop), so bridge:processes stays as small as the live fleet.
func (e *Engine) pruneProcesses() {
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	procs, err := e.b.Processes(ctx)
	if err != nil {
		return
	}
	for name, p := range procs {
		if time.Since(p.At) > processForget {
			_ = e.b.ForgetProcess(ctx, name)
		}
	}
}

// flushStats adds every subscription's unseen counts to its shared counters; final also
// withdraws this process's in-flight report and its entry among the live processes.
func (e *Engine) flushStats(final bool) {
	e.mu.Lock()
	all := make([]*liveSub, 0, len(e.live))
	for _, l := range e.live {
		all = append(all, l)
	}
	e.mu.Unlock()
	parent := context.Background()
	if final && e.finalCtx != nil {
		parent = e.finalCtx // still within the grace, or already over it
	}
	for _, l := range all {
		st := l.stats
		sub := st.sub.Load()
		if sub == nil || l.gone.Load() {
			continue
		}
		d := st.delta()
		if st.idle(d) {
			continue
		}
		ctx, cancel := context.WithTimeout(parent, settleTimeout)
		err := e.b.AddStats(ctx, sub, e.consumer, d)
		if errors.Is(err, core.ErrGone) && !e.confirmGone(ctx, l) {
			err = e.b.AddStats(ctx, sub, e.consumer, d)
		}
		if err == nil {
			st.flushedDelta(d)
		}
		if final {
			_ = e.b.ForgetInFlight(ctx, sub, e.consumer)
		}
		cancel()
	}
	if final {
		ctx, cancel := context.WithTimeout(parent, settleTimeout)
		_ = e.b.ForgetProcess(ctx, e.consumer)
		cancel()
	}
}

// confirmGone is called when Redis says a subscription's marker does not match it. It
// reports whether the subscription is really gone; a live subscription whose marker was
// missing (made before markers existed, or lost) gets it back, and the caller retries.
func (e *Engine) confirmGone(ctx context.Context, l *liveSub) bool {
	if l.gone.Load() {
		return true
	}
	s := l.sub.Load()
	cur, err := e.b.GetSubscription(ctx, s.Name)
	switch {
	case errors.Is(err, core.ErrNotFound), err == nil && cur.Incarnation() != s.Incarnation():
		l.gone.Store(true)
		return true
	case err != nil:
		return false
	}
	if err := e.b.MarkLive(ctx, s); err != nil {
		e.log.Warn("could not restore the subscription's marker", zap.String("subscription", s.Name), zap.Error(err))
	}
	return false
}

// report tells the other processes which registry version this one has applied (and that
// it is alive); Sync waits on these reports.
func (e *Engine) report() {
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	if err := e.b.ReportProcess(ctx, e.consumer, e.applied.Load()); err != nil {
		e.log.Debug("could not report this process", zap.Error(err))
	}
}

// Stats returns this process's counters for a subscription, or nil if it never ran here.
func (e *Engine) Stats(name string) *Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	if l := e.live[name]; l != nil {
		return l.stats
	}
	return nil
}

// Process liveness as Sync sees it: a process that reported within processFresh counts;
// one silent for processForget is removed from the list.
const (
	processFresh  = 3 * time.Second
	processForget = 10 * time.Minute
	// SyncWait bounds how long Sync waits for the other processes (SPEC §4).
	SyncWait = 2 * time.Second
)

// Sync makes a registry change of the given version in force before it returns: this
// process applies it at once, then Sync waits until every other live process reports it
// has applied it too, at most SyncWait in all. It returns an error naming what did not
// confirm in time; the change is stored either way and applies as each process catches up.
func (e *Engine) Sync(ctx context.Context, version int64) error {
	if !e.running.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, SyncWait)
	defer cancel()
	select {
	case e.changed <- struct{}{}:
	default:
	}
	for e.applied.Load() < version {
		e.appliedMu.Lock()
		ch := e.appliedCh
		e.appliedMu.Unlock()
		if e.applied.Load() >= version {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("this process has not applied registry version %d yet", version)
		}
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		procs, err := e.b.Processes(ctx)
		var behind []string
		if err == nil {
			now := time.Now()
			for name, p := range procs {
				age := now.Sub(p.At)
				if age > processForget {
					_ = e.b.ForgetProcess(ctx, name)
				}
				if age <= processFresh && p.Version < version {
					behind = append(behind, name)
				}
			}
			if len(behind) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("could not read which processes applied registry version %d: %w", version, err)
			}
			return fmt.Errorf("processes %v have not confirmed registry version %d", behind, version)
		case <-t.C:
		}
	}
}

func (e *Engine) setApplied(v int64) {
	e.appliedMu.Lock()
	if v > e.applied.Load() {
		e.applied.Store(v)
		close(e.appliedCh)
		e.appliedCh = make(chan struct{})
	}
	e.appliedMu.Unlock()
}

func (e *Engine) watch() {
	t := time.NewTicker(e.opts.RegistryPoll)
	defer t.Stop()
	version := int64(-1)
	failing := false
	for {
		ctx, cancel := e.redisCtx(settleTimeout)
		v, err := e.b.SubscriptionsVersion(ctx)
		if err == nil && v == 0 && version > 0 {
			e.registryLost()
		}
		if err == nil && v != version {
			var subs []*core.Subscription
			subs, v, err = e.b.ListSubscriptions(ctx)
			if err == nil {
				e.apply(subs, v)
				e.opts.OnApply(subs)
				version = v
				e.report()
			}
		}
		cancel()
		if err != nil && !failing {
			e.log.Warn("cannot read the subscription registry; delivery continues with what it knows", zap.Error(err))
		} else if err == nil && failing {
			e.log.Info("subscription registry readable again")
		}
		failing = err != nil
		select {
		case <-e.stop:
			return
		case <-t.C:
		case <-e.changed:
		}
	}
}

// registryLost handles a registry that existed and is now gone: Redis lost its data (a
// restart without persistence, a failover to an empty replica, a FLUSHALL).
func (e *Engine) registryLost() {
	ctx, cancel := context.WithTimeout(e.abortCtx, 30*time.Second)
	defer cancel()
	if e.opts.RegistryLost == nil {
		e.log.Error("the subscription registry is gone: Redis lost its data (restart without persistence, failover or flush); subscriptions must be created again")
		return
	}
	e.log.Warn("the subscription registry is gone: Redis lost its data (restart without persistence, failover or flush); applying the subscriptions file again")
	e.opts.RegistryLost(ctx)
}

// producerStopWait bounds how long apply waits for a stopped runner's producer (a read
// blocks at most Block; anything longer is a Redis stall).
const producerStopWait = 1500 * time.Millisecond

// apply starts, restarts and stops runners so that exactly the active subscriptions run,
// each with its current configuration, and records version as applied once runners that
// must stop have stopped reading. A change that only affects pushes is stored in the
// subscription's live config and used by every push that starts afterwards; a replaced
// runner finishes its in-flight pushes while the new one starts reading.
func (e *Engine) apply(subs []*core.Subscription, version int64) {
	e.mu.Lock()
	if e.stopped.Load() {
		e.mu.Unlock()
		return
	}
	var stopped []*runner
	stop := func(name string) {
		if r := e.runners[name]; r != nil {
			r.stopReading()
			stopped = append(stopped, r)
			delete(e.runners, name)
		}
	}
	seen := make(map[string]bool, len(subs))
	for _, s := range subs {
		seen[s.Name] = true
		l := e.live[s.Name]
		if l != nil && l.sub.Load().Incarnation() != s.Incarnation() {
			// Deleted and created again: the old one's late settlements must write nothing.
			l.gone.Store(true)
			l = nil
		}
		var err error
		if l == nil {
			l, err = newLiveSub(s)
		} else {
			err = l.update(s)
		}
		if err != nil {
			e.log.Error("cannot start subscription", zap.String("subscription", s.Name), zap.Error(err))
			stop(s.Name)
			delete(e.live, s.Name)
			continue
		}
		e.live[s.Name] = l
		cur := e.runners[s.Name]
		if cur != nil && cur.live == l && !needsNewRunner(cur.sub, s) {
			continue
		}
		stop(s.Name)
		if s.Paused {
			continue
		}
		r := newRunner(e, s, l)
		e.runners[s.Name] = r
		r.start()
	}
	for name := range e.runners {
		if !seen[name] {
			stop(name)
		}
	}
	for name, l := range e.live {
		if !seen[name] {
			// Deleted: its shared counters are gone with it; writing them would bring them back.
			l.gone.Store(true)
			delete(e.live, name)
		}
	}
	e.mu.Unlock()
	deadline := time.NewTimer(producerStopWait)
	defer deadline.Stop()
	for _, r := range stopped {
		select {
		case <-r.producerDone:
		case <-deadline.C:
			e.log.Warn("a stopped subscription is still reading; applying the change anyway", zap.String("subscription", r.sub.Name))
			e.setApplied(version)
			return
		}
	}
	e.setApplied(version)
}

// scheduledPoll bounds how late a scheduled message enters its stream.
const scheduledPoll = 250 * time.Millisecond

// moveScheduled appends scheduled messages to their streams when they come due. Every
// process runs it; the lease in the broker keeps two from moving the same message.
func (e *Engine) moveScheduled() {
	var errs errThrottle
	for {
		ctx, cancel := e.redisCtx(settleTimeout)
		mv, err := e.b.MoveDueScheduled(ctx, time.Now(), 256)
		cancel()
		if err != nil {
			errs.log(e.log, "moving scheduled messages failed; retrying", err)
		} else {
			errs.ok(e.log, "moving scheduled messages again")
		}
		for _, d := range mv.Dropped {
			e.log.Error("scheduled message dropped: its subject can no longer take it",
				zap.String("message_id", d.ID), zap.String("subject", d.Subject), zap.Error(d.Err))
			e.metrics.ScheduledDropped(d.Subject)
		}
		wait := scheduledPoll
		if mv.Moved+len(mv.Dropped) == 256 {
			wait = 0
		} else if !mv.Next.IsZero() {
			wait = min(max(time.Until(mv.Next), 10*time.Millisecond), scheduledPoll)
		}
		t := time.NewTimer(wait)
		select {
		case <-e.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// LocalStats returns this process's counters for a subscription (zero if it never ran here).
func (e *Engine) LocalStats(name string) core.LocalStats {
	st := e.Stats(name)
	if st == nil {
		return core.LocalStats{}
	}
	return core.LocalStats{
		InFlight: st.InFlight.Load(), Delivered: st.Delivered.Load(), Retried: st.Retried.Load(),
		DeadLettered: st.DeadLettered.Load(), Lost: st.Lost.Load(), LastStatus: st.LastStatus.Load(),
		LastError: st.LastError(),
	}
}
