package delivery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Stats are one process's counters for one subscription. Fields are read with atomics.
type Stats struct {
	Delivered    atomic.Int64
	Retried      atomic.Int64
	DeadLettered atomic.Int64
	InFlight     atomic.Int64
	Lost         atomic.Int64
	LastStatus   atomic.Int64
	lastError    atomic.Pointer[string]
	// lastAt (unix ms) is when LastStatus and the last error were set.
	lastAt atomic.Int64

	// Owned by the engine's stats flusher: what it already added to the shared counters.
	sub     atomic.Pointer[core.Subscription]
	flushed core.StatsDelta
}

// idle reports whether d has nothing to add: no counts, no new status, and no in-flight
// report to make or to take back. Idle subscriptions then cost Redis nothing.
func (s *Stats) idle(d core.StatsDelta) bool {
	return d.Delivered == 0 && d.Retried == 0 && d.DeadLettered == 0 && d.Lost == 0 &&
		d.LastAt.IsZero() && d.InFlight == 0 && s.flushed.InFlight == 0
}

// record notes the outcome of one push.
func (s *Stats) record(status int, errText string) {
	s.LastStatus.Store(int64(status))
	s.lastError.Store(&errText)
	s.lastAt.Store(time.Now().UnixMilli())
}

// delta is what the shared counters have not seen yet.
func (s *Stats) delta() core.StatsDelta {
	d := core.StatsDelta{
		Delivered:    s.Delivered.Load() - s.flushed.Delivered,
		Retried:      s.Retried.Load() - s.flushed.Retried,
		DeadLettered: s.DeadLettered.Load() - s.flushed.DeadLettered,
		Lost:         s.Lost.Load() - s.flushed.Lost,
		InFlight:     s.InFlight.Load(),
	}
	if at := s.lastAt.Load(); at > s.flushed.LastAt.UnixMilli() {
		d.LastAt = time.UnixMilli(at)
		d.LastStatus = int(s.LastStatus.Load())
		d.LastError = s.LastError()
	}
	return d
}

// flushedDelta records that d reached the shared counters.
func (s *Stats) flushedDelta(d core.StatsDelta) {
	s.flushed.Delivered += d.Delivered
	s.flushed.Retried += d.Retried
	s.flushed.DeadLettered += d.DeadLettered
	s.flushed.Lost += d.Lost
	if !d.LastAt.IsZero() {
		s.flushed.LastAt = d.LastAt
	}
	s.flushed.InFlight = d.InFlight
}

// LastError is the most recent failure text, "" when none.
func (s *Stats) LastError() string {
	if p := s.lastError.Load(); p != nil {
		return *p
	}
	return ""
}

// settleTimeout bounds one settlement command; settlement runs after the push, never
// under a cancelled context, so a shutdown does not strand a finished push unsettled.
const settleTimeout = 5 * time.Second

// maxAckBatch bounds one XACK.
const maxAckBatch = 512

// runner delivers one subscription with one immutable configuration.
type runner struct {
	e *Engine
	// sub is the configuration the runner reads with; live holds the one pushes use.
	sub     *core.Subscription
	live    *liveSub
	limiter *rate.Limiter
	// credit is rate-limit tokens the producer took but has not used yet (at most the
	// limiter's burst); owned by the producer goroutine.
	credit int
	stats  *Stats
	log    *zap.Logger

	// gate keeps an ordered subscription's partition keys in order (nil when not ordered);
	// leading says whether this runner holds the subscription's delivery lease.
	gate     *orderGate
	leading  atomic.Bool
	takeover atomic.Bool

	// nextRetry is when the retry set should be looked at next (unix ms).
	nextRetry atomic.Int64

	// consumer names this runner where it owns Redis state of its own (a list subscription's
	// processing list): the process's consumer name plus a generation, so a runner that
	// replaces another in the same process never touches its predecessor's list.
	consumer string

	stopOnce sync.Once
	stopCh   chan struct{}
	// producerDone is closed once the runner reads nothing more from Redis.
	producerDone chan struct{}
	// stopCtx is cancelled with stopCh, for waits that take a context.
	stopCtx    context.Context
	cancelStop context.CancelFunc
	slots      chan struct{} // one token per free push slot (max_in_flight)
	jobs       chan core.Message
	acks       chan string
}

