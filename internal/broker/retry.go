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

// retryRecord is how a message waits in a subscription's retry set. The delivery count
// lives beside it in a hash so the claim script can bump it without decoding JSON.
type retryRecord struct {
	ID      string            `json:"i"`
	Body    []byte            `json:"b"`
	Headers map[string]string `json:"h,omitempty"`
	// Deferred marks a message a webhook took to settle later: when it comes due, its ack
	// deadline has passed (a failed attempt), it is not pushed again at once.
	Deferred bool `json:"d,omitempty"`
	// The failure context the next push carries (SPEC §10).
	LastStatus   int    `json:"ls,omitempty"`
	LastError    string `json:"le,omitempty"`
	FirstAttempt int64  `json:"fa,omitempty"` // unix ms
}

// The retry set of a subscription is a ZSET scored by due time (ms) plus two hashes keyed
// by message id: the record and the deliveries made so far. Claiming a due member moves
// its score to now+lease, so a process that dies holding it lets it come due again after
// the lease (the visibility timeout) instead of losing it.
// settleLua removes a message from where it was delivered from, by mode.
const settleLua = `
local function settle(mode, src, zset, data, counts, lcounts, group, handle, id)
  if mode == 'stream' then
    redis.call('XACK', src, group, handle)
  elseif mode == 'retry' then
    redis.call('ZREM', zset, id)
    redis.call('HDEL', data, id)
    redis.call('HDEL', counts, id)
  elseif mode == 'list' then
    redis.call('LREM', src, 1, handle)
    redis.call('HDEL', lcounts, id)
  end
end
`

var (
	// Settling the original is one of: XACK (stream), ZREM+HDEL from the retry set (retry),
	// LREM from the processing list plus its delivery count (list), or nothing (none).
	// KEYS: marker, zset, data, counts, source (stream or processing list), list counts,
	// attempt log, leases. ARGV: incarnation, id, dueMs, record ("" keeps the stored one),
	// deliveries, mode, group, handle, then the attempt (see logAttemptLua), then the lease
	// operation (see leaseLua).
	retryScript = rueidis.NewLuaScript(settleLua + logAttemptLua + markerLua + leaseLua + `
local lease = leaseOp(KEYS[8], ARGV[2], 11 + tonumber(ARGV[10]))
if lease ~= 0 then return lease end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[6] ~= 'retry' then settle(ARGV[6], KEYS[5], KEYS[2], KEYS[3], KEYS[4], KEYS[6], ARGV[7], ARGV[8], ARGV[2]) end
logAttempt(KEYS[7], 9)
return 1`)
	// KEYS: zset, data, counts. ARGV: ids.
	ackRetryScript = rueidis.NewLuaScript(`
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return #ARGV`)
)

func (b *Broker) retryKeys(s *core.Subscription) []string {
	return []string{retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)}
}

// Retry schedules m for another delivery to s at due. The copy is written and the original
// acknowledged in one script, so a crash can neither lose nor duplicate it; the retry is
// scoped to this subscription and never reaches another group on the same stream. The
// attempt that failed (nil: none) is logged by the same script; m's LastStatus and
// LastError are the failure context the next push carries.
func (b *Broker) Retry(ctx context.Context, s *core.Subscription, m *core.Message, due time.Time, attempt *core.Attempt) error {
	// The record is written on every retry: it carries the failure context of the attempt
	// that just failed.
	rr := retryRecord{ID: m.ID, Body: m.Body, Headers: m.Headers, FirstAttempt: m.FirstAttempt.UnixMilli()}
	if m.FirstAttempt.IsZero() {
		rr.FirstAttempt = time.Now().UnixMilli()
		if attempt != nil {
			rr.FirstAttempt -= attempt.Latency.Milliseconds()
		}
	}
	if err := b.hold(ctx, s, m, rr, due, attempt, leaseArgs(m, "", 0)); err != nil {
		return fmt.Errorf("schedule retry of %s: %w", m.ID, err)
	}
	return nil
}

