// Package delivery is the engine that reads each subscription through its consumer group,
// pushes every message to the webhook and settles it: ack, durable delayed retry, or
// dead-letter.
//
// Reading is driven by events, not by a blocking read per subscription: a publish (in this
// process, or in another one, which says so over one Pub/Sub channel), a retry coming due,
// or a sweep that notices entries other producers wrote wakes the subscriptions concerned,
// which read without blocking until they find nothing more. An idle subscription holds no
// goroutine and no connection, and costs Redis a few commands a minute.
package delivery

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// Metrics is what the engine reports; *metrics.Metrics implements it.
type Metrics interface {
	// ForSubscription returns what records the pushes of one subscription.
	ForSubscription(sub string) interface {
		Pushed(status int, outcome string, d time.Duration)
	}
	Lost(sub string, n int)
	ScheduledDropped(subject string)
	// Filtered counts messages a subscription's filter acked without a push.
	Filtered(sub string)
}

type noMetrics struct{}

func (noMetrics) ForSubscription(string) interface {
	Pushed(status int, outcome string, d time.Duration)
} {
	return noMetrics{}
}
func (noMetrics) Pushed(int, string, time.Duration) {}
func (noMetrics) Lost(string, int)                  {}
func (noMetrics) ScheduledDropped(string)           {}
func (noMetrics) Filtered(string)                   {}

// Defaults of Options.
const (
	DefaultRegistryPoll  = time.Second
	DefaultPollInterval  = time.Second
	DefaultCheckInterval = 5 * time.Minute
)

// Options tune the engine; zero values take the defaults.
type Options struct {
	// Consumer names this process in every consumer group; default host-pid-random.
	Consumer string
	// Client sends the pushes; default NewClient(nil) (no SSRF guard: set one in production).
	Client *Client
	Logger *zap.Logger
	// RegistryPoll is how often the subscription registry is checked for changes (default 1 s,
	// which keeps SPEC's "seen by all processes within 2 s"; changes are also announced).
	RegistryPoll time.Duration
	// PollInterval is how often idle subscriptions look for messages that nothing announced
	// (written by other producers): one XREAD for all idle streams and one LLEN per idle
	// list. Default 1 s, the longest such a message waits.
	PollInterval time.Duration
	// CheckInterval is how often each idle subscription is checked, as a safety net, for
	// work nothing signals: retries a process that died left due, entries pending past the
	// visibility timeout, a dead list consumer (default 5 min). When a process is seen to
	// die, every subscription is checked one visibility timeout later anyway.
	CheckInterval time.Duration
	// Metrics records pushes; nil records nothing.
	Metrics Metrics
	// RegistryLost, when set, is called when the subscription registry, once seen, is found
	// missing (Redis lost its data), so the caller can restore what it knows.
	RegistryLost func(ctx context.Context)
	// OnApply, when set, is called with every registry snapshot the engine applies.
	OnApply func(subs []*core.Subscription)
	// Touch, when set, is called with a subject each time entries were read from it (the
	// retention trimmer looks at subjects with traffic).
	Touch func(subject string)
	// AttemptLog records every push attempt with its settlement (SPEC §9).
	AttemptLog bool
	// HotWait is how long a busy stream subscription's read waits in Redis for the next
	// entry (XREADGROUP BLOCK, on a pooled connection) instead of waiting for the publish's
	// wake-up and reading after it: one round trip less between publish and push. A
	// subscription is busy for hotWindow after its last entry. 0: reads only on wake-ups.
	HotWait time.Duration
}

