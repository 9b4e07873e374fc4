package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// An ordered subscription is delivered by one process at a time, the holder of a lease;
// the others wait to take over when it lapses.
func leaderKey(subject, sub string) string { return "bridge:{" + subject + "}:leader:" + sub }

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

// RetryingKeys returns the partition keys of the messages waiting in the subscription's
// retry set: in an ordered subscription each is the head of its key, which stays blocked.
func (b *Broker) RetryingKeys(ctx context.Context, s *core.Subscription) ([]string, error) {
	vals, err := b.c.Do(ctx, b.c.B().Hvals().Key(retryDataKey(s.Subject, s.Name)).Build()).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("retry set of %s: %w", s.Name, classify(err))
	}
	keys := make([]string, 0, len(vals))
	for _, v := range vals {
		var rec retryRecord
		if json.Unmarshal([]byte(v), &rec) == nil && rec.Headers[core.HeaderPartitionKey] != "" {
			keys = append(keys, rec.Headers[core.HeaderPartitionKey])
		}
	}
	return keys, nil
}

// ReclaimOthers is Reclaim for an ordered subscription: it takes over entries pending
// longer than minIdle under any consumer but the caller. The caller's own pending entries
// are waiting behind their partition key on purpose; claiming them would only inflate
// their delivery counts.
func (b *Broker) ReclaimOthers(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error) {
	var out core.Reclaimed
	group := groupName(s.Name)
	type pinfo struct{ idle, count int64 }
	info := map[string]pinfo{}
	var ids []string
	// Page through the PEL in id order: the caller's own entries, possibly many, come first
	// and must not use up the page.
	start := "-"
	for page := 0; page < 64 && len(ids) < limit; page++ {
		pend, err := b.c.Do(ctx, b.c.B().Xpending().Key(s.Subject).Group(group).Idle(minIdle.Milliseconds()).
			Start(start).End("+").Count(256).Build()).ToArray()
		if isNoGroup(err) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("xpending %s: %w", s.Subject, classify(err))
		}
		for _, p := range pend {
			row, err := p.ToArray()
			if err != nil || len(row) < 4 {
				continue
			}
			id, _ := row[0].ToString()
			start = "(" + id
			if owner, _ := row[1].ToString(); owner == consumer || len(ids) == limit {
				continue
			}
			idle, _ := row[2].AsInt64()
			cnt, _ := row[3].AsInt64()
			info[id] = pinfo{idle, cnt}
			ids = append(ids, id)
		}
		if len(pend) < 256 {
			break
		}
	}
	if len(ids) == 0 {
		return out, nil
	}
	entries, err := b.c.Do(ctx, b.c.B().Xclaim().Key(s.Subject).Group(group).Consumer(consumer).
		MinIdleTime(strconv.FormatInt(minIdle.Milliseconds(), 10)).Id(ids...).Build()).ToArray()
	if err != nil {
		return out, fmt.Errorf("xclaim %s: %w", s.Subject, classify(err))
	}
	claimed := map[string]bool{}
	for _, em := range entries {
		if em.IsNil() {
			continue
		}
		e, err := em.AsXRangeEntry()
		if err != nil {
			continue
		}
		claimed[e.ID] = true
		if e.FieldValues == nil {
			out.Lost = append(out.Lost, e.ID)
			continue
		}
		m := DecodeEntry(s.Subject, e)
		m.Deliveries, m.IdleMS = int(info[e.ID].count)+1, info[e.ID].idle
		out.Messages = append(out.Messages, m)
	}
	// Ids XCLAIM did not return were claimed by someone else meanwhile, or no longer exist
	// (Redis 7 drops those from the PEL); which one is told by XRANGE.
	var missing []string
	var checks rueidis.Commands
	for _, id := range ids {
		if !claimed[id] {
			missing = append(missing, id)
			checks = append(checks, b.c.B().Xrange().Key(s.Subject).Start(id).End(id).Build())
		}
	}
	for i, r := range b.c.DoMulti(ctx, checks...) {
		if e, err := r.AsXRange(); err == nil && len(e) == 0 {
			out.Lost = append(out.Lost, missing[i])
		}
	}
	if len(out.Lost) > 0 {
		if err := b.Ack(ctx, s.Subject, s.Name, out.Lost...); err != nil {
			return out, err
		}
	}
	return out, nil
}
