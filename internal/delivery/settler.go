package delivery

import (
	"context"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// maxSettleBatch bounds one batch of acknowledgements.
const maxSettleBatch = 1024

// settler batches the acknowledgements of the whole process: whatever pushes finished
// while the previous batch was on the wire goes out in the next one, one XACK per stream
// group and one script per retry set or processing list. Safe for concurrent use.
type settler struct {
	e   *Engine
	in  chan settleItem
	out chan struct{} // closed when the loop has flushed everything and ended
	// clock bounds each write by settleTimeout (and the shutdown's abort); at low rates a
	// batch is one message, and a context.WithTimeout per batch was 1% of the CPU.
	clock deadlineClock
}

type settleItem struct {
	st   core.Settlement
	live *liveSub
}

func newSettler(e *Engine) *settler {
	return &settler{e: e, in: make(chan settleItem, maxSettleBatch), out: make(chan struct{}), clock: deadlineClock{parent: e.abortCtx}}
}

// add queues one acknowledgement. It may wait while a batch is being written.
func (s *settler) add(st core.Settlement, l *liveSub) { s.in <- settleItem{st, l} }

// run writes batches until close; then it flushes what is left (bounded by the grace).
func (s *settler) run() {
	defer close(s.out)
	defer s.clock.close()
	batch := make([]core.Settlement, 0, maxSettleBatch)
	for it := range s.in {
		batch = append(batch[:0], it.st)
		if it.live.gone.Load() {
			batch = batch[:0] // acks of a deleted subscription: its group is gone
		}
	drain:
		for len(batch) < maxSettleBatch {
			select {
			case it, ok := <-s.in:
				if !ok {
					break drain
				}
				if !it.live.gone.Load() {
					batch = append(batch, it.st)
				}
			default:
				break drain
			}
		}
		if len(batch) > 0 {
			s.flush(batch)
		}
	}
}

// close ends the loop once everything queued is written; call when no push can add more.
func (s *settler) close() {
	close(s.in)
	<-s.out
}

// flush writes one batch, retrying for a while: a lost ack means a duplicate push later,
// never a loss, but a short Redis blip should not cause one. The retries end with the
// shutdown's grace.
func (s *settler) flush(batch []core.Settlement) {
	deadline := time.Now().Add(5 * time.Second)
	for attempt := 0; ; attempt++ {
		err := s.e.b.Settle(s.clock.begin(settleTimeout), batch)
		s.clock.end()
		if err == nil {
			return
		}
		s.e.troubled.Store(true)
		if time.Now().After(deadline) || s.e.abortCtx.Err() != nil {
			s.e.log.Warn("could not acknowledge; these messages will be delivered again after the visibility timeout",
				zap.Int("count", len(batch)), zap.Error(err))
			return
		}
		t := time.NewTimer(min(time.Duration(attempt+1)*100*time.Millisecond, time.Second))
		select {
		case <-t.C:
		case <-s.e.abortCtx.Done():
			t.Stop()
		}
	}
}

// deadlineClock times one goroutine's calls, one after another (the settler's Redis
// writes), with one context and one timer for as long as none runs out of time. A
// context.WithTimeout per call costs a context, a timer and a cancel. Not safe for
// concurrent use: one goroutine owns it.
type deadlineClock struct {
	parent context.Context // cut by a shutdown past its grace
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer // cancels ctx when a push outlives its timeout
}

// begin starts the clock of a call that may take up to d and returns its context.
func (c *deadlineClock) begin(d time.Duration) context.Context {
	if c.ctx == nil {
		c.ctx, c.cancel = context.WithCancel(c.parent)
		c.timer = time.AfterFunc(d, c.cancel)
		return c.ctx
	}
	c.timer.Reset(d)
	return c.ctx
}

// end stops the clock of the call begun last and reports whether it ran out of time.
func (c *deadlineClock) end() (expired bool) {
	if c.timer.Stop() {
		return false
	}
	// Fired (or firing): this context is done for; the next call gets a new one.
	c.cancel()
	c.ctx = nil
	return true
}

// close releases the context and the timer; its goroutine calls it when it ends.
func (c *deadlineClock) close() {
	if c.ctx != nil {
		c.timer.Stop()
		c.cancel()
		c.ctx = nil
	}
}
