package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

var (
	// KEYS: lease. ARGV: holder, ttlMs. Returns 1 when the caller holds the lease after the call.
	leaseScript = rueidis.NewLuaScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`)
	// KEYS: lease. ARGV: holder.
	releaseLeaseScript = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)
)

// HoldLease takes or renews the delivery lease of an ordered subscription for ttl and
// reports whether holder has it.
func (b *Broker) HoldLease(ctx context.Context, s *core.Subscription, holder string, ttl time.Duration) (bool, error) {
	n, err := leaseScript.Exec(ctx, b.c, []string{leaderKey(s.Subject, s.Name)}, []string{holder, fmt.Sprint(ttl.Milliseconds())}).AsInt64()
	if err != nil {
		return false, fmt.Errorf("lease of %s: %w", s.Name, classify(err))
	}
	return n == 1, nil
}

// ReleaseLease gives the lease up if holder has it, so another process takes over at once.
func (b *Broker) ReleaseLease(ctx context.Context, s *core.Subscription, holder string) error {
	return classify(releaseLeaseScript.Exec(ctx, b.c, []string{leaderKey(s.Subject, s.Name)}, []string{holder}).Error())
}