// Engine delivers every active subscription. Start it once; Shutdown it once (a second
// call returns at once). Safe for concurrent use.
type Engine struct {
	b      Broker
	client *Client
	// hotReads counts the reads waiting in Redis now (see maxHotReads).
	hotReads atomic.Int32
	metrics  Metrics
	log      *zap.Logger
	consumer string
	opts     Options
	settler  *settler
	hub      *hub

	// abortCtx is cancelled only when the shutdown grace runs out: pushes still running
	// are then cut and their messages left unsettled for reclaim.
	abortCtx context.Context
	abort    context.CancelFunc
	stop     chan struct{}
	// changed wakes the registry watcher when a change is announced (size one: a pending
	// wake-up already covers any later change).
	changed  chan struct{}
	watchCtx context.Context
	unwatch  context.CancelFunc
	// flushStop ends the stats flusher; flushDone is closed after its last flush.
	flushStop chan struct{}
	flushDone chan struct{}
	// finalCtx bounds the last stats flush: the shutdown's grace.
	finalCtx context.Context
	stopped  atomic.Bool
	running  atomic.Bool
	loops    sync.WaitGroup // watcher, control receiver, sweeps, scheduled mover
	finishes sync.WaitGroup // stopped subs finishing their pushes

	generation atomic.Int64 // numbers subs that own Redis state, see sub.consumer

	// applied is the registry version this process has applied; appliedCh is closed (and
	// replaced) whenever it moves, under appliedMu.
	applied   atomic.Int64
	appliedMu sync.Mutex
	appliedCh chan struct{}

	// changes are announced registry changes waiting for the watcher.
	changes chan registryChange
	// troubled is set when a Redis call of the delivery work failed: the next fleet watch
	// schedules a check of every subscription (see watchFleet).
	troubled atomic.Bool

	mu   sync.Mutex
	subs map[string]*sub
	live map[string]*liveSub
	// configs is the registry as last applied.
	configs map[string]*core.Subscription
	// fleet are the other processes last seen alive (nil before the first look); owned by
	// the stats flusher.
	fleet map[string]bool
	// index maps a subject to its active subs, for wake-ups on the publish path; replaced
	// whole on every apply.
	index atomic.Pointer[map[string]*subjectSubs]
}

// subjectSubs are the active subs of one subject.
type subjectSubs struct {
	subs []*sub
	// lastWake (unix ms) rate-limits the wake-ups this process sends the others.
	lastWake atomic.Int64
}

// New returns an engine over b. It does nothing until Start.
func New(b Broker, opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Client == nil {
		opts.Client = NewClient(nil)
	}
	if opts.Consumer == "" {
		opts.Consumer = defaultConsumer()
	}
	if opts.RegistryPoll <= 0 {
		opts.RegistryPoll = DefaultRegistryPoll
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.Metrics == nil {
		opts.Metrics = noMetrics{}
	}
	if opts.OnApply == nil {
		opts.OnApply = func([]*core.Subscription) {}
	}
	if opts.Touch == nil {
		opts.Touch = func(string) {}
	}
	abortCtx, abort := context.WithCancel(context.Background())
	watchCtx, unwatch := context.WithCancel(context.Background())
	e := &Engine{
		b: b, client: opts.Client, metrics: opts.Metrics, log: opts.Logger, consumer: opts.Consumer, opts: opts,
		abortCtx: abortCtx, abort: abort, stop: make(chan struct{}), flushStop: make(chan struct{}),
		changed: make(chan struct{}, 1), watchCtx: watchCtx, unwatch: unwatch,
		subs: map[string]*sub{}, live: map[string]*liveSub{}, configs: map[string]*core.Subscription{},
		appliedCh: make(chan struct{}), changes: make(chan registryChange, 1024),
	}
	e.settler = newSettler(e)
	e.hub = newHub(e)
	empty := map[string]*subjectSubs{}
	e.index.Store(&empty)
	return e
}

func defaultConsumer() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = crand.Read(b[:])
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
	go e.settler.run()
	for _, loop := range []func(){e.watch, e.control, e.sweep, e.moveScheduled} {
		e.loops.Add(1)
		go func() {
			defer e.loops.Done()
			loop()
		}()
	}
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
	for name, r := range e.subs {
		e.retire(r)
		delete(e.subs, name)
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.loops.Wait()
		e.finishes.Wait()
		e.hub.close()
		// Every push has settled or been cut: the last acknowledgements go out (their
		// retries end with the grace too).
		e.settler.close()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		// Past the grace: cut pushes and settlements (every Redis call of the delivery
		// work hangs off abortCtx; the pushes' connections are closed), so what remains
		// stays pending for reclaim.
		e.abort()
		e.client.Abort()
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

// retire stops r reading and lets its pushes finish in the background (e.mu held).
func (e *Engine) retire(r *sub) {
	r.stop()
	if r.cfg.Transport == core.TransportPubSub {
		e.hub.remove(r)
	}
	e.finishes.Add(1)
	go func() {
		defer e.finishes.Done()
		r.finish()
	}()
}

// redisCtx bounds one Redis call of the delivery work: a settlement, a read, a claim. It
// ends early once the shutdown grace is over.
func (e *Engine) redisCtx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.abortCtx, d)
}