func newRunner(e *Engine, s *core.Subscription, l *liveSub) *runner {
	r := &runner{
		e: e, sub: s, live: l, stats: l.stats,
		log:          e.log.With(zap.String("subscription", s.Name), zap.String("subject", s.Subject)),
		stopCh:       make(chan struct{}),
		producerDone: make(chan struct{}),
		slots:        make(chan struct{}, s.MaxInFlight),
		// Unbuffered: a message is only read after a slot (and so a worker) is free for it.
		jobs: make(chan core.Message),
		// Sized to max_in_flight so a worker never waits on the acker.
		acks: make(chan string, s.MaxInFlight),
	}
	r.stopCtx, r.cancelStop = context.WithCancel(context.Background())
	r.consumer = fmt.Sprintf("%s-%d", e.consumer, e.generation.Add(1))
	if s.Ordered {
		r.gate = newOrderGate()
	}
	if s.RateLimit > 0 {
		r.limiter = rate.NewLimiter(rate.Limit(s.RateLimit), max(1, int(s.RateLimit/10)))
	}
	for range s.MaxInFlight {
		r.slots <- struct{}{}
	}
	return r
}

func (r *runner) start() {
	var producers, workers sync.WaitGroup
	r.e.wg.Add(1)
	go func() {
		defer r.e.wg.Done()
		producers.Add(1)
		go func() {
			defer producers.Done()
			switch r.sub.Transport {
			case "list":
				r.listLoop()
			case "pubsub":
				r.pubsubLoop()
			default:
				r.loop()
			}
		}()
		for range r.sub.MaxInFlight {
			workers.Add(1)
			go func() { defer workers.Done(); r.work() }()
		}
		ackDone := make(chan struct{})
		go func() { defer close(ackDone); r.ackLoop() }()
		// Ordered stop: producers end, then workers drain what was read, then the acker flushes.
		producers.Wait()
		close(r.producerDone)
		close(r.jobs)
		workers.Wait()
		close(r.acks)
		<-ackDone
		if r.gate != nil {
			r.releaseLease()
		}
		if r.sub.Transport == "list" && r.sub.ListMode != "simple" {
			// Whatever a cut push left in this runner's processing list goes back to the
			// queue now rather than after the visibility timeout.
			ctx, cancel := r.e.redisCtx(settleTimeout)
			if err := r.e.b.ReleaseList(ctx, r.sub, r.consumer); err != nil {
				r.log.Warn("could not release the processing list; it is recovered after the visibility timeout", zap.Error(err))
			}
			cancel()
		}
		r.log.Debug("subscription runner stopped")
	}()
	r.log.Info("subscription delivering", zap.Int("max_in_flight", r.sub.MaxInFlight))
}

func (r *runner) stopReading() {
	r.stopOnce.Do(func() {
		close(r.stopCh)
		r.cancelStop()
	})
}

// acquire takes at least one free slot (waiting for it) and then as many more as are free,
// up to limit. It returns 0 when the runner is stopping.
func (r *runner) acquire(limit int, wait bool) int {
	n := 0
	if wait {
		select {
		case <-r.slots:
			n = 1
		case <-r.stopCh:
			return 0
		}
	}
	for n < limit {
		select {
		case <-r.slots:
			n++
		default:
			return n
		}
	}
	return n
}

func (r *runner) release(n int) {
	for range n {
		r.slots <- struct{}{}
	}
}

func (r *runner) dispatch(msgs []core.Message) {
	for _, m := range msgs {
		r.jobs <- m // a worker is free: each message holds a slot
	}
}

