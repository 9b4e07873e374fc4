package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// The circuit breaker (SPEC §10) as one process sees it. Redis holds the truth (see
// broker.CircuitFailure); a process learns it from its own failures' answers and from the
// announcements of the process that changed it, so a closed circuit costs nothing on the
// push path: a success only stores the time in memory (the stats report carries it).
type circuitLocal struct {
	// openUntil (unix ms) is when the open circuit may be probed (or the probe lease of
	// another process ends); 0 while closed as far as this process knows.
	openUntil atomic.Int64
	// probeID is the message this process sends as the probe, nil when none.
	probeID atomic.Pointer[string]
}

// CircuitEventsSubject receives the bridge's events as JSON messages (SPEC §10).
const CircuitEventsSubject = "bridge.events"

// probeLease bounds how long a process may hold the probe beyond the push's timeout.
const probeLease = 5 * time.Second

// circuitOn reports whether s has a circuit breaker.
func circuitOn(s *core.Subscription) bool {
	return s.CircuitBreaker.Failures > 0 && s.Transport != core.TransportPubSub
}

// circuitGate decides whether a reading round may go on: always while the circuit is
// closed; while it is open, only once its cooldown has passed and this process won the
// probe (then the round hands out one message, the probe). It arms a kick for when the
// circuit may be probed.
func (r *sub) circuitGate() (ok, probe bool) {
	cfg := r.live.sub.Load()
	c := &r.live.circuit
	if !circuitOn(cfg) {
		return true, false
	}
	until := c.openUntil.Load()
	if until == 0 {
		return true, false
	}
	if c.probeID.Load() != nil {
		return false, false // our probe is out: its answer decides
	}
	now := time.Now()
	if wait := time.UnixMilli(until).Sub(now); wait > 0 {
		r.after(&r.circuitT, wait+time.Millisecond, r.kick)
		return false, false
	}
	ctx, cancel := r.ctx()
	granted, state, next, err := r.e.b.ClaimProbe(ctx, cfg, r.e.consumer, time.Duration(cfg.Timeout)+probeLease, now)
	cancel()
	switch {
	case err != nil:
		r.failed("the circuit breaker", err)
		return false, false
	case state == core.CircuitClosed:
		c.openUntil.Store(0) // closed by another process meanwhile
		return true, false
	case granted:
		return true, true
	}
	c.openUntil.Store(next.UnixMilli())
	r.after(&r.circuitT, max(time.Until(next), 0)+time.Millisecond, r.kick)
	return false, false
}

// circuitHold reports whether m must not be pushed now: the circuit is open (as this
// process knows) and m is not the probe.
func (r *sub) circuitHold(cfg *core.Subscription, m *core.Message) (time.Time, bool) {
	if !circuitOn(cfg) {
		return time.Time{}, false
	}
	until := r.live.circuit.openUntil.Load()
	if until == 0 || r.isProbe(m) {
		return time.Time{}, false
	}
	return time.UnixMilli(until), true
}

func (r *sub) isProbe(m *core.Message) bool {
	p := r.live.circuit.probeID.Load()
	return p != nil && *p == m.ID
}

// circuitSuccess records an acknowledged push; a successful probe closes the circuit.
func (r *sub) circuitSuccess(cfg *core.Subscription, m *core.Message) {
	r.live.stats.okAt.Store(time.Now().UnixMilli())
	if !circuitOn(cfg) || !r.isProbe(m) {
		return
	}
	c := &r.live.circuit
	ctx, cancel := r.ctx()
	closed, err := r.e.b.CloseCircuit(ctx, cfg, r.e.consumer)
	cancel()
	c.probeID.Store(nil)
	if err != nil {
		r.log.Warn("could not close the circuit after a successful probe; the next probe will", zap.Error(err))
		return
	}
	c.openUntil.Store(0)
	if closed {
		r.log.Info("circuit closed: the probe succeeded")
		r.e.circuitChanged(cfg, "circuit.closed", nil)
	}
	r.kick()
}