// Published tells the engine that subject got new messages through this process: its
// subscriptions read at once, and the other processes are told (at most every 50 ms per
// subject, so a busy subject costs them one wake-up, not one per message). Cheap enough
// for every publish.
func (e *Engine) Published(subject string) {
	ss := (*e.index.Load())[subject]
	if ss == nil {
		return // nobody subscribes to it, here or anywhere
	}
	for _, r := range ss.subs {
		r.kick()
	}
	now := time.Now().UnixMilli()
	if last := ss.lastWake.Load(); now-last >= wakeEvery && ss.lastWake.CompareAndSwap(last, now) {
		go func() {
			ctx, cancel := e.redisCtx(time.Second)
			defer cancel()
			_ = e.b.Wake(ctx, subject)
		}()
	}
}

// wakeEvery (ms) bounds how often one process tells the others about one subject.
const wakeEvery = 50

// kickSubject wakes the local subscriptions of subject (a wake-up from another process).
func (e *Engine) kickSubject(subject string) {
	if ss := (*e.index.Load())[subject]; ss != nil {
		for _, r := range ss.subs {
			r.kick()
		}
	}
}

// control receives the bridge's own channels: registry changes and wake-ups from the other
// processes, resubscribing after a lost connection (the registry poll covers the gap).
func (e *Engine) control() {
	var errs errThrottle
	for e.watchCtx.Err() == nil {
		err := e.b.ReceiveControl(e.watchCtx, e.announced, e.kickSubject)
		if e.watchCtx.Err() != nil {
			return
		}
		errs.log(e.log, "lost the bridge's Pub/Sub channels; resubscribing", err)
		e.troubled.Store(true)
		select {
		case e.changed <- struct{}{}: // anything announced meanwhile
		default:
		}
		select {
		case <-e.watchCtx.Done():
		case <-time.After(time.Second):
		}
	}
}

// sweep finds work that nothing announces, for idle subscriptions only (a reading one
// finds it itself): every PollInterval, messages other producers wrote (one XREAD for all
// idle streams; one LLEN per idle list); every CheckInterval per subscription, staggered,
// retries a dead process left due, entries pending past their visibility timeout and dead
// list consumers. Consumer names of processes long gone are pruned now and then.
func (e *Engine) sweep() {
	t := time.NewTicker(e.opts.PollInterval)
	defer t.Stop()
	var errs errThrottle
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		e.mu.Lock()
		var streams, lists, checks []*sub
		for _, r := range e.subs {
			if r.isStopped() {
				continue
			}
			if r.running.Load() {
				// A busy subscription does its own checks: it only needs telling.
				if r.cfg.Transport != core.TransportPubSub && !now.Before(r.nextCheck) {
					r.nextCheck = now.Add(e.opts.CheckInterval)
					r.staleDue.Store(true)
					r.retryDue.Store(true)
					r.kick()
				}
				continue
			}
			switch r.cfg.Transport {
			case core.TransportStream:
				if r.gate == nil || r.leading.Load() {
					streams = append(streams, r)
				}
			case core.TransportList:
				lists = append(lists, r)
			}
			if r.cfg.Transport != core.TransportPubSub && !now.Before(r.nextCheck) {
				r.nextCheck = now.Add(e.opts.CheckInterval)
				checks = append(checks, r)
			}
		}
		e.mu.Unlock()
		if err := e.sweepStreams(streams); err != nil {
			errs.log(e.log, "looking for new messages failed; retrying", err)
		} else if err := e.sweepLists(lists); err != nil {
			errs.log(e.log, "looking for new messages failed; retrying", err)
		} else {
			errs.ok(e.log, "looking for new messages again")
		}
		e.check(checks, now)
	}
}

// sweepStreams wakes the idle stream subscriptions whose stream has an entry newer than
// what they last read.
func (e *Engine) sweepStreams(subs []*sub) error {
	if len(subs) == 0 {
		return nil
	}
	after := map[string]string{}
	for _, r := range subs {
		p := r.lastRead.Load()
		if p == nil {
			r.kick() // never read yet: its first round reads what waits
			continue
		}
		if cur, ok := after[r.cfg.Subject]; !ok || idLess(*p, cur) {
			after[r.cfg.Subject] = *p
		}
	}
	if len(after) == 0 {
		return nil
	}
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	found, err := e.b.NewEntries(ctx, after)
	if err != nil {
		return err
	}
	for _, r := range subs {
		if id, ok := found[r.cfg.Subject]; ok {
			p := r.lastRead.Load()
			if p != nil && idLess(*p, id) {
				r.sweptUpTo.Store(&id)
				r.kick()
			}
		}
	}
	return nil
}