// loop is the runner's only producer. Each round it takes the free slots, then fills them
// from the due retries, from entries a dead consumer left pending (every so often), and
// from new stream entries, in that order. The stream read blocks only until the next retry
// is due (at most Block), so a retry is never starved by an idle read holding every slot.
func (r *runner) loop() {
	vt := time.Duration(r.sub.VisibilityTimeout)
	reclaimEvery := min(max(vt/4, 250*time.Millisecond), 5*time.Second)
	nextReclaim := time.Now()
	if r.gate != nil {
		// The lease is kept only while this producer reads; it is waited for, so it can
		// never be renewed after releaseLease gave it up.
		done := make(chan struct{})
		var leader sync.WaitGroup
		leader.Add(1)
		go func() {
			defer leader.Done()
			r.lead(done)
		}()
		defer func() {
			close(done)
			leader.Wait()
		}()
	}
	// An ordered subscription holds back later messages of a busy key; past this many it
	// stops reading until keys drain.
	maxBacklog := 8 * r.sub.MaxInFlight
	nextPrune := time.Now().Add(time.Minute)
	r.produce("the stream", func(n int) (int, error) {
		if r.gate != nil && !r.leading.Load() {
			r.sleep(200 * time.Millisecond) // another process delivers it; wait to take over
			return 0, nil
		}
		now := time.Now()
		used, err := r.claimDueRetries(n, now, vt)
		if err != nil || used == n {
			return used, err
		}
		if r.takeover.Load() {
			// Just became the holder: take every entry other runners left pending first,
			// oldest first, before reading anything new.
			want := n - used
			ctx, cancel := r.e.redisCtx(settleTimeout)
			rc, err := r.e.b.ReclaimOthers(ctx, r.sub, r.consumer, 0, want)
			cancel()
			if err == nil && len(rc.Messages)+len(rc.Lost) < want {
				r.takeover.Store(false) // nothing more left behind
			}
			return used + r.send(rc.Messages), err
		}
		if !now.Before(nextPrune) {
			nextPrune = now.Add(10 * time.Minute)
			ctx, cancel := r.e.redisCtx(settleTimeout)
			if n, err := r.e.b.PruneConsumers(ctx, r.sub, consumerIdleLimit); err == nil && n > 0 {
				r.log.Info("removed idle consumers that held nothing from the group", zap.Int("count", n))
			}
			cancel()
		}
		if !now.Before(nextReclaim) {
			nextReclaim = now.Add(reclaimEvery)
			ctx, cancel := r.e.redisCtx(settleTimeout)
			reclaim := r.e.b.Reclaim
			if r.gate != nil {
				reclaim = r.e.b.ReclaimOthers
			}
			rc, err := reclaim(ctx, r.sub, r.readConsumer(), vt, n-used)
			cancel()
			if len(rc.Lost) > 0 {
				r.stats.Lost.Add(int64(len(rc.Lost)))
				r.e.metrics.Lost(r.sub.Name, len(rc.Lost))
				r.log.Warn("pending entries no longer exist in the stream (trimmed or deleted); acknowledged and counted as lost",
					zap.Int("count", len(rc.Lost)), zap.Strings("entry_ids", rc.Lost))
			}
			if len(rc.Messages) > 0 {
				r.log.Info("reclaimed messages left pending by another consumer", zap.Int("count", len(rc.Messages)))
			}
			used += r.send(rc.Messages)
			if err != nil || used == n {
				return used, err
			}
		}
		if r.gate != nil && r.gate.backlog() >= maxBacklog {
			r.sleep(20 * time.Millisecond)
			return used, nil
		}
		// Not cancelled by a stop: entries Redis hands out must reach a worker, and the
		// short block bounds how long a stop waits for this call.
		ctx, cancel := r.e.redisCtx(r.e.opts.Block + settleTimeout)
		msgs, err := r.e.b.Read(ctx, r.sub, r.readConsumer(), n-used, r.readBlock(true))
		cancel()
		if len(msgs) > 0 {
			r.e.opts.Touch(r.sub.Subject)
		}
		if errors.Is(err, core.ErrNoGroup) {
			err = r.recreateGroup()
		}
		return used + r.send(msgs), err
	})
}

// consumerIdleLimit is how long a consumer that holds nothing may stay idle in a group
// before it is removed (a process that is gone).
const consumerIdleLimit = time.Hour

// readConsumer names this runner in the consumer group: the process's name, or for an
// ordered subscription the runner's own, so that its deliberately waiting entries are told
// apart from those of a runner that is gone.
func (r *runner) readConsumer() string {
	if r.gate != nil {
		return r.consumer
	}
	return r.e.consumer
}

