package delivery

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// pubsubQueue bounds the Pub/Sub messages a subscription holds while its push slots are
// busy; past it, messages are dropped and counted (Pub/Sub is at-most-once).
const pubsubQueue = 1024

// hub keeps one Redis subscription per distinct channel, pattern or sharded channel, and
// hands each message to every local Pub/Sub subscription of it. On RESP3 servers they all
// share the client's connection.
type hub struct {
	e  *Engine
	mu sync.Mutex
	// by channel key, the receiver and the subs it feeds
	chans map[hubKey]*hubChan
	wg    sync.WaitGroup
}

type hubKey struct {
	kind    core.PubSubKind
	channel string
}

type hubChan struct {
	cancel context.CancelFunc
	mu     sync.RWMutex
	subs   map[*sub]struct{}
}

func newHub(e *Engine) *hub { return &hub{e: e, chans: map[hubKey]*hubChan{}} }

func hubKeyOf(s *core.Subscription) hubKey {
	switch {
	case s.PubSubMode == core.PubSubSharded:
		return hubKey{core.SubscribeSharded, s.Subject}
	case s.Pattern:
		return hubKey{core.SubscribePattern, s.Subject}
	}
	return hubKey{core.SubscribeChannel, s.Subject}
}

// add starts feeding r with its channel's messages.
func (h *hub) add(r *sub) {
	k := hubKeyOf(r.cfg)
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.chans[k]
	if c == nil {
		ctx, cancel := context.WithCancel(context.Background())
		c = &hubChan{cancel: cancel, subs: map[*sub]struct{}{}}
		h.chans[k] = c
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.receive(ctx, k, c)
		}()
	}
	c.mu.Lock()
	c.subs[r] = struct{}{}
	c.mu.Unlock()
}

// remove stops feeding r; the last sub of a channel unsubscribes it.
func (h *hub) remove(r *sub) {
	k := hubKeyOf(r.cfg)
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.chans[k]
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.subs, r)
	empty := len(c.subs) == 0
	c.mu.Unlock()
	if empty {
		c.cancel()
		delete(h.chans, k)
	}
}

// close unsubscribes everything and waits for the receivers.
func (h *hub) close() {
	h.mu.Lock()
	for k, c := range h.chans {
		c.cancel()
		delete(h.chans, k)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// receive keeps one channel subscribed, resubscribing after a lost connection.
func (h *hub) receive(ctx context.Context, k hubKey, c *hubChan) {
	var errs errThrottle
	log := h.e.log.With(zap.String("channel", k.channel))
	for ctx.Err() == nil {
		err := h.e.b.Receive(ctx, k.kind, k.channel, func(m core.Message) {
			if strings.HasPrefix(m.Subject, core.ReservedPrefix) {
				return // the bridge's own channels (a pattern such as "*" matches them too)
			}
			c.mu.RLock()
			for r := range c.subs {
				r.offer(m)
			}
			c.mu.RUnlock()
		})
		if ctx.Err() != nil {
			return
		}
		errs.log(log, "Pub/Sub subscription lost; resubscribing", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// offer queues a Pub/Sub message for r without blocking the connection's reader.
func (r *sub) offer(m core.Message) {
	select {
	case r.pubsubQ <- m:
		r.kick()
	default:
		if n := r.pubsubDrop.Add(1); n == 1 || n%1000 == 0 {
			r.log.Warn("Pub/Sub messages dropped: every push slot busy and the queue full (at-most-once)", zap.Int64("dropped", n))
		}
	}
}

// pubsubRound pushes queued Pub/Sub messages, each claimed first so that only one bridge
// process pushes it.
func (r *sub) pubsubRound() bool {
	free := r.slots()
	handed := 0
	for handed < free {
		var m core.Message
		select {
		case m = <-r.pubsubQ:
		default:
			return false
		}
		ctx, cancel := r.ctx()
		mine, err := r.e.b.ClaimPubSub(ctx, r.cfg, m.ID)
		cancel()
		if err != nil || !mine {
			// Another process pushes it; if Redis cannot say, at-most-once means skip.
			continue
		}
		r.dispatch(m)
		handed++
	}
	r.saturated.Store(len(r.pubsubQ) > 0)
	return false
}