// sweepLists wakes the idle list subscriptions whose list holds messages.
func (e *Engine) sweepLists(subs []*sub) error {
	if len(subs) == 0 {
		return nil
	}
	subjects := make([]string, 0, len(subs))
	seen := map[string]bool{}
	for _, r := range subs {
		if !seen[r.cfg.Subject] {
			seen[r.cfg.Subject] = true
			subjects = append(subjects, r.cfg.Subject)
		}
	}
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	lens, err := e.b.ListLengths(ctx, subjects)
	if err != nil {
		return err
	}
	for _, r := range subs {
		if lens[r.cfg.Subject] > 0 {
			r.kick()
		}
	}
	return nil
}

// check looks for work a dead process left behind (see CheckInterval).
func (e *Engine) check(subs []*sub, now time.Time) {
	if len(subs) == 0 {
		return
	}
	reqs := make([]core.IdleCheckRequest, len(subs))
	for i, r := range subs {
		reqs[i] = core.IdleCheckRequest{Sub: r.cfg, Retries: true}
	}
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	for i, c := range e.b.CheckIdle(ctx, reqs, now) {
		r := subs[i]
		if c.Err != nil {
			continue
		}
		if c.RetryDue {
			r.retryDue.Store(true)
		} else if !c.NextRetry.IsZero() {
			r.armRetry(c.NextRetry) // a dead process's timer for it is gone
		}
		if c.Stale {
			r.staleDue.Store(true)
		}
		if c.RetryDue || c.Stale || c.GroupMissing {
			r.kick()
		}
		if r.cfg.Transport == core.TransportStream && rand.IntN(10) == 0 {
			// About every tenth check: consumers of processes long gone leave the group.
			if n, err := e.b.PruneConsumers(ctx, r.cfg, consumerIdleLimit); err == nil && n > 0 {
				r.log.Info("removed idle consumers that held nothing from the group", zap.Int("count", n))
			}
		}
	}
}

// watchFleet notices bridge processes that stopped reporting (killed, or stopped past their
// grace): what they held (pending entries, leased retries, processing lists) can be taken
// over once it has been idle for a visibility timeout, so every subscription is checked
// then. Called every few seconds.
func (e *Engine) watchFleet() {
	ctx, cancel := e.redisCtx(settleTimeout)
	procs, err := e.b.Processes(ctx)
	cancel()
	if err != nil {
		e.troubled.Store(true)
		return
	}
	now := time.Now()
	if e.troubled.Swap(false) {
		// Redis failed some call since the last look (a restart, a failover, a dropped
		// connection): a read whose reply was lost left entries pending with this very
		// process, an ack that never arrived left them pending too. Nothing announces
		// them: check every subscription once they can be reclaimed.
		e.log.Info("Redis was unreachable; unsettled work is checked after the visibility timeout")
		e.checkAllLater(now)
	}
	alive := make(map[string]bool, len(procs))
	for name, p := range procs {
		if name != e.consumer && now.Sub(p.At) <= processFresh {
			alive[name] = true
		}
	}
	gone := 0
	for name := range e.fleet {
		if !alive[name] {
			gone++
		}
	}
	if e.fleet == nil {
		// Just started: processes that stopped reporting before this one came up may have
		// left work behind too.
		for name, p := range procs {
			if name != e.consumer && now.Sub(p.At) > processFresh {
				gone++
			}
		}
	}
	e.fleet = alive
	if gone == 0 {
		return
	}
	e.log.Info("a bridge process stopped reporting; its unsettled work is taken over after the visibility timeout", zap.Int("processes", gone))
	e.checkAllLater(now)
}

// checkAllLater schedules every subscription's idle check for when work left unsettled
// now can be reclaimed: one visibility timeout (and a second) from now.
func (e *Engine) checkAllLater(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.subs {
		if at := now.Add(time.Duration(r.cfg.VisibilityTimeout) + time.Second); at.Before(r.nextCheck) {
			r.nextCheck = at
		}
	}
}

