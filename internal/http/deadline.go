package httpapi

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// deadlineTick is how long one shared publish context is handed out: a publish's Redis
// work is bounded by requestTimeout minus at most this.
const deadlineTick = 100 * time.Millisecond

// sharedDeadlines hands the publish fast path a context that ends requestTimeout (less at
// most one tick) from now, one context per tick for every publish in it. A timer armed and
// stopped per request (context.WithTimeout and its cancel) was about 4% of the bridge's CPU
// at 17k publishes/s; a shared one is an atomic load. Nothing needs to cancel a publish
// early: a publisher that hangs up mid-request gets its message written all the same.
type sharedDeadlines struct {
	mu  sync.Mutex
	cur atomic.Pointer[tickContext]
}

type tickContext struct {
	ctx    context.Context
	cancel context.CancelFunc // never needed: the context ends at its deadline, releasing its timer
	until  time.Time          // handed out before this
}

// get returns a context with a deadline between requestTimeout-deadlineTick and
// requestTimeout from now.
func (d *sharedDeadlines) get() context.Context {
	now := time.Now()
	if c := d.cur.Load(); c != nil && now.Before(c.until) {
		return c.ctx
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.cur.Load(); c != nil && now.Before(c.until) {
		return c.ctx
	}
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(requestTimeout))
	d.cur.Store(&tickContext{ctx: ctx, cancel: cancel, until: now.Add(deadlineTick)})
	return ctx
}
