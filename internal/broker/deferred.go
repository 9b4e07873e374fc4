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

// A deferred message (SPEC §10) waits in its subscription's retry set, scored by its ack
// deadline, with its record marked deferred; the lease that lets its handler settle it is
// one field of a hash, message id -> SHA-256 (hex) of the lease token the push carried.
// The lease is the message's deferral: whoever removes it (the handler's ack, nack or dead
// letter, or the engine rescheduling it after the deadline) settles it, exactly once.
func leasesKey(subject, sub string) string { return "bridge:{" + subject + "}:leases:" + sub }

// leaseLua is the lease operation of the retry and dead-letter scripts, from three ARGV at
// index i: op ("" none, "del" the message must still be deferred: its lease is taken,
// "set" defer it: ARGV[i+1] the token hash, ARGV[i+2] max_deferred). It answers 0 to go
// on, or the script's answer: -2 max_deferred reached, -3 the lease was gone (settled).
const leaseLua = `
local function leaseOp(key, id, i)
  local op = ARGV[i]
  if op == 'del' then
    if redis.call('HDEL', key, id) == 0 then return -3 end
  elseif op == 'set' then
    if redis.call('HLEN', key) >= tonumber(ARGV[i + 2]) then return -2 end
    redis.call('HSET', key, id, ARGV[i + 1])
  end
  return 0
end
`

// leaseArgs are the three lease arguments for m: a deferral when tokenHash is set, the
// taking of its lease when m is a deferred message whose deadline passed, else none.
func leaseArgs(m *core.Message, tokenHash string, maxDeferred int) []string {
	switch {
	case tokenHash != "":
		return []string{"set", tokenHash, strconv.Itoa(maxDeferred)}
	case m.Deferred:
		return []string{"del", "", ""}
	}
	return []string{"", "", ""}
}

// settleDeferredScript settles a deferred message for its handler, if the lease token is
// its delivery's. KEYS: leases, zset, data, counts, stats, attempt log, dlq. ARGV: id,
// token hash, op (ack | extend | nack | dead), due ms (extend, nack), new record (nack),
// then the attempt (see logAttemptLua), then the DLQ entry's fields (dead).
// Returns 1 done, 0 the token is not this delivery's, -3 no lease (not deferred, or settled).
var settleDeferredScript = rueidis.NewLuaScript(logAttemptLua + `
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return -3 end
if held ~= ARGV[2] then return 0 end
local op = ARGV[3]
if op == 'extend' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  return 1
end
local rest = logAttempt(KEYS[6], 6)
redis.call('HDEL', KEYS[1], ARGV[1])
if op == 'nack' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'retried', 1)
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if op == 'dead' then
  redis.call('XADD', KEYS[7], '*', unpack(ARGV, rest))
  redis.call('HINCRBY', KEYS[5], 'dead_lettered', 1)
else
  redis.call('HINCRBY', KEYS[5], 'delivered', 1)
end
return 1`)

// SettleDeferred applies a handler's settlement of deferred message id of s, after
// checking that tokenHash is the hash of its delivery's lease token: core.ErrLeaseToken
// when it is not, core.ErrSettled when the message is not (or no longer) deferred.
func (b *Broker) SettleDeferred(ctx context.Context, s *core.Subscription, id, tokenHash, process string, act core.DeferredAction) error {
	keys := []string{leasesKey(s.Subject, s.Name), retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name),
		retryCountKey(s.Subject, s.Name), statsKey(s.Subject, s.Name), attemptsKey(s.Subject, s.Name), dlqKey(s.Subject, s.Name)}
	args := []string{id, tokenHash, act.Op, strconv.FormatInt(act.Due.UnixMilli(), 10), ""}
	var rec retryRecord
	deliveries := 0
	if act.Op != "extend" {
		// The record and the delivery count, in one round trip.
		res := b.c.DoMulti(ctx,
			b.c.B().Hget().Key(retryDataKey(s.Subject, s.Name)).Field(id).Build(),
			b.c.B().Hget().Key(retryCountKey(s.Subject, s.Name)).Field(id).Build())
		raw, err := res[0].ToString()
		if err != nil {
			if rueidis.IsRedisNil(err) {
				return core.ErrSettled
			}
			return fmt.Errorf("deferred %s: %w", id, classify(err))
		}
		if err := json.Unmarshal([]byte(raw), &rec); err != nil {
			return fmt.Errorf("deferred %s: %w", id, err)
		}
		n, err := res[1].AsInt64()
		if err != nil && !rueidis.IsRedisNil(err) {
			return fmt.Errorf("deferred %s: %w", id, classify(err))
		}
		deliveries = int(n)
	}
	at := &core.Attempt{MessageID: id, Delivery: deliveries, Status: 202, Process: process}
	switch act.Op {
	case "ack":
		at.Outcome = core.OutcomeAck
	case "nack":
		rec.Deferred = false
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		args[4] = string(raw)
		at.Outcome, at.Error = core.OutcomeRetry, "nacked by its handler"
	case "dead":
		at.Outcome, at.Error = core.OutcomeDeadLetter, "dead-lettered by its handler"
	}
	if act.Op == "extend" {
		args = append(args, "0", "0")
	} else {
		args = append(args, b.attemptArgs(at)...)
	}
	if act.Op == "dead" {
		args = append(args, payloadField, rueidis.BinaryString(rec.Body))
		for k, v := range rec.Headers {
			if k != core.HeaderDeadLetterReason {
				args = append(args, headerPrefix+k, v)
			}
		}
		args = append(args, headerPrefix+core.HeaderDeadLetterReason, core.ReasonDropped, "_id", id,
			"_status", "202", "_error", at.Error, "_deliveries", strconv.Itoa(deliveries),
			"_time", strconv.FormatInt(time.Now().UnixMilli(), 10))
	}
	n, err := settleDeferredScript.Exec(ctx, b.c, keys, args).AsInt64()
	if err != nil {
		return fmt.Errorf("deferred %s: %w", id, classify(err))
	}
	switch n {
	case 0:
		return core.ErrLeaseToken
	case leaseSettled:
		return core.ErrSettled
	}
	return nil
}