// Poke tells the engine that a subscription may have work nothing announced (a seek moved
// its cursor, a replay filled its retry set): it reads at once.
func (e *Engine) Poke(name string) {
	e.mu.Lock()
	r := e.subs[name]
	e.mu.Unlock()
	if r != nil {
		r.retryDue.Store(true)
		r.kick()
	}
}

// idLess compares two stream entry ids ("ms-seq").
func idLess(a, b string) bool {
	am, as := splitID(a)
	bm, bs := splitID(b)
	if am != bm {
		return am < bm
	}
	return as < bs
}

func splitID(id string) (ms, seq uint64) {
	i := 0
	for ; i < len(id) && id[i] != '-'; i++ {
		ms = ms*10 + uint64(id[i]-'0')
	}
	for i++; i < len(id); i++ {
		seq = seq*10 + uint64(id[i]-'0')
	}
	return ms, seq
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
			if n%2 == 0 {
				e.watchFleet()
			}
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
		// A write, never retried by the client: the surest sign, once a second, that Redis
		// was unreachable.
		e.troubled.Store(true)
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

// registryChange is one change announced on the registry's channel.
type registryChange struct {
	version int64
	name    string
}

// watch keeps the engine in line with the registry. An announced change (its version and
// the subscription's name) is applied on its own, reading that one subscription; a poll
// every RegistryPoll, or a change that does not follow the last one applied (a missed
// announcement), reloads the whole registry.
func (e *Engine) watch() {
	t := time.NewTicker(e.opts.RegistryPoll)
	defer t.Stop()
	version := int64(-1)
	failing := false
	full := true
	for {
		var err error
		if !full {
			full, err = e.applyChanges(&version)
		}
		if full || err != nil {
			full, err = false, e.reload(&version)
		}
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
			full = true
		case <-e.changed:
		}
	}
}

// reload checks the registry's version and, when it moved, applies the whole registry.
func (e *Engine) reload(version *int64) error {
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	v, err := e.b.SubscriptionsVersion(ctx)
	if err != nil {
		return err
	}
	if v == 0 && *version > 0 {
		e.registryLost()
	}
	if v == *version {
		return nil
	}
	subs, v, err := e.b.ListSubscriptions(ctx)
	if err != nil {
		return err
	}
	e.apply(subs, v)
	*version = v
	e.report()
	return nil
}

// applyChanges applies the announced changes that follow the version applied, one
// subscription at a time. full says a whole reload is needed (a gap in the versions).
func (e *Engine) applyChanges(version *int64) (full bool, err error) {
	for {
		var c registryChange
		select {
		case c = <-e.changes:
		default:
			return false, nil
		}
		switch {
		case c.version <= *version:
			continue // applied already, by a reload
		case c.version != *version+1 || *version < 0:
			return true, nil
		}
		ctx, cancel := e.redisCtx(settleTimeout)
		s, err := e.b.GetSubscription(ctx, c.name)
		cancel()
		if errors.Is(err, core.ErrNotFound) {
			s, err = nil, nil
		}
		if err != nil {
			return true, err
		}
		e.applyOne(c.name, s, c.version)
		*version = c.version
		e.report()
	}
}

