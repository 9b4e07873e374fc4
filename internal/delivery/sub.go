package delivery

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// settleTimeout bounds one Redis call of the delivery work (a read, a claim, a settlement).
const settleTimeout = 5 * time.Second

// workerIdle is how long a push worker waits for the next message before it ends: a busy
// subscription keeps its workers, an idle one has none.
const workerIdle = 5 * time.Second

// sub delivers one subscription in this process, with one reading configuration (a change
// of how it is read makes a new sub; a change of how it is pushed goes through live).
//
// While idle it costs a few hundred bytes and nothing else: no goroutine, no connection,
// no Redis command. Something that may bring work kicks it (a publish in this or another
// process, a retry timer, the engine's sweeps); a kicked sub starts one reader goroutine
// that reads as long as it finds messages and free push slots, hands each message to a
// push worker, and ends when there is nothing more. Workers start on demand, up to
// max_in_flight, and end after workerIdle without work.
type sub struct {
	e    *Engine
	cfg  *core.Subscription
	live *liveSub
	log  *zap.Logger
	// consumer names this sub in Redis where it owns state: the process's consumer name,
	// plus a generation for list processing lists and ordered subscriptions, so a sub that
	// replaces another in the same process never touches what its predecessor holds.
	consumer string
	// threshold is how many push slots must be free before a read is worth it: reads come
	// in batches under load, and at once when idle.
	threshold int32

	limiter *rate.Limiter
	credit  int // rate tokens taken but not used yet (reader only)

	gate     *orderGate // ordered subscriptions only
	leading  atomic.Bool
	takeover atomic.Bool

	running   atomic.Bool   // a reader goroutine exists
	wakeCh    chan struct{} // size one: a pending wake-up of the reader
	saturated atomic.Bool   // the last read filled every free slot: more may be waiting
	inFlight  atomic.Int32
	jobs      chan core.Message // to workers waiting for their next message

	retryDue  atomic.Bool  // the retry set has (or may have) due messages
	staleDue  atomic.Bool  // entries left by a dead consumer, or a dead list consumer, to take over
	nextRetry atomic.Int64 // unix ms of the earliest retry this process knows of; 0 = none
	lastRead  atomic.Pointer[string]
	// lastGot and prevGot are when the last two reads that returned entries ran (reader
	// only). Two within hotWindow make the subscription busy: its reader then waits in
	// Redis for the next entry instead of for a wake-up. One message alone does not, so a
	// burst over many quiet subscriptions does not open a connection for each.
	lastGot, prevGot time.Time
	sweptUpTo        atomic.Pointer[string] // the newest entry a sweep saw (streams)
	lastBeat         atomic.Int64           // unix ms of this sub's last list heartbeat
	pubsubQ          chan core.Message      // Pub/Sub messages waiting for a slot
	pubsubDrop       atomic.Int64

	errs errThrottle // reader only
	// probing: this round won the circuit's probe; the next message dispatched is it
	// (reader only).
	probing bool

	mu        sync.Mutex // guards stopped, the timers and bg's Add
	stopped   bool
	stopCh    chan struct{}
	retryT    *time.Timer
	errT      *time.Timer
	tokenT    *time.Timer
	keepT     *time.Timer
	staleT    *time.Timer
	circuitT  *time.Timer
	readWG    sync.WaitGroup // the reader
	workWG    sync.WaitGroup // the workers
	bgWG      sync.WaitGroup // timer callbacks doing Redis work
	nextCheck time.Time      // the engine's idle check; guarded by e.mu
}

func newSub(e *Engine, s *core.Subscription, l *liveSub) *sub {
	r := &sub{
		e: e, cfg: s, live: l,
		log:       e.log.With(zap.String("subscription", s.Name), zap.String("subject", s.Subject)),
		threshold: int32(max(1, s.MaxInFlight/4)),
		jobs:      make(chan core.Message),
		wakeCh:    make(chan struct{}, 1),
		stopCh:    make(chan struct{}),
		consumer:  e.consumer,
	}
	if s.Transport == core.TransportList || s.Ordered {
		r.consumer = fmt.Sprintf("%s-%d", e.consumer, e.generation.Add(1))
	}
	if s.Ordered {
		r.gate = newOrderGate()
	}
	if s.RateLimit > 0 {
		r.limiter = rate.NewLimiter(rate.Limit(s.RateLimit), max(1, int(s.RateLimit/10)))
	}
	if s.Transport == core.TransportPubSub {
		r.pubsubQ = make(chan core.Message, pubsubQueue)
	}
	// A new sub looks at everything once: retries due, entries left by a dead consumer,
	// and what waits in its group.
	r.retryDue.Store(true)
	r.staleDue.Store(true)
	return r
}

// start begins delivering: an ordered subscription first wins its lease; the others read.
func (r *sub) start() {
	if r.gate != nil {
		r.after(&r.keepT, time.Millisecond, r.keep) // not on the caller's goroutine: it does Redis work
		return
	}
	r.kick()
}