// Defer holds m for s until deadline, the webhook having taken it to settle later with the
// lease token whose SHA-256 is tokenHash (SPEC §10). Like a retry, the copy is written and
// the original settled in one script, so the message holds no push slot; at the deadline it
// comes due as a failed attempt. core.ErrDeferFull when s already holds maxDeferred.
func (b *Broker) Defer(ctx context.Context, s *core.Subscription, m *core.Message, deadline time.Time, tokenHash string, maxDeferred int, attempt *core.Attempt) error {
	rr := retryRecord{ID: m.ID, Body: m.Body, Headers: m.Headers, FirstAttempt: m.FirstAttempt.UnixMilli(), Deferred: true}
	if m.FirstAttempt.IsZero() {
		rr.FirstAttempt = time.Now().UnixMilli()
	}
	if err := b.hold(ctx, s, m, rr, deadline, attempt, leaseArgs(m, tokenHash, maxDeferred)); err != nil {
		return fmt.Errorf("defer %s: %w", m.ID, err)
	}
	return nil
}

// hold puts m in s's retry set as rr until due, settling it where it was delivered from,
// logging attempt and applying the lease operation, in one script (retryScript).
func (b *Broker) hold(ctx context.Context, s *core.Subscription, m *core.Message, rr retryRecord, due time.Time, attempt *core.Attempt, lease []string) error {
	rr.LastStatus, rr.LastError = m.LastStatus, m.LastError
	raw, err := json.Marshal(rr)
	if err != nil {
		return err
	}
	mode, src := settleMode(s, m)
	keys := []string{markerKey(s.Subject, s.Name), retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name),
		retryCountKey(s.Subject, s.Name), src, listCountKey(s.Subject, s.Name), attemptsKey(s.Subject, s.Name), leasesKey(s.Subject, s.Name)}
	args := []string{s.Incarnation(), m.ID, strconv.FormatInt(due.UnixMilli(), 10), string(raw), strconv.Itoa(m.Deliveries), mode, groupName(s.Name), m.EntryID}
	args = append(args, b.attemptArgs(attempt)...)
	args = append(args, lease...)
	return classify(checkGone(retryScript.Exec(ctx, b.c, keys, args)))
}

// settleMode says how the scripts settle m, and which key holds it.
func settleMode(s *core.Subscription, m *core.Message) (mode, src string) {
	switch m.Origin {
	case core.FromStream:
		return "stream", s.Subject
	case core.FromRetry:
		return "retry", s.Subject
	case core.FromList:
		return "list", m.Queue
	}
	// No key to settle; the subject keeps the script's keys in the subscription's slot.
	return "none", retryKey(s.Subject, s.Name)
}

// ClaimRetries leases up to limit due retries of s to the caller until now+lease. next is
// when the earliest message left in the set comes due (zero when the set is empty).
func (b *Broker) ClaimRetries(ctx context.Context, s *core.Subscription, now time.Time, lease time.Duration, limit int) (msgs []core.Message, next time.Time, err error) {
	items, next, err := b.claimLeased(ctx, b.retryKeys(s), now, lease, limit)
	if err != nil {
		return nil, next, fmt.Errorf("claim retries of %s: %w", s.Name, classify(err))
	}
	msgs = make([]core.Message, 0, len(items))
	for _, it := range items {
		var rec retryRecord
		if err := json.Unmarshal([]byte(it.Record), &rec); err != nil {
			return nil, next, fmt.Errorf("retry record %s: %w", it.ID, err)
		}
		m := core.Message{
			ID: it.ID, Subject: s.Subject, Origin: core.FromRetry,
			Body: rec.Body, Headers: rec.Headers, Deliveries: it.Count,
			LastStatus: rec.LastStatus, LastError: rec.LastError, Deferred: rec.Deferred,
		}
		if rec.FirstAttempt > 0 {
			m.FirstAttempt = time.UnixMilli(rec.FirstAttempt)
		}
		msgs = append(msgs, m)
	}
	return msgs, next, nil
}

// AckRetries removes settled messages from the subscription's retry set.
func (b *Broker) AckRetries(ctx context.Context, s *core.Subscription, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := ackRetryScript.Exec(ctx, b.c, b.retryKeys(s), ids).Error(); err != nil {
		return fmt.Errorf("ack retries of %s: %w", s.Name, classify(err))
	}
	return nil
}
