package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/filter"
	"go.uber.org/zap"
)

// result is what became of a message after handle.
type result uint8

const (
	// settled: acked or dead-lettered; the next message of its key may go.
	settled result = iota
	// requeued: waiting in the retry set; its key stays blocked until it settles.
	requeued
	// unsettled: still pending in Redis (a cut push or a failed settlement); it comes back
	// through reclaim, and its key stays blocked until then.
	unsettled
)

// handle pushes m once and settles it by the verdict.
func (r *sub) handle(m *core.Message) result {
	log := r.log
	// The configuration in force now, not the one this sub started with: a change answered
	// 2xx applies to every push that starts after it.
	cfg := r.live.sub.Load()
	if r.live.gone.Load() || cfg.Paused {
		// Deleted or paused after this message was read: not pushed. It stays pending
		// (reclaimed after the visibility timeout once delivery resumes).
		return unsettled
	}
	if m.Deferred {
		return r.deadlinePassed(cfg, m)
	}
	if m.Deliveries > cfg.MaxDeliveries {
		// Reclaimed after its consumer died mid-push as often as it may be delivered: a
		// poison message must not crash-loop the fleet.
		const why = "delivery count exceeded max_deliveries before a push could complete"
		return r.deadLetter(cfg, m, core.ReasonMaxDeliveries, 0, why, r.attempt(m, pushResult{errText: why}, core.OutcomeDeadLetter))
	}
	if f := r.live.filter.Load(); f != nil && !r.matches(f, m) {
		return r.filtered(cfg, m)
	}
	if r.limiter != nil && r.cfg.Transport == core.TransportPubSub {
		// Pub/Sub messages arrive unasked; read paths take their tokens before reading
		// (see throttle), so nothing they read waits here.
		if err := r.limiter.Wait(r.e.abortCtx); err != nil {
			return unsettled // shutdown past grace
		}
	}
	if until, hold := r.circuitHold(cfg, m); hold {
		// The circuit opened after this message was read: it waits, no attempt used.
		return r.holdForCircuit(cfg, m, until, nil)
	}
	res, aborted := r.push(r.e.abortCtx, cfg, m)
	if aborted {
		return unsettled
	}
	outcome := Verdict(res.status)
	if outcome == Requeue && res.noRetry && res.status >= 200 {
		outcome = Drop // the webhook says retrying cannot help
	}
	r.live.stats.record(res.status, res.errText)
	pubsub := r.cfg.Transport == core.TransportPubSub
	label := outcomeLabel(outcome, m.Deliveries >= cfg.MaxDeliveries || m.Origin == core.Unsettled, pubsub)
	if outcome == Ack && res.deferFor > 0 {
		label = core.OutcomeDeferred
	}
	r.live.pushes.Pushed(res.status, label, res.latency)
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
		r.circuitSuccess(cfg, m)
		if res.deferFor > 0 {
			return r.deferMsg(cfg, m, res)
		}
		r.live.stats.Delivered.Add(1)
		return r.ack(m, r.attempt(m, res, core.OutcomeAck))
	case Requeue:
		if until, hold := r.circuitFailure(cfg, m); hold {
			// Pushed while the circuit was open (or as its probe): no attempt is used.
			return r.holdForCircuit(cfg, m, until, r.attempt(m, res, core.OutcomeRetry))
		}
		return r.requeue(cfg, m, res)
	}
	// Drop, Gone
	if outcome == Gone {
		defer r.pauseGone()
	}
	return r.deadLetter(cfg, m, core.ReasonDropped, res.status, res.errText, r.attempt(m, res, core.OutcomeDeadLetter))
}

// matches evaluates the subscription's filter on m; a filter that fails on m (a missing
// key, a wrong type) does not match.
func (r *sub) matches(f *filter.Program, m *core.Message) bool {
	ok, err := f.Match(filter.Message{Subject: m.Subject, Headers: m.Headers, PartitionKey: m.Headers[core.HeaderPartitionKey],
		Body: m.Body, ContentType: m.Headers[core.HeaderContentType]})
	if err != nil {
		if ce := r.log.Check(zap.DebugLevel, "filter failed on a message; not pushed"); ce != nil {
			ce.Write(zap.String("message_id", m.ID), zap.Error(err))
		}
	}
	return ok
}