// kick makes the sub look for work: it wakes its reader, starting one if none runs. Safe
// from any goroutine, cheap enough for every publish (a channel send once a reader runs).
func (r *sub) kick() {
	select {
	case r.wakeCh <- struct{}{}:
	default: // a wake-up is pending already
	}
	if r.running.Load() || !r.running.CompareAndSwap(false, true) {
		return
	}
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		r.running.Store(false)
		return
	}
	r.readWG.Add(1)
	r.mu.Unlock()
	go r.read()
}

// hotWindow is how long after its last entry a stream subscription counts as busy and
// reads by waiting in Redis (Options.HotWait at a time) rather than by wake-ups.
const hotWindow = 100 * time.Millisecond

// maxHotReads bounds the reads one process has waiting in Redis at once, each on a pooled
// connection of its own; past it, busy subscriptions read on wake-ups like quiet ones.
const maxHotReads = 64

// readerIdle is how long a reader waits for the next wake-up before it ends.
const readerIdle = time.Second

// read is the reader: a round whenever something may have brought work, until nothing
// has for readerIdle.
func (r *sub) read() {
	defer r.readWG.Done()
	idle := time.NewTimer(readerIdle)
	defer idle.Stop()
	for {
		for r.round() {
			if r.isStopped() {
				r.running.Store(false)
				return
			}
		}
		idle.Reset(readerIdle)
		select {
		case <-r.wakeCh:
			continue
		case <-r.stopCh:
			r.running.Store(false)
			return
		case <-idle.C:
		}
		r.running.Store(false)
		// A kick between the timer and here found the reader running and only queued its
		// wake-up: take it over, unless a new reader already did.
		if len(r.wakeCh) == 0 || !r.running.CompareAndSwap(false, true) {
			return
		}
	}
}

// round reads once, by transport, and reports whether it should run again at once.
func (r *sub) round() bool {
	ok, probe := r.circuitGate()
	if !ok {
		return false
	}
	if probe {
		// One message goes, the probe; its answer opens the way for the rest (or not).
		r.probing = true
		defer func() { r.probing = false }()
	}
	switch r.cfg.Transport {
	case core.TransportList:
		return r.listRound()
	case core.TransportPubSub:
		return r.pubsubRound()
	}
	return r.streamRound()
}

// slots is how many messages a round may hand out now. While a backlog waits (the last
// read filled every free slot), it waits for a batch worth of free slots, so a busy
// subscription reads in batches; otherwise any free slot takes a new message at once.
func (r *sub) slots() int {
	if r.probing {
		if r.inFlight.Load() >= int32(r.cfg.MaxInFlight) {
			return 0
		}
		return 1
	}
	free := int32(r.cfg.MaxInFlight) - r.inFlight.Load()
	if free <= 0 || (r.saturated.Load() && free < r.threshold && r.inFlight.Load() > 0) {
		return 0
	}
	return int(free)
}

// throttle limits a round to the rate-limit tokens at hand, never beyond the limiter's
// burst. Taking them before reading keeps a rate-limited subscription from holding entries
// it cannot push yet (one held past its visibility timeout would be pushed twice). With no
// token at hand it returns 0 and kicks the sub again when the next one is due.
func (r *sub) throttle(n int) int {
	if r.limiter == nil {
		return n
	}
	now := time.Now()
	for r.credit < min(n, r.limiter.Burst()) && r.limiter.AllowN(now, 1) {
		r.credit++
	}
	if r.credit == 0 {
		res := r.limiter.ReserveN(now, 1)
		wait := res.DelayFrom(now)
		res.CancelAt(now)
		r.after(&r.tokenT, max(wait, time.Millisecond), r.kick)
		return 0
	}
	return min(r.credit, n)
}

// used takes n handed-out messages off the rate-limit credit.
func (r *sub) used(n int) {
	if r.limiter != nil {
		r.credit -= n
	}
}

// dispatch hands m to a push worker: one waiting for work, or a new one.
func (r *sub) dispatch(m core.Message) {
	if r.probing {
		r.probing = false
		id := m.ID
		r.live.circuit.probeID.Store(&id)
	}
	if r.inFlight.Add(1) == 1 && r.cfg.Transport == core.TransportList {
		r.keepBeating()
	}
	select {
	case r.jobs <- m:
		return
	default:
	}
	r.workWG.Add(1)
	go r.worker(m)
}

// send dispatches msgs; an ordered subscription holds back later messages of a busy key.
func (r *sub) send(msgs []core.Message) {
	if r.gate != nil && len(msgs) > 0 {
		msgs = r.gate.admit(msgs)
	}
	for _, m := range msgs {
		r.dispatch(m)
	}
}

func (r *sub) worker(m core.Message) {
	defer r.workWG.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	// One message value per worker, reused: handle takes its address, so a fresh one per
	// message would be a heap allocation per push. handle keeps no pointer to it.
	var cur core.Message
	for {
		r.live.stats.InFlight.Add(1)
		cur = m
		for more := true; more; {
			res := r.handle(&cur)
			more = false
			if r.gate != nil && !r.isStopped() {
				// The next message of the same key goes on this worker and slot.
				cur, more = r.gate.done(&cur, res)
			}
		}
		r.live.stats.InFlight.Add(-1)
		r.finished()
		idle.Reset(workerIdle)
		select {
		case m = <-r.jobs:
		case <-idle.C:
			return
		case <-r.stopCh:
			// Nothing more is handed out once stopped; a job sent before the stop was
			// taken by a worker already (the send only succeeds into a waiting worker).
			return
		}
	}
}