// announced queues a change read off the registry's channel ("<version>:<name>"); an
// announcement that cannot be read, or one too many, asks for a whole reload.
func (e *Engine) announced(payload string) {
	if name, ok := circuitAnnouncement(payload); ok {
		go e.circuitAnnounced(name)
		return
	}
	v, name, ok := strings.Cut(payload, ":")
	n, err := strconv.ParseInt(v, 10, 64)
	if ok && err == nil && name != "" {
		select {
		case e.changes <- registryChange{version: n, name: name}:
		default:
			// The watcher is behind: its next look reloads everything.
		}
	}
	select {
	case e.changed <- struct{}{}:
	default:
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

// readerStopWait bounds how long apply waits for a stopped sub's reader (a read is one
// non-blocking command; anything longer is a Redis stall).
const readerStopWait = 1500 * time.Millisecond

// apply makes exactly the subscriptions of a whole registry run, each with its current
// configuration, and records version as applied (see settle).
func (e *Engine) apply(subs []*core.Subscription, version int64) {
	e.mu.Lock()
	if e.stopped.Load() {
		e.mu.Unlock()
		return
	}
	var ch changeSet
	seen := make(map[string]bool, len(subs))
	for _, s := range subs {
		seen[s.Name] = true
		e.reconcileLocked(s.Name, s, &ch)
	}
	for name := range e.configs {
		if !seen[name] {
			e.reconcileLocked(name, nil, &ch)
		}
	}
	e.rebuildIndexLocked()
	e.settle(&ch, version)
}

// applyOne applies the change of one subscription (s nil: deleted).
func (e *Engine) applyOne(name string, s *core.Subscription, version int64) {
	e.mu.Lock()
	if e.stopped.Load() {
		e.mu.Unlock()
		return
	}
	var ch changeSet
	e.reconcileLocked(name, s, &ch)
	e.rebuildIndexLocked()
	e.settle(&ch, version)
}

// changeSet is what a reconcile did: subs it stopped and subs it started.
type changeSet struct{ stopped, started []*sub }

// reconcileLocked brings one subscription in line with its registry record (nil: gone).
// A change that only affects pushes goes to its live config, used by every push that
// starts afterwards; a change of how it is read replaces its sub (the old one finishes
// its pushes in flight while the new one reads). e.mu held.
func (e *Engine) reconcileLocked(name string, s *core.Subscription, ch *changeSet) {
	stop := func() {
		if r := e.subs[name]; r != nil {
			e.retire(r)
			ch.stopped = append(ch.stopped, r)
			delete(e.subs, name)
		}
	}
	if s == nil {
		stop()
		if l := e.live[name]; l != nil {
			// Deleted: its shared counters are gone with it; writing them would bring them back.
			l.gone.Store(true)
			delete(e.live, name)
		}
		delete(e.configs, name)
		return
	}
	e.configs[name] = s
	l := e.live[name]
	if l != nil && l.sub.Load().Incarnation() != s.Incarnation() {
		// Deleted and created again: the old one's late settlements must write nothing.
		l.gone.Store(true)
		l = nil
	}
	var err error
	if l == nil {
		if l, err = newLiveSub(s); err == nil {
			l.pushes = e.metrics.ForSubscription(name)
		}
	} else {
		err = l.update(s)
	}
	if err != nil {
		e.log.Error("cannot start subscription", zap.String("subscription", name), zap.Error(err))
		stop()
		delete(e.live, name)
		return
	}
	e.live[name] = l
	if cur := e.subs[name]; cur != nil && cur.live == l && !needsNewRunner(cur.cfg, s) {
		return
	}
	stop()
	if s.Paused {
		return
	}
	r := newSub(e, s, l)
	// Spread the idle checks of a fleet of subscriptions over their interval.
	r.nextCheck = time.Now().Add(rand.N(e.opts.CheckInterval))
	e.subs[name] = r
	ch.started = append(ch.started, r)
}

// rebuildIndexLocked replaces the subject index the publish path reads. e.mu held.
func (e *Engine) rebuildIndexLocked() {
	index := make(map[string]*subjectSubs, len(e.subs))
	old := *e.index.Load()
	for _, r := range e.subs {
		ss := index[r.cfg.Subject]
		if ss == nil {
			ss = &subjectSubs{}
			if o := old[r.cfg.Subject]; o != nil {
				ss.lastWake.Store(o.lastWake.Load())
			}
			index[r.cfg.Subject] = ss
		}
		ss.subs = append(ss.subs, r)
	}
	e.index.Store(&index)
}

// settle starts what a reconcile created, unlocks e.mu, tells OnApply, waits (bounded) for
// the stopped subs to stop reading and records version as applied: from then on no
// process reads with the old configuration (see Sync).
func (e *Engine) settle(ch *changeSet, version int64) {
	for _, r := range ch.started {
		if r.cfg.Transport == core.TransportPubSub {
			e.hub.add(r)
		}
		r.start()
	}
	all := make([]*core.Subscription, 0, len(e.configs))
	for _, s := range e.configs {
		all = append(all, s)
	}
	e.mu.Unlock()
	e.opts.OnApply(all)
	deadline := time.NewTimer(readerStopWait)
	defer deadline.Stop()
	for _, r := range ch.stopped {
		select {
		case <-r.readerDone():
		case <-deadline.C:
			e.log.Warn("a stopped subscription is still reading; applying the change anyway", zap.String("subscription", r.cfg.Name))
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
			e.troubled.Store(true)
			errs.log(e.log, "moving scheduled messages failed; retrying", err)
		} else {
			errs.ok(e.log, "moving scheduled messages again")
		}
		for _, subject := range mv.Subjects {
			e.Published(subject)
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
