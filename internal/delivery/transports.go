package delivery

import (
	"sync"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// listLoop is the producer of a list subscription. Reliable mode also serves its retry
// set, keeps this runner's heartbeat fresh and returns dead consumers' processing lists to
// the queue; simple mode only pops.
func (r *runner) listLoop() {
	reliable := r.sub.ListMode != "simple"
	vt := time.Duration(r.sub.VisibilityTimeout)
	if reliable {
		// Beat before the first pop, and from a goroutine of its own so that slow pushes
		// never let the heartbeat go stale while this process still works on its list.
		r.beat()
		done := make(chan struct{})
		var beating sync.WaitGroup
		beating.Add(1)
		// Waited for: no heartbeat may follow this producer's end (the runner then gives its
		// processing list back, and a late beat would make it look alive again).
		defer func() {
			close(done)
			beating.Wait()
		}()
		go func() {
			defer beating.Done()
			t := time.NewTicker(max(vt/4, 50*time.Millisecond))
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					r.beat()
				}
			}
		}()
	}
	recoverEvery := min(max(vt/4, 250*time.Millisecond), 5*time.Second)
	nextRecover := time.Now()
	r.produce("the list", func(n int) (int, error) {
		now := time.Now()
		used := 0
		if reliable {
			var err error
			if used, err = r.claimDueRetries(n, now, vt); err != nil || used == n {
				return used, err
			}
			if !now.Before(nextRecover) {
				nextRecover = now.Add(recoverEvery)
				ctx, cancel := r.e.redisCtx(settleTimeout)
				back, err := r.e.b.RecoverList(ctx, r.sub, vt)
				cancel()
				if back > 0 {
					r.log.Info("returned a dead consumer's processing list to the queue", zap.Int("count", back))
				}
				if err != nil {
					return used, err
				}
			}
		}
		ctx, cancel := r.e.redisCtx(r.e.opts.Block + settleTimeout)
		msgs, err := r.e.b.PopList(ctx, r.sub, r.consumer, n-used, r.readBlock(reliable))
		cancel()
		r.dispatch(msgs)
		return used + len(msgs), err
	})
}

func (r *runner) beat() {
	ctx, cancel := r.e.redisCtx(settleTimeout)
	defer cancel()
	if err := r.e.b.Heartbeat(ctx, r.sub, r.consumer); err != nil {
		r.log.Debug("heartbeat failed", zap.Error(err))
	}
}

// claimDueRetries dispatches up to n due messages of the retry set and updates nextRetry.
func (r *runner) claimDueRetries(n int, now time.Time, lease time.Duration) (int, error) {
	if now.Before(time.UnixMilli(r.nextRetry.Load())) {
		return 0, nil
	}
	ctx, cancel := r.e.redisCtx(settleTimeout)
	msgs, next, err := r.e.b.ClaimRetries(ctx, r.sub, now, lease, n)
	cancel()
	// Other processes schedule retries too: look again within RegistryPoll at most.
	poll := now.Add(r.e.opts.RegistryPoll)
	if next.IsZero() || next.After(poll) {
		next = poll
	}
	if len(msgs) == n {
		next = now // more may be due
	}
	r.nextRetry.Store(next.UnixMilli())
	return r.send(msgs), err
}

// pubsubLoop keeps the subscription's channel subscribed (resubscribing after a lost
// connection) and hands each message to a worker. Pub/Sub is at-most-once: a message that
// arrives while every slot is busy waits for one, and only one bridge process pushes it.
func (r *runner) pubsubLoop() {
	ctx := r.stopCtx
	// The receive callback may still be running when a subscription ends; the lock keeps it
	// from dispatching once this producer has returned (and jobs is closed).
	var mu sync.RWMutex
	closed := false
	defer func() {
		mu.Lock()
		closed = true
		mu.Unlock()
	}()
	var errs errThrottle
	for !r.stopping() {
		err := r.e.b.SubscribePubSub(ctx, r.sub, func() { errs.ok(r.log, "Pub/Sub subscribed") }, func(m core.Message) {
			mu.RLock()
			defer mu.RUnlock()
			if closed || r.acquire(1, true) == 0 {
				return
			}
			cctx, ccancel := r.e.redisCtx(settleTimeout)
			mine, err := r.e.b.ClaimPubSub(cctx, r.sub, m.ID)
			ccancel()
			if err != nil || !mine {
				// Another process pushes it; if Redis cannot say, at-most-once means skip.
				r.release(1)
				return
			}
			r.dispatch([]core.Message{m})
		})
		if r.stopping() {
			return
		}
		errs.log(r.log, "Pub/Sub subscription lost; resubscribing", err)
		r.sleep(time.Second)
	}
}