// produce runs the producer rounds of a runner until it stops. Each round takes the free
// slots, fills what it can and gives the rest back; after a failed round it waits a second.
func (r *runner) produce(what string, round func(n int) (used int, err error)) {
	var errs errThrottle
	for {
		slots := r.acquire(r.sub.MaxInFlight, true)
		if slots == 0 {
			return
		}
		n := r.throttle(slots)
		if n == 0 {
			r.release(slots)
			return
		}
		used, err := round(n)
		if r.limiter != nil {
			r.credit -= used
		}
		r.release(slots - used)
		if err != nil {
			if r.stopping() {
				return
			}
			errs.log(r.log, "reading "+what+" failed; retrying", err)
			r.sleep(time.Second)
			continue
		}
		errs.ok(r.log, "reading "+what+" again")
	}
}

// throttle limits a round to the rate-limit tokens at hand: it waits for one when it has
// none and takes more only while they are free, never beyond the limiter's burst. Taking
// them before reading is what keeps a rate-limited subscription from holding entries it
// cannot push yet; one held past the visibility timeout would be reclaimed and pushed
// twice. It returns 0 when the runner stops.
func (r *runner) throttle(n int) int {
	if r.limiter == nil {
		return n
	}
	if r.credit == 0 {
		if err := r.limiter.Wait(r.stopCtx); err != nil {
			return 0
		}
		r.credit = 1
	}
	for r.credit < min(n, r.limiter.Burst()) && r.limiter.Allow() {
		r.credit++
	}
	return min(r.credit, n)
}

// readBlock is how long a read may wait for new messages: until the next retry is due when
// the subscription has a retry set, at most Block, and not at all once stopping.
func (r *runner) readBlock(retries bool) time.Duration {
	if r.stopping() {
		return 0
	}
	if !retries {
		return r.e.opts.Block
	}
	return min(time.Until(time.UnixMilli(r.nextRetry.Load())), r.e.opts.Block)
}

