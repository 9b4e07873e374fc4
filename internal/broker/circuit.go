package broker

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// A subscription's circuit breaker (SPEC §10) is one hash in its subject's slot, shared by
// every process; no key means closed with no failure counted:
//
//	state     "open" | "half_open"
//	fails     consecutive failed attempts (while closed)
//	streak    unix ms of the first failure of the current run
//	since     unix ms the circuit opened
//	until     unix ms a probe may be sent (open)
//	cooldown  the current cooldown, ms (doubles after a failed probe)
//	probe     the consumer holding the probe (half_open), probe_until its lease
//
// A success resets the run: each process says when it last had one, in its stats field
// "okat:<consumer>" (written with its counters, about once a second, at no extra cost) and
// in the failure call itself (its own, exactly).
func circuitKey(subject, sub string) string { return "bridge:{" + subject + "}:circuit:" + sub }

// okAtPrefix is the stats field holding a process's latest success (unix ms).
const okAtPrefix = "okat:"

var (
	// KEYS: circuit, stats. ARGV: now, this process's latest success (ms, 0 none),
	// threshold, cooldown ms, max cooldown ms, probe (1 if this push was the probe),
	// consumer. Returns {verdict, until}: "counted" (closed, the attempt counts), "opened"
	// (this failure opened it; it counts), "open" (already open: the attempt must not
	// count), "reopened" (the probe failed: open again, doubled cooldown).
	circuitFailScript = rueidis.NewLuaScript(`
local now = tonumber(ARGV[1])
local st = redis.call('HGET', KEYS[1], 'state')
if st then
  if st == 'half_open' and ARGV[6] == '1' and redis.call('HGET', KEYS[1], 'probe') == ARGV[7] then
    local cd = math.min(2 * tonumber(redis.call('HGET', KEYS[1], 'cooldown') or ARGV[4]), tonumber(ARGV[5]))
    redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + cd, 'cooldown', cd, 'probe', '', 'probe_until', 0)
    return {'reopened', now + cd}
  end
  local u = tonumber(redis.call('HGET', KEYS[1], st == 'open' and 'until' or 'probe_until')) or now
  return {'open', u}
end
local ok = tonumber(ARGV[2])
local stats = redis.call('HGETALL', KEYS[2])
for i = 1, #stats, 2 do
  if string.sub(stats[i], 1, 5) == 'okat:' then ok = math.max(ok, tonumber(stats[i + 1]) or 0) end
end
local streak = tonumber(redis.call('HGET', KEYS[1], 'streak')) or 0
local fails = tonumber(redis.call('HGET', KEYS[1], 'fails')) or 0
if fails == 0 or ok >= streak then
  fails, streak = 0, now
end
fails = fails + 1
if fails >= tonumber(ARGV[3]) then
  local cd = tonumber(ARGV[4])
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'open', 'since', now, 'until', now + cd, 'cooldown', cd, 'fails', fails)
  return {'opened', now + cd}
end
redis.call('HSET', KEYS[1], 'fails', fails, 'streak', streak)
return {'counted', 0}`)

	// KEYS: circuit. ARGV: now, consumer, lease ms. Grants the probe to the caller when the
	// cooldown has passed (or the holder's lease lapsed, or the caller holds it). Returns
	// {granted (0|1), state ("closed" | "open" | "half_open"), until}.
	circuitProbeScript = rueidis.NewLuaScript(`
local now = tonumber(ARGV[1])
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {0, 'closed', 0} end
if st == 'open' then
  local u = tonumber(redis.call('HGET', KEYS[1], 'until')) or 0
  if now < u then return {0, 'open', u} end
elseif st == 'half_open' then
  local holder = redis.call('HGET', KEYS[1], 'probe')
  local lease = tonumber(redis.call('HGET', KEYS[1], 'probe_until')) or 0
  if holder ~= ARGV[2] and now < lease then return {0, 'half_open', lease} end
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', ARGV[2], 'probe_until', now + tonumber(ARGV[3]))
return {1, 'half_open', now + tonumber(ARGV[3])}`)

	// KEYS: circuit. ARGV: consumer. Closes the circuit when the caller holds the probe:
	// returns 1 when it did, 0 when it was not the caller's to close.
	circuitCloseScript = rueidis.NewLuaScript(`
if redis.call('HGET', KEYS[1], 'state') == 'half_open' and redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0`)
)

