package broker

import (
	"context"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// CheckIdle looks, for each subscription, for work that nothing would otherwise signal:
// entries a dead consumer left pending past the visibility timeout (streams), or a
// processing list whose consumer stopped beating (reliable lists), and, when asked, the
// earliest retry (due, or due later, while the process that scheduled it is gone and keeps
// no timer for it any more). One or two commands
// per subscription, all pipelined in one round trip: the engine runs it for idle
// subscriptions now and then.
func (b *Broker) CheckIdle(ctx context.Context, checks []core.IdleCheckRequest, now time.Time) []core.IdleCheck {
	out := make([]core.IdleCheck, len(checks))
	cmds := make(rueidis.Commands, 0, 2*len(checks))
	// Where each subscription's replies are: its retry check and its stale check (-1: none).
	retryAt, staleAt := make([]int, len(checks)), make([]int, len(checks))
	for i, c := range checks {
		s := c.Sub
		retryAt[i], staleAt[i] = -1, -1
		if c.Retries {
			retryAt[i] = len(cmds)
			cmds = append(cmds, b.c.B().Zrange().Key(retryKey(s.Subject, s.Name)).Min("0").Max("0").Withscores().Build())
		}
		vt := time.Duration(s.VisibilityTimeout)
		switch s.Transport {
		case core.TransportStream:
			staleAt[i] = len(cmds)
			cmds = append(cmds, b.c.B().Xpending().Key(s.Subject).Group(groupName(s.Name)).Idle(vt.Milliseconds()).
				Start("-").End("+").Count(1).Build())
		case core.TransportList:
			if s.ListMode != core.ListSimple {
				staleAt[i] = len(cmds)
				cutoff := strconv.FormatInt(now.Add(-vt).UnixMilli()-1, 10)
				cmds = append(cmds, b.c.B().Zrangebyscore().Key(consumersKey(s.Subject, s.Name)).Min("-inf").Max(cutoff).Limit(0, 1).Build())
			}
		}
	}
	res := b.c.DoMulti(ctx, cmds...)
	for i, req := range checks {
		c := &out[i]
		if j := retryAt[i]; j >= 0 {
			first, err := res[j].AsZScores()
			c.Err = classify(err)
			if len(first) > 0 {
				c.NextRetry = time.UnixMilli(int64(first[0].Score))
				c.RetryDue = !c.NextRetry.After(now)
			}
		}
		j := staleAt[i]
		if j < 0 {
			continue
		}
		switch req.Sub.Transport {
		case core.TransportStream:
			pend, err := res[j].ToArray()
			switch {
			case isNoGroup(err):
				c.GroupMissing = true
			case err != nil && !rueidis.IsRedisNil(err) && c.Err == nil:
				c.Err = classify(err)
			}
			c.Stale = len(pend) > 0
		case core.TransportList:
			dead, err := res[j].AsStrSlice()
			if err != nil && c.Err == nil {
				c.Err = classify(err)
			}
			c.Stale = len(dead) > 0
		}
	}
	return out
}