// recreateGroup answers a missing consumer group. If the subscription still exists the
// stream was deleted or flushed under it: the group is recreated from the beginning of
// whatever stream exists now, so nothing published since is missed. If it was deleted (or
// replaced), the group is gone on purpose and this runner just stops reading.
func (r *runner) recreateGroup() error {
	ctx, cancel := r.e.redisCtx(settleTimeout)
	defer cancel()
	cur, err := r.e.b.GetSubscription(ctx, r.sub.Name)
	if errors.Is(err, core.ErrNotFound) || (err == nil && (cur.Subject != r.sub.Subject || !cur.CreatedAt.Equal(r.sub.CreatedAt))) {
		r.stopReading()
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := r.e.b.EnsureGroup(ctx, r.sub.Subject, r.sub.Name, "beginning"); err != nil {
		return err
	}
	r.log.Warn("consumer group was missing (stream deleted or flushed); recreated it from the beginning of the stream")
	return nil
}

// noteRetry makes the loop look at the retry set again by due.
func (r *runner) noteRetry(due time.Time) {
	ms := due.UnixMilli()
	for {
		cur := r.nextRetry.Load()
		if cur <= ms || r.nextRetry.CompareAndSwap(cur, ms) {
			return
		}
	}
}

func (r *runner) work() {
	for m := range r.jobs {
		r.stats.InFlight.Add(1)
		for cur, more := m, true; more; {
			res := r.handle(&cur)
			more = false
			if r.gate != nil {
				// The next message of the same key goes on this worker and slot.
				cur, more = r.gate.done(&cur, res)
			}
		}
		r.stats.InFlight.Add(-1)
		r.release(1)
	}
}

// send dispatches msgs, each holding a slot the caller took, and returns how many slots
// are now in use: an ordered subscription queues later messages of a busy key instead.
func (r *runner) send(msgs []core.Message) int {
	if r.gate != nil && len(msgs) > 0 {
		msgs = r.gate.admit(msgs)
	}
	r.dispatch(msgs)
	return len(msgs)
}

func (r *runner) handle(m *core.Message) result {
	log := r.log
	// The configuration in force now, not the one this runner started with: a change
	// answered 2xx applies to every push that starts after it.
	cfg := r.live.sub.Load()
	if r.live.gone.Load() || cfg.Paused {
		// Deleted or paused after this message was read: not pushed. It stays pending
		// (reclaimed after the visibility timeout once delivery resumes).
		return unsettled
	}
	if m.Deliveries > cfg.MaxDeliveries {
		// Reclaimed after its consumer died mid-push as often as it may be delivered: a
		// poison message must not crash-loop the fleet.
		return r.deadLetter(cfg, m, core.ReasonMaxDeliveries, 0, "delivery count exceeded max_deliveries before a push could complete")
	}
	if r.limiter != nil && r.sub.Transport == "pubsub" {
		// Pub/Sub messages arrive unasked; read paths take their tokens before reading
		// (see throttle), so nothing they read waits here.
		if err := r.limiter.Wait(r.e.abortCtx); err != nil {
			return unsettled // shutdown past grace
		}
	}
	res, aborted := r.push(r.e.abortCtx, cfg, m)
	if aborted {
		return unsettled
	}
	outcome := Verdict(res.status)
	r.stats.record(res.status, res.errText)
	r.e.metrics.Pushed(cfg.Name, res.status, outcomeLabel(outcome, m.Deliveries >= cfg.MaxDeliveries || m.Origin == core.Unsettled, r.sub.Transport == "pubsub"), res.latency)
	if ce := log.Check(zap.DebugLevel, "pushed"); ce != nil {
		ce.Write(zap.String("message_id", m.ID), zap.Int("status", res.status), zap.Int("delivery", m.Deliveries),
			zap.Stringer("outcome", outcome), zap.Duration("latency", res.latency))
	}
	if m.Origin == core.Unsettled && outcome != Ack {
		r.settleAtMostOnce(cfg, m, outcome, res)
		return settled
	}
	switch outcome {
	case Ack:
		return r.ack(cfg, m)
	case Requeue:
		if m.Deliveries >= cfg.MaxDeliveries {
			return r.deadLetter(cfg, m, core.ReasonMaxDeliveries, res.status, res.errText)
		}
		due := time.Now().Add(retryDelay(cfg, m.Deliveries, res.retryAfter, time.Now()))
		err := r.write(func(ctx context.Context) error { return r.e.b.Retry(ctx, cfg, m, due) })
		if errors.Is(err, core.ErrGone) {
			return settled // its subscription was deleted: nothing of it may be written
		}
		if err != nil {
			log.Warn("could not schedule retry; the message stays pending and will be reclaimed",
				zap.String("message_id", m.ID), zap.Error(err))
			return unsettled
		}
		r.stats.Retried.Add(1)
		r.noteRetry(due)
		return requeued
	}
	// Drop, Gone
	if outcome == Gone {
		defer r.pauseGone()
	}
	return r.deadLetter(cfg, m, core.ReasonDropped, res.status, res.errText)
}

// write runs one settlement that writes the subscription's keys. When Redis says the
// subscription is not the live one, it checks: a live subscription without its marker gets
// it back and the write is tried again; core.ErrGone means it was really deleted.
func (r *runner) write(op func(ctx context.Context) error) error {
	ctx, cancel := r.e.redisCtx(settleTimeout)
	defer cancel()
	err := op(ctx)
	if errors.Is(err, core.ErrGone) && !r.e.confirmGone(ctx, r.live) {
		err = op(ctx)
	}
	return err
}

func (r *runner) pauseGone() {
	reason := "webhook answered 410 Gone"
	ctx, cancel := r.e.redisCtx(settleTimeout)
	err := r.e.b.PauseSubscription(ctx, r.sub.Name, reason)
	cancel()
	if err != nil {
		r.log.Error("could not pause subscription after 410", zap.Error(err))
	} else {
		r.log.Warn("subscription paused: " + reason)
	}
}

// settleAtMostOnce handles a failed push of a message nothing in Redis holds any more: a
// simple list's is dead-lettered (its one delivery is spent), a Pub/Sub message's failure
// is only counted and logged.
func (r *runner) settleAtMostOnce(cfg *core.Subscription, m *core.Message, outcome Outcome, res pushResult) {
	if outcome == Gone {
		defer r.pauseGone()
	}
	if r.sub.Transport == "pubsub" {
		r.log.Info("Pub/Sub push failed; at-most-once, not retried", zap.String("message_id", m.ID),
			zap.Int("status", res.status), zap.String("error", res.errText))
		return
	}
	reason := core.ReasonDropped
	if outcome == Requeue {
		reason = core.ReasonMaxDeliveries
	}
	_ = r.deadLetter(cfg, m, reason, res.status, res.errText)
}

func (r *runner) ack(cfg *core.Subscription, m *core.Message) result {
	r.stats.Delivered.Add(1)
	switch m.Origin {
	case core.FromStream:
		// Batched; a lost ack means a duplicate later, and the key's order is kept.
		r.acks <- m.EntryID
		return settled
	case core.Unsettled:
		return settled
	case core.FromList:
		ctx, cancel := r.e.redisCtx(settleTimeout)
		defer cancel()
		if err := r.e.b.AckList(ctx, cfg, m); err != nil {
			r.log.Warn("could not ack list message; it will be delivered again after recovery",
				zap.String("message_id", m.ID), zap.Error(err))
			return unsettled
		}
		return settled
	}
	ctx, cancel := r.e.redisCtx(settleTimeout)
	defer cancel()
	if err := r.e.b.AckRetries(ctx, cfg, m.ID); err != nil {
		r.log.Warn("could not ack retried message; it will be delivered again after the visibility timeout",
			zap.String("message_id", m.ID), zap.Error(err))
		return unsettled
	}
	return settled
}

func (r *runner) deadLetter(cfg *core.Subscription, m *core.Message, reason string, status int, errText string) result {
	info := core.DeadLetterInfo{Reason: reason, LastStatus: status, LastError: errText, At: time.Now()}
	err := r.write(func(ctx context.Context) error { return r.e.b.DeadLetter(ctx, cfg, m, info) })
	if errors.Is(err, core.ErrGone) {
		return settled // its subscription was deleted: nothing of it may be written
	}
	if err != nil {
		r.log.Warn("could not dead-letter; the message stays pending and will be reclaimed",
			zap.String("message_id", m.ID), zap.Error(err))
		return unsettled
	}
	r.stats.DeadLettered.Add(1)
	r.log.Info("dead-lettered", zap.String("message_id", m.ID), zap.String("reason", reason),
		zap.Int("status", status), zap.Int("deliveries", m.Deliveries))
	return settled
}

// ackLoop batches stream acknowledgements: whatever workers settled while the previous
// XACK was on the wire goes out in the next one.
func (r *runner) ackLoop() {
	batch := make([]string, 0, maxAckBatch)
	for id := range r.acks {
		batch = append(batch[:0], id)
	drain:
		for len(batch) < maxAckBatch {
			select {
			case id, ok := <-r.acks:
				if !ok {
					break drain
				}
				batch = append(batch, id)
			default:
				break drain
			}
		}
		r.flushAcks(batch)
	}
}

// flushAcks retries an XACK for a while: a lost ack means a duplicate push later, never a
// loss, but a short Redis blip should not cause one. The retries end with the shutdown's
// grace (abortCtx), and the acks of a deleted subscription are dropped: its group is gone,
// and one created again under the same name must not see them.
func (r *runner) flushAcks(ids []string) {
	deadline := time.Now().Add(time.Duration(r.sub.VisibilityTimeout) / 2)
	for attempt := 0; ; attempt++ {
		if r.live.gone.Load() {
			return
		}
		ctx, cancel := r.e.redisCtx(settleTimeout)
		err := r.e.b.Ack(ctx, r.sub.Subject, r.sub.Name, ids...)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || r.e.abortCtx.Err() != nil {
			r.log.Warn("could not ack; these messages will be delivered again after the visibility timeout",
				zap.Int("count", len(ids)), zap.Error(err))
			return
		}
		t := time.NewTimer(min(time.Duration(attempt+1)*100*time.Millisecond, time.Second))
		select {
		case <-t.C:
		case <-r.e.abortCtx.Done():
			t.Stop()
		}
	}
}

func (r *runner) stopping() bool {
	select {
	case <-r.stopCh:
		return true
	default:
		return false
	}
}

func (r *runner) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.stopCh:
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

// errThrottle logs the first error of an outage and its end, not every failed poll.
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