// CircuitFailure counts one failed attempt of s. It reports what the circuit made of it
// and, when open, until when no push may go (a probe may go then).
func (b *Broker) CircuitFailure(ctx context.Context, s *core.Subscription, consumer string, okAt time.Time, probe bool, now time.Time) (core.CircuitVerdict, time.Time, error) {
	ok := int64(0)
	if !okAt.IsZero() {
		ok = okAt.UnixMilli()
	}
	p := "0"
	if probe {
		p = "1"
	}
	cb := s.CircuitBreaker
	args := []string{strconv.FormatInt(now.UnixMilli(), 10), strconv.FormatInt(ok, 10), strconv.Itoa(cb.Failures),
		strconv.FormatInt(time.Duration(cb.Cooldown).Milliseconds(), 10), strconv.FormatInt(core.MaxCircuitCooldown.Milliseconds(), 10), p, consumer}
	arr, err := circuitFailScript.Exec(ctx, b.c, []string{circuitKey(s.Subject, s.Name), statsKey(s.Subject, s.Name)}, args).ToArray()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("circuit of %s: %w", s.Name, classify(err))
	}
	if len(arr) != 2 {
		return "", time.Time{}, fmt.Errorf("circuit of %s: unexpected reply", s.Name)
	}
	v, _ := arr[0].ToString()
	until, _ := arr[1].AsInt64()
	return core.CircuitVerdict(v), msTime(until), nil
}

// ClaimProbe asks to send the probe of s's open circuit. It answers whether the caller may,
// the circuit's state, and until when it stays so (the cooldown's or the probe lease's end).
func (b *Broker) ClaimProbe(ctx context.Context, s *core.Subscription, consumer string, lease time.Duration, now time.Time) (bool, core.CircuitState, time.Time, error) {
	args := []string{strconv.FormatInt(now.UnixMilli(), 10), consumer, strconv.FormatInt(lease.Milliseconds(), 10)}
	arr, err := circuitProbeScript.Exec(ctx, b.c, []string{circuitKey(s.Subject, s.Name)}, args).ToArray()
	if err != nil {
		return false, "", time.Time{}, fmt.Errorf("circuit of %s: %w", s.Name, classify(err))
	}
	if len(arr) != 3 {
		return false, "", time.Time{}, fmt.Errorf("circuit of %s: unexpected reply", s.Name)
	}
	granted, _ := arr[0].AsInt64()
	st, _ := arr[1].ToString()
	until, _ := arr[2].AsInt64()
	return granted == 1, core.CircuitState(st), msTime(until), nil
}

// CloseCircuit closes s's circuit after the caller's probe succeeded; false when the
// probe was not the caller's (another process closed or holds it).
func (b *Broker) CloseCircuit(ctx context.Context, s *core.Subscription, consumer string) (bool, error) {
	n, err := circuitCloseScript.Exec(ctx, b.c, []string{circuitKey(s.Subject, s.Name)}, []string{consumer}).AsInt64()
	if err != nil {
		return false, fmt.Errorf("circuit of %s: %w", s.Name, classify(err))
	}
	return n == 1, nil
}

// AnnounceCircuit tells every bridge process to read the circuit of subscription name again.
func (b *Broker) AnnounceCircuit(ctx context.Context, name string) error {
	return classify(b.c.Do(ctx, b.c.B().Publish().Channel(ChangesChannel).Message("circuit:"+name).Build()).Error())
}

// Circuit reads s's circuit as the stats show it.
func (b *Broker) Circuit(ctx context.Context, s *core.Subscription) (core.Circuit, error) {
	f, err := b.c.Do(ctx, b.c.B().Hgetall().Key(circuitKey(s.Subject, s.Name)).Build()).AsStrMap()
	if err != nil && !rueidis.IsRedisNil(err) {
		return core.Circuit{}, fmt.Errorf("circuit of %s: %w", s.Name, classify(err))
	}
	return decodeCircuit(f), nil
}

func decodeCircuit(f map[string]string) core.Circuit {
	c := core.Circuit{State: core.CircuitClosed}
	num := func(k string) int64 { n, _ := strconv.ParseInt(f[k], 10, 64); return n }
	c.Failures = int(num("fails"))
	switch f["state"] {
	case "open":
		c.State, c.Until = core.CircuitOpen, msTime(num("until"))
	case "half_open":
		c.State, c.Until = core.CircuitHalfOpen, msTime(num("probe_until"))
	}
	if c.State != core.CircuitClosed {
		c.Since = msTime(num("since"))
	}
	return c
}

func msTime(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
