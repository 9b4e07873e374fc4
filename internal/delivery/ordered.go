package delivery

import (
	"sync"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// orderGate keeps, per partition key, at most one message in flight or in the retry set;
// later messages of a busy key wait here, in entry order, and go when it settles.
// Messages without a partition key pass. Safe for concurrent use.
type orderGate struct {
	mu      sync.Mutex
	busy    map[string]bool
	waiting map[string][]core.Message
	queued  int
	// held are the entries queued here or in flight: a reclaim pass must not push them twice.
	held map[string]bool
	// stalled maps a busy key to its head entry when that entry was left pending (a cut push
	// or a failed settlement): when reclaim brings it back, it goes first.
	stalled map[string]string
}

func newOrderGate() *orderGate {
	return &orderGate{busy: map[string]bool{}, waiting: map[string][]core.Message{}, held: map[string]bool{}, stalled: map[string]string{}}
}

func partitionKey(m *core.Message) string { return m.Headers[core.HeaderPartitionKey] }

// admit returns the messages that may go now and queues the rest. A message from the retry
// set is the head of its key and always goes; a reclaimed entry already held is dropped.
func (g *orderGate) admit(msgs []core.Message) []core.Message {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := msgs[:0:0]
	for _, m := range msgs {
		if m.Origin == core.FromStream {
			if g.held[m.EntryID] {
				continue
			}
			g.held[m.EntryID] = true
		}
		key := partitionKey(&m)
		switch {
		case key == "":
			out = append(out, m)
		case m.Origin == core.FromRetry, g.stalled[key] == m.EntryID:
			delete(g.stalled, key)
			g.busy[key] = true
			out = append(out, m)
		case g.busy[key]:
			g.waiting[key] = append(g.waiting[key], m)
			g.queued++
		default:
			g.busy[key] = true
			out = append(out, m)
		}
	}
	return out
}

// done records what became of m and returns the next message of its key to push, if any.
func (g *orderGate) done(m *core.Message, r result) (core.Message, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m.Origin == core.FromStream {
		delete(g.held, m.EntryID)
	}
	key := partitionKey(m)
	if key == "" || r == requeued {
		return core.Message{}, false
	}
	if r == unsettled {
		if m.Origin == core.FromStream {
			g.stalled[key] = m.EntryID
		}
		return core.Message{}, false
	}
	q := g.waiting[key]
	if len(q) == 0 {
		delete(g.busy, key)
		return core.Message{}, false
	}
	next := q[0]
	if len(q) == 1 {
		delete(g.waiting, key)
	} else {
		g.waiting[key] = q[1:]
	}
	g.queued--
	return next, true
}

// block marks keys busy (heads waiting in the retry set when a process takes over).
func (g *orderGate) block(keys []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, k := range keys {
		g.busy[k] = true
	}
}

// reset forgets everything queued (leadership lost: the next leader reclaims those entries).
func (g *orderGate) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.busy, g.waiting, g.held, g.stalled, g.queued = map[string]bool{}, map[string][]core.Message{}, map[string]bool{}, map[string]string{}, 0
}

func (g *orderGate) backlog() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.queued
}

// releaseLease hands the lease on once this sub's pushes are over, so the next holder
// starts with nothing of this sub in flight.
func (r *sub) releaseLease() {
	ctx, cancel := r.ctx()
	defer cancel()
	if err := r.e.b.ReleaseLease(ctx, r.cfg, r.consumer); err != nil {
		r.log.Warn("could not release the lease; another process takes over when it lapses", zap.Error(err))
	}
}

// keep holds the delivery lease of an ordered subscription, renewing it every quarter of
// the visibility timeout, and says through r.leading whether this sub may read. Losing the
// lease drops what was queued: the next holder reclaims those entries in order.
func (r *sub) keep() {
	r.bg(func() {
		vt := time.Duration(r.cfg.VisibilityTimeout)
		ctx, cancel := r.ctx()
		defer cancel()
		mine, err := r.e.b.HoldLease(ctx, r.cfg, r.consumer, vt)
		switch {
		case err == nil && mine && !r.leading.Load():
			keys, kerr := r.e.b.RetryingKeys(ctx, r.cfg)
			if kerr == nil {
				r.gate.block(keys)
				// Whatever the previous holder left pending goes first, in entry order.
				r.takeover.Store(true)
				r.leading.Store(true)
				r.log.Info("delivering this ordered subscription", zap.Int("keys_waiting_in_retry", len(keys)))
				r.kick()
			}
		case (err != nil || !mine) && r.leading.Load():
			r.leading.Store(false)
			r.gate.reset()
			r.log.Warn("lost the lease of this ordered subscription; another process takes over", zap.Error(err))
		}
		r.after(&r.keepT, max(vt/4, 50*time.Millisecond), r.keep)
	})
}