// filtered acks a message the filter did not match, without a push: counted filtered.
func (r *sub) filtered(cfg *core.Subscription, m *core.Message) result {
	r.live.stats.Filtered.Add(1)
	r.e.metrics.Filtered(cfg.Name)
	return r.ack(m, r.attempt(m, pushResult{}, core.OutcomeFiltered))
}

// ack acknowledges m where it lives, logging its attempt (nil: none) with it.
func (r *sub) ack(m *core.Message, at *core.Attempt) result {
	st := core.Settlement{Sub: r.cfg, Origin: m.Origin, Handle: settleHandle(m), ID: m.ID, Queue: m.Queue, Attempt: at}
	switch {
	case m.Origin == core.Unsettled:
		if at != nil {
			r.e.settler.add(st, r.live) // nothing to settle; the attempt is still logged
		}
	case r.gate != nil && m.Origin == core.FromRetry:
		// The head of an ordered key: its key may only move on once it is settled.
		ctx, cancel := r.ctx()
		err := r.e.b.Settle(ctx, []core.Settlement{st})
		cancel()
		if err != nil {
			r.log.Warn("could not ack retried message; it will be delivered again", zap.String("message_id", m.ID), zap.Error(err))
			return unsettled
		}
	default:
		// Batched with every other settlement of the process; a lost ack means a
		// duplicate later, never a loss.
		r.e.settler.add(st, r.live)
	}
	return settled
}

// requeue schedules a failed message for another delivery after its backoff, or
// dead-letters it when it has had max_deliveries.
func (r *sub) requeue(cfg *core.Subscription, m *core.Message, res pushResult) result {
	if m.Deliveries >= cfg.MaxDeliveries {
		return r.deadLetter(cfg, m, core.ReasonMaxDeliveries, res.status, res.errText, r.attempt(m, res, core.OutcomeDeadLetter))
	}
	due := time.Now().Add(retryDelay(cfg, m.Deliveries, res.retryAfter, time.Now()))
	at := r.attempt(m, res, core.OutcomeRetry)
	next := *m // with the failure context the next push carries
	next.LastStatus, next.LastError = res.status, res.errText
	err := r.write(func(ctx context.Context) error { return r.e.b.Retry(ctx, cfg, &next, due, at) })
	switch {
	case errors.Is(err, core.ErrGone):
		return settled // its subscription was deleted: nothing of it may be written
	case errors.Is(err, core.ErrSettled):
		return settled // a deferred message its handler settled meanwhile
	case err != nil:
		r.log.Warn("could not schedule retry; the message stays pending and will be reclaimed",
			zap.String("message_id", m.ID), zap.Error(err))
		return unsettled
	}
	r.live.stats.Retried.Add(1)
	r.armRetry(due)
	return requeued
}

// deferMsg holds a message its webhook took to settle later (202 with Bridge-Ack-Deadline):
// out of its push slot, in the retry set until the deadline, with the lease its token
// proves. Past max_deferred the answer counts as a failed attempt: the message comes again.
func (r *sub) deferMsg(cfg *core.Subscription, m *core.Message, res pushResult) result {
	deadline := time.Now().Add(res.deferFor)
	sum := sha256.Sum256([]byte(res.token))
	at := r.attempt(m, res, core.OutcomeDeferred)
	err := r.write(func(ctx context.Context) error {
		return r.e.b.Defer(ctx, cfg, m, deadline, hex.EncodeToString(sum[:]), maxDeferred(cfg), at)
	})
	switch {
	case errors.Is(err, core.ErrGone):
		return settled
	case errors.Is(err, core.ErrDeferFull):
		res.errText = fmt.Sprintf("202 with Bridge-Ack-Deadline refused: %d messages are deferred already (max_deferred)", maxDeferred(cfg))
		r.live.stats.record(res.status, res.errText)
		return r.requeue(cfg, m, res)
	case err != nil:
		r.log.Warn("could not defer; the message stays pending and will be reclaimed",
			zap.String("message_id", m.ID), zap.Error(err))
		return unsettled
	}
	r.armRetry(deadline)
	return requeued
}

// maxDeferred is s's max_deferred (a subscription stored before it existed has the default).
func maxDeferred(s *core.Subscription) int {
	if s.MaxDeferred > 0 {
		return s.MaxDeferred
	}
	return core.DefaultMaxDeferred
}

