package delivery

import (
	"errors"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// consumerIdleLimit is how long a consumer that holds nothing may stay idle in a group
// before it is removed (a process that is gone).
const consumerIdleLimit = time.Hour

// streamRound fills the free slots of a stream subscription: due retries first, then
// entries a dead consumer left pending (when a check found some), then new entries. It
// reports whether more may be waiting right now.
func (r *sub) streamRound() bool {
	if r.gate != nil && !r.leading.Load() {
		return false // another process delivers it; the lease keeper kicks on takeover
	}
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
	vt := time.Duration(r.cfg.VisibilityTimeout)

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
			r.retryDue.Store(true) // more may be due
		}
		r.send(msgs)
		used += len(msgs)
		if used == n {
			r.saturated.Store(true)
			return false
		}
	}

	if r.takeover.Load() {
		// Just became the holder of an ordered subscription's lease: take every entry other
		// processes left pending first, oldest first, before reading anything new.
		want := n - used
		ctx, cancel := r.ctx()
		rc, err := r.e.b.ReclaimOthers(ctx, r.cfg, r.consumer, 0, want)
		cancel()
		if err != nil {
			r.failed("the pending entries", err)
			return false
		}
		if len(rc.Messages)+len(rc.Lost) < want {
			r.takeover.Store(false) // nothing more left behind
		}
		r.noteLost(rc.Lost)
		r.send(rc.Messages)
		used += len(rc.Messages)
		return used > 0
	}

	if r.staleDue.CompareAndSwap(true, false) {
		ctx, cancel := r.ctx()
		reclaim := r.e.b.Reclaim
		if r.gate != nil {
			reclaim = r.e.b.ReclaimOthers
		}
		rc, err := reclaim(ctx, r.cfg, r.consumer, vt, n-used)
		cancel()
		if err != nil {
			r.staleDue.Store(true)
			r.failed("the pending entries", err)
			return false
		}
		r.noteLost(rc.Lost)
		if len(rc.Messages) > 0 {
			r.log.Info("reclaimed messages left pending by another consumer", zap.Int("count", len(rc.Messages)))
		}
		if rc.NextStale > 0 {
			// Entries pending with a consumer that may be gone: look again once they could
			// be taken over.
			r.after(&r.staleT, rc.NextStale+10*time.Millisecond, func() {
				r.staleDue.Store(true)
				r.kick()
			})
		}
		if len(rc.Messages) == n-used {
			r.staleDue.Store(true) // there may be more
		}
		r.send(rc.Messages)
		used += len(rc.Messages)
		if used == n {
			r.saturated.Store(true)
			return false
		}
	}

	if r.gate != nil && r.gate.backlog() >= 8*r.cfg.MaxInFlight {
		// An ordered subscription holds back later messages of a busy key; past this many
		// it stops reading until keys drain (a finishing push kicks).
		r.saturated.Store(true)
		return false
	}
	if r.lastRead.Load() == nil {
		// Where the stream stands before the first read: the sweep looks past it for entries
		// nothing announced, and the first read takes whatever waits in the group.
		ctx, cancel := r.ctx()
		last, err := r.e.b.LastEntries(ctx, []string{r.cfg.Subject})
		cancel()
		if err != nil {
			r.failed("the stream", err)
			return false
		}
		id := last[r.cfg.Subject]
		r.lastRead.Store(&id)
	}
	want := n - used
	wait := r.hotWait()
	hot := wait > 0
	ctx, cancel := r.ctx()
	msgs, err := r.e.b.Read(ctx, r.cfg, r.consumer, want, wait)
	cancel()
	if hot {
		r.e.hotReads.Add(-1)
	}
	if errors.Is(err, core.ErrNoGroup) {
		if err = r.recreateGroup(); err == nil {
			return true
		}
	}
	if err != nil {
		r.failed("the stream", err)
		return false
	}
	r.errs.ok(r.log, "reading the stream again")
	if len(msgs) > 0 {
		r.prevGot, r.lastGot = r.lastGot, time.Now()
		id := msgs[len(msgs)-1].EntryID
		r.lastRead.Store(&id)
		r.e.opts.Touch(r.cfg.Subject)
	} else if hint := r.sweptUpTo.Swap(nil); hint != nil {
		// The sweep saw this entry, and the group has nothing undelivered: it is read
		// (perhaps by another process). The next sweep looks past it.
		r.lastRead.Store(hint)
	}
	r.send(msgs)
	used += len(msgs)
	full := len(msgs) == want
	r.saturated.Store(full)
	// While hot, the reader goes straight back to waiting in Redis; it cools down (back to
	// wake-ups) once nothing came for hotWindow.
	return full || hot
}

// hotWait is how long this round's read may wait in Redis for its next entry: HotWait for
// a busy subscription (the entry comes the moment it is added, not after the publish's
// wake-up and another round trip), holding one of the process's maxHotReads slots, which
// the caller gives back after the read; 0 otherwise.
func (r *sub) hotWait() time.Duration {
	if r.gate != nil || r.limiter != nil || r.probing || r.e.opts.HotWait <= 0 || time.Since(r.prevGot) >= hotWindow {
		return 0
	}
	if r.e.hotReads.Add(1) > maxHotReads {
		r.e.hotReads.Add(-1) // as many wait already as may: this one reads on wake-ups
		return 0
	}
	return r.e.opts.HotWait
}

// noteLost counts pending entries that no longer existed in the stream.
func (r *sub) noteLost(lost []string) {
	if len(lost) == 0 {
		return
	}
	r.live.stats.Lost.Add(int64(len(lost)))
	r.e.metrics.Lost(r.cfg.Name, len(lost))
	r.log.Warn("pending entries no longer exist in the stream (trimmed or deleted); acknowledged and counted as lost",
		zap.Int("count", len(lost)), zap.Strings("entry_ids", lost))
}

// recreateGroup answers a missing consumer group. If the subscription still exists the
// stream was deleted or flushed under it: the group is recreated from the beginning of
// whatever stream exists now, so nothing published since is missed. If it was deleted (or
// replaced), the group is gone on purpose and this sub stops reading.
func (r *sub) recreateGroup() error {
	ctx, cancel := r.ctx()
	defer cancel()
	cur, err := r.e.b.GetSubscription(ctx, r.cfg.Name)
	if errors.Is(err, core.ErrNotFound) || (err == nil && (cur.Subject != r.cfg.Subject || cur.Incarnation() != r.cfg.Incarnation())) {
		r.stop()
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := r.e.b.EnsureGroup(ctx, r.cfg.Subject, r.cfg.Name, "beginning"); err != nil {
		return err
	}
	r.log.Warn("consumer group was missing (stream deleted or flushed); recreated it from the beginning of the stream")
	return nil
}