// circuitFailure counts a failed push (a retryable one) and reports whether the attempt is
// not to be counted (the circuit was open, or this was the probe) and until when to hold
// the message.
func (r *sub) circuitFailure(cfg *core.Subscription, m *core.Message) (time.Time, bool) {
	if !circuitOn(cfg) {
		return time.Time{}, false
	}
	c := &r.live.circuit
	probe := r.isProbe(m)
	if probe {
		c.probeID.Store(nil)
	}
	okAt := time.Time{}
	if ms := r.live.stats.okAt.Load(); ms > 0 {
		okAt = time.UnixMilli(ms)
	}
	ctx, cancel := r.ctx()
	verdict, until, err := r.e.b.CircuitFailure(ctx, cfg, r.e.consumer, okAt, probe, time.Now())
	cancel()
	if err != nil {
		r.log.Warn("could not count a failure for the circuit breaker", zap.Error(err))
		return time.Time{}, false
	}
	switch verdict {
	case core.CircuitOpened:
		c.openUntil.Store(until.UnixMilli())
		r.log.Warn("circuit opened: pushes stop until a probe succeeds",
			zap.Int("failures", cfg.CircuitBreaker.Failures), zap.Duration("cooldown", time.Duration(cfg.CircuitBreaker.Cooldown)))
		r.e.circuitChanged(cfg, "circuit.opened", map[string]any{
			"failures": cfg.CircuitBreaker.Failures, "until": until.UTC().Format(time.RFC3339Nano)})
		return time.Time{}, false // this failure happened while closed: it counts
	case core.CircuitReopened:
		c.openUntil.Store(until.UnixMilli())
		r.log.Info("circuit probe failed; open again", zap.Time("until", until))
		r.e.announceCircuit(cfg)
		return until, true
	case core.CircuitIsOpen:
		c.openUntil.Store(until.UnixMilli())
		return until, true
	}
	return time.Time{}, false
}

// holdForCircuit puts m back in the retry set until the circuit may be probed, without
// using up a delivery: the push it had (if any) does not count against max_deliveries.
func (r *sub) holdForCircuit(cfg *core.Subscription, m *core.Message, until time.Time, at *core.Attempt) result {
	held := *m
	held.Deliveries = max(m.Deliveries-1, 0)
	err := r.write(func(ctx context.Context) error { return r.e.b.Retry(ctx, cfg, &held, until, at) })
	if err != nil {
		if !errors.Is(err, core.ErrGone) {
			r.log.Warn("could not hold a message while the circuit is open; it stays pending and will be reclaimed",
				zap.String("message_id", m.ID), zap.Error(err))
			return unsettled
		}
		return settled
	}
	r.armRetry(until)
	return requeued
}

// circuitChanged tells the other processes and publishes the event.
func (e *Engine) circuitChanged(s *core.Subscription, kind string, extra map[string]any) {
	e.announceCircuit(s)
	e.event(kind, s, extra)
}

// announceCircuit tells the other processes to read s's circuit again.
func (e *Engine) announceCircuit(s *core.Subscription) {
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	if err := e.b.AnnounceCircuit(ctx, s.Name); err != nil {
		e.log.Warn("could not announce a circuit change; other processes learn it from their next push", zap.Error(err))
	}
}

// event publishes a bridge event as JSON to CircuitEventsSubject, so a webhook can alert
// on it: circuit.opened, circuit.closed, subscription.paused.
func (e *Engine) event(kind string, s *core.Subscription, extra map[string]any) {
	ev := map[string]any{"type": kind, "subscription": s.Name, "subject": s.Subject, "at": time.Now().UTC().Format(time.RFC3339Nano)}
	for k, v := range extra {
		ev[k] = v
	}
	body, _ := json.Marshal(ev) // cannot fail: strings, numbers
	ctx, cancel := e.redisCtx(settleTimeout)
	defer cancel()
	if _, err := e.b.Publish(ctx, CircuitEventsSubject, body, map[string]string{core.HeaderContentType: "application/json"}); err != nil {
		e.log.Warn("could not publish a bridge event", zap.String("type", kind), zap.Error(err))
		return
	}
	e.Published(CircuitEventsSubject)
}

// circuitAnnounced applies another process's circuit change: read it again.
func (e *Engine) circuitAnnounced(name string) {
	e.mu.Lock()
	l, r := e.live[name], e.subs[name]
	e.mu.Unlock()
	if l == nil {
		return
	}
	cfg := l.sub.Load()
	ctx, cancel := e.redisCtx(settleTimeout)
	c, err := e.b.Circuit(ctx, cfg)
	cancel()
	if err != nil {
		return // the next push learns it
	}
	switch c.State {
	case core.CircuitClosed:
		l.circuit.openUntil.Store(0)
		if r != nil {
			r.kick()
		}
	default:
		l.circuit.openUntil.Store(c.Until.UnixMilli())
	}
}

// circuitPrefix marks a circuit announcement on the registry changes channel.
const circuitPrefix = "circuit:"

func circuitAnnouncement(payload string) (string, bool) {
	return strings.CutPrefix(payload, circuitPrefix)
}