// deadlinePassed handles a deferred message whose ack deadline passed: the delivery that
// was deferred failed (a timeout) and the verdict table decides, as for any timeout.
func (r *sub) deadlinePassed(cfg *core.Subscription, m *core.Message) result {
	held := *m
	held.Deliveries = max(m.Deliveries-1, 1) // the claim counted a delivery that is not made
	res := pushResult{errText: "ack deadline passed"}
	r.live.stats.record(0, res.errText)
	return r.requeue(cfg, &held, res)
}

// attempt is what the attempt log keeps of this push; nil when the log is off.
func (r *sub) attempt(m *core.Message, res pushResult, outcome string) *core.Attempt {
	if !r.e.opts.AttemptLog {
		return nil
	}
	return &core.Attempt{MessageID: m.ID, Delivery: m.Deliveries, Status: res.status, Error: res.errText,
		Latency: res.latency, Outcome: outcome, Process: r.e.consumer}
}

// settleHandle is what acknowledges m where it lives.
func settleHandle(m *core.Message) string {
	if m.Origin == core.FromRetry {
		return m.ID
	}
	return m.EntryID
}

// write runs one settlement that writes the subscription's keys. When Redis says the
// subscription is not the live one, it checks: a live subscription without its marker gets
// it back and the write is tried again; core.ErrGone means it was really deleted.
func (r *sub) write(op func(ctx context.Context) error) error {
	ctx, cancel := r.ctx()
	defer cancel()
	err := op(ctx)
	if errors.Is(err, core.ErrGone) && !r.e.confirmGone(ctx, r.live) {
		err = op(ctx)
	}
	return err
}

func (r *sub) pauseGone() {
	reason := "webhook answered 410 Gone"
	ctx, cancel := r.ctx()
	err := r.e.b.PauseSubscription(ctx, r.cfg.Name, reason)
	cancel()
	if err != nil {
		r.log.Error("could not pause subscription after 410", zap.Error(err))
	} else {
		r.log.Warn("subscription paused: " + reason)
		r.e.event("subscription.paused", r.cfg, map[string]any{"reason": reason})
	}
}

// settleAtMostOnce handles a failed push of a message nothing in Redis holds any more: a
// simple list's is dead-lettered (its one delivery is spent), a Pub/Sub message's failure
// is only counted and logged.
func (r *sub) settleAtMostOnce(cfg *core.Subscription, m *core.Message, outcome Outcome, res pushResult) {
	if outcome == Gone {
		defer r.pauseGone()
	}
	if r.cfg.Transport == core.TransportPubSub {
		r.log.Info("Pub/Sub push failed; at-most-once, not retried", zap.String("message_id", m.ID),
			zap.Int("status", res.status), zap.String("error", res.errText))
		if at := r.attempt(m, res, core.OutcomeFailed); at != nil {
			r.e.settler.add(core.Settlement{Sub: r.cfg, Origin: core.Unsettled, Attempt: at}, r.live)
		}
		return
	}
	reason := core.ReasonDropped
	if outcome == Requeue {
		reason = core.ReasonMaxDeliveries
	}
	_ = r.deadLetter(cfg, m, reason, res.status, res.errText, r.attempt(m, res, core.OutcomeDeadLetter))
}

func (r *sub) deadLetter(cfg *core.Subscription, m *core.Message, reason string, status int, errText string, at *core.Attempt) result {
	info := core.DeadLetterInfo{Reason: reason, LastStatus: status, LastError: errText, At: time.Now(), Attempt: at}
	err := r.write(func(ctx context.Context) error { return r.e.b.DeadLetter(ctx, cfg, m, info) })
	if errors.Is(err, core.ErrGone) || errors.Is(err, core.ErrSettled) {
		return settled // its subscription was deleted, or its handler settled it meanwhile
	}
	if err != nil {
		r.log.Warn("could not dead-letter; the message stays pending and will be reclaimed",
			zap.String("message_id", m.ID), zap.Error(err))
		return unsettled
	}
	r.live.stats.DeadLettered.Add(1)
	r.log.Info("dead-lettered", zap.String("message_id", m.ID), zap.String("reason", reason),
		zap.Int("status", status), zap.Int("deliveries", m.Deliveries))
	return settled
}
