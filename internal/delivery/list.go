package delivery

import (
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// listRound fills the free slots of a list subscription. Reliable mode also serves its
// retry set and returns dead consumers' processing lists to the queue (when a check found
// one); simple mode only pops. It reports whether more may be waiting right now.
func (r *sub) listRound() bool {
	free := r.slots()
	if free == 0 {
		return false
	}
	n := r.throttle(free)
	if n == 0 {
		return false
	}
	used := 0
	defer func() { r.used(used) }()
	reliable := r.cfg.ListMode != core.ListSimple
	vt := time.Duration(r.cfg.VisibilityTimeout)
	if reliable {
		if r.retryDue.Load() || (r.nextRetry.Load() != 0 && time.Now().UnixMilli() >= r.nextRetry.Load()) {
			r.retryDue.Store(false)
			ctx, cancel := r.ctx()
			msgs, next, err := r.e.b.ClaimRetries(ctx, r.cfg, time.Now(), vt, n)
			cancel()
			if err != nil {
				r.retryDue.Store(true)
				r.failed("the retry set", err)
				return false
			}
			r.retryLooked(next)
			if len(msgs) == n {
				r.retryDue.Store(true)
			}
			r.send(msgs)
			used += len(msgs)
			if used == n {
				r.saturated.Store(true)
				return false
			}
		}
		if r.staleDue.CompareAndSwap(true, false) {
			ctx, cancel := r.ctx()
			back, err := r.e.b.RecoverList(ctx, r.cfg, vt)
			cancel()
			if err != nil {
				r.staleDue.Store(true)
				r.failed("the list's consumers", err)
				return false
			}
			if back > 0 {
				r.log.Info("returned a dead consumer's processing list to the queue", zap.Int("count", back))
			}
		}
		// Alive before taking anything: a consumer whose beat is stale may be recovered.
		if time.Since(time.UnixMilli(r.lastBeat.Load())) > vt/4 {
			r.beat()
		}
	}
	want := n - used
	ctx, cancel := r.ctx()
	msgs, err := r.e.b.PopList(ctx, r.cfg, r.consumer, want)
	cancel()
	if err != nil {
		r.failed("the list", err)
		return false
	}
	r.errs.ok(r.log, "reading the list again")
	r.send(msgs)
	used += len(msgs)
	full := len(msgs) == want
	r.saturated.Store(full)
	return full
}

// beat records that this sub is alive and works on its processing list.
func (r *sub) beat() {
	ctx, cancel := r.ctx()
	defer cancel()
	if err := r.e.b.Heartbeat(ctx, r.cfg, r.consumer); err != nil {
		r.log.Debug("heartbeat failed", zap.Error(err))
		return
	}
	r.lastBeat.Store(time.Now().UnixMilli())
}

// keepBeating keeps the heartbeat fresh while this sub holds messages in its processing
// list, so a slow push never lets it look dead; an idle sub beats no more (its list is
// empty, and it beats again before it takes anything).
func (r *sub) keepBeating() {
	vt := time.Duration(r.cfg.VisibilityTimeout)
	r.after(&r.keepT, max(vt/4, 50*time.Millisecond), func() {
		r.bg(func() {
			if r.inFlight.Load() == 0 {
				return
			}
			r.beat()
			r.keepBeating()
		})
	})
}