// finished frees a push slot and wakes the reader when there is work for it: a due retry
// at once, a backlog once enough slots are free to read a batch.
func (r *sub) finished() {
	left := r.inFlight.Add(-1)
	if r.retryDue.Load() || r.staleDue.Load() ||
		(r.saturated.Load() && (int32(r.cfg.MaxInFlight)-left >= r.threshold || left == 0)) {
		r.kick()
	}
}

// isStopped reports whether stop was called.
func (r *sub) isStopped() bool {
	select {
	case <-r.stopCh:
		return true
	default:
		return false
	}
}

// after runs fn after d on a timer of the sub (replacing what that timer had pending),
// unless the sub has stopped.
func (r *sub) after(t **time.Timer, d time.Duration, fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	if *t != nil {
		(*t).Stop()
	}
	*t = time.AfterFunc(d, fn)
}

// bg runs fn (Redis work of a timer) unless the sub has stopped; stop waits for it.
func (r *sub) bg(fn func()) {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.bgWG.Add(1)
	r.mu.Unlock()
	defer r.bgWG.Done()
	fn()
}

// armRetry makes sure the sub looks at its retry set by due.
func (r *sub) armRetry(due time.Time) {
	ms := due.UnixMilli()
	for {
		cur := r.nextRetry.Load()
		if cur != 0 && cur <= ms {
			return
		}
		if r.nextRetry.CompareAndSwap(cur, ms) {
			break
		}
	}
	r.after(&r.retryT, max(time.Until(due), time.Millisecond), func() {
		r.retryDue.Store(true)
		r.kick()
	})
}

// retryLooked records a look at the retry set: next is its earliest member left.
func (r *sub) retryLooked(next time.Time) {
	r.nextRetry.Store(0)
	if !next.IsZero() {
		r.armRetry(next)
	}
}

// failed logs a failed round (throttled) and looks again in a second.
func (r *sub) failed(what string, err error) {
	r.e.troubled.Store(true)
	r.errs.log(r.log, "reading "+what+" failed; retrying", err)
	r.after(&r.errT, time.Second, r.kick)
}

// stop ends reading: no new message is read or pushed after it (those already handed to a
// worker finish). It returns at once; done reports when the reader has ended.
func (r *sub) stop() {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.stopped = true
	close(r.stopCh)
	for _, t := range []*time.Timer{r.retryT, r.errT, r.tokenT, r.keepT, r.staleT, r.circuitT} {
		if t != nil {
			t.Stop()
		}
	}
	r.mu.Unlock()
}

// readerDone is closed once the reader (and every timer callback) has ended.
func (r *sub) readerDone() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		r.readWG.Wait()
		r.bgWG.Wait()
		close(done)
	}()
	return done
}

// finish waits for the pushes in flight and gives back what the sub holds in Redis: the
// lease of an ordered subscription, the processing list of a reliable list. Call after
// stop; it returns when the workers are done (cut by the shutdown grace at worst).
func (r *sub) finish() {
	<-r.readerDone()
	r.workWG.Wait()
	if r.gate != nil {
		r.releaseLease()
	}
	if r.cfg.Transport == core.TransportList && r.cfg.ListMode != core.ListSimple {
		// Whatever a cut push left in this sub's processing list goes back to the queue now
		// rather than after the visibility timeout.
		ctx, cancel := r.e.redisCtx(settleTimeout)
		if err := r.e.b.ReleaseList(ctx, r.cfg, r.consumer); err != nil {
			r.log.Warn("could not release the processing list; it is recovered after the visibility timeout", zap.Error(err))
		}
		cancel()
	}
}

// outcomeLabel names an outcome for metrics: what actually happens to the message.
func outcomeLabel(o Outcome, exhausted, pubsub bool) string {
	switch {
	case o == Ack:
		return "ack"
	case pubsub:
		return "dropped"
	case o == Requeue && !exhausted:
		return "retry"
	}
	return "dead_letter"
}

// errThrottle logs the first error of an outage and its end, not every failed attempt.
type errThrottle struct {
	failing bool
	last    time.Time
}

func (t *errThrottle) log(log *zap.Logger, msg string, err error) {
	if !t.failing || time.Since(t.last) > 30*time.Second {
		log.Warn(msg, zap.Error(err))
		t.last = time.Now()
	}
	t.failing = true
}

func (t *errThrottle) ok(log *zap.Logger, msg string) {
	if t.failing {
		log.Info(msg)
		t.failing = false
	}
}

// ctx bounds one Redis call of the sub's work.
func (r *sub) ctx() (context.Context, context.CancelFunc) { return r.e.redisCtx(settleTimeout) }
