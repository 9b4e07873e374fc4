package broker

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// expiryBudget bounds how many entries one pass may expire per group under the hard cap:
// counting them copies entries inside Redis, and a pass must stay short.
const expiryBudget = 10000

// trimScript is one retention pass over a subject, atomic and in the subject's slot.
//
// KEYS: stream, acked samples, then the dead-letter streams, then the stats hashes of the
// subject's subscriptions. ARGV: nowMs, retentionMs, maxRetentionMs (0 = none),
// samplesTTLms, number of dead-letter streams, number of stats hashes, staleInFlightMs,
// expiry budget, then one cutoff id per dead-letter stream.
//
// The safe point is the smallest of, over every consumer group (the bridge's and any
// other): its oldest pending entry, and the entry after its last-delivered id. Entries
// before the safe point as it stood retentionMs ago are removed (XTRIM MINID, which never
// goes past the id given). With a hard cap, entries older than maxRetentionMs go even if
// a group still needs them: pending ones are acknowledged first (no reclaim finds them
// missing later) and each group's loss is counted.
//
// Returns {length after (-1: no stream, -2: not a stream), trimmed, dead letters trimmed,
// group, expired, group, expired, ...}.
var trimScript = rueidis.NewLuaScript(`
local stream, samples = KEYS[1], KEYS[2]
local now, ret, maxret, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ndlq, nstats, stale, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if ms == nil then return tonumber(id) or 0, 0 end -- "0" (the embedded server says so)
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end
local function succ(id)
  local ms, seq = parse(id)
  return string.format('%.0f-%.0f', ms, seq + 1)
end

-- Dead-letter streams first (counted), then attempt logs: one of each per subscription.
local dlqTrimmed = 0
for i = 1, ndlq do
  local n = redis.call('XTRIM', KEYS[2 + i], 'MINID', ARGV[8 + i])
  if i <= nstats then dlqTrimmed = dlqTrimmed + n end
end
-- In-flight reports of processes long gone, and their last successes (circuit breaker)
-- once older than any run of failures that matters.
for i = 1, nstats do
  local key = KEYS[2 + ndlq + i]
  local f = redis.call('HGETALL', key)
  for j = 1, #f, 2 do
    if string.sub(f[j], 1, 9) == 'inflight:' then
      local at = tonumber(string.match(f[j+1], ':(%d+)$'))
      if at == nil or at < now - stale then redis.call('HDEL', key, f[j]) end
    elseif string.sub(f[j], 1, 5) == 'okat:' then
      local at = tonumber(f[j+1])
      if at == nil or at < now - 86400000 then redis.call('HDEL', key, f[j]) end
    end
  end
end

local t = redis.call('TYPE', stream)['ok']
if t == 'none' then return {-1, 0, dlqTrimmed} end
if t ~= 'stream' then return {-2, 0, dlqTrimmed} end

local safe = string.format('%.0f-0', now)
local groups = redis.call('XINFO', 'GROUPS', stream)
local info = {}
for _, g in ipairs(groups) do
  local name, pending, last
  for j = 1, #g, 2 do
    if g[j] == 'name' then name = g[j+1]
    elseif g[j] == 'pending' then pending = g[j+1]
    elseif g[j] == 'last-delivered-id' then last = g[j+1] end
  end
  local bound = succ(last)
  if pending > 0 then
    local p = redis.call('XPENDING', stream, name)
    if p[2] and less(p[2], bound) then bound = p[2] end
  end
  if less(bound, safe) then safe = bound end
  info[#info+1] = {name, last}
end

redis.call('ZADD', samples, 'NX', now, safe)
local old = redis.call('ZREVRANGEBYSCORE', samples, now - ret, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
local minid = nil
if #old > 0 then
  minid = old[1]
  if less(safe, minid) then minid = safe end
  redis.call('ZREMRANGEBYSCORE', samples, '-inf', '(' .. old[2])
end
redis.call('PEXPIRE', samples, ttl)

local out = {0, 0, dlqTrimmed}
if maxret > 0 and now > maxret then
  local cap = string.format('%.0f-0', now - maxret)
  local last_before = string.format('%.0f-18446744073709551615', now - maxret - 1)
  -- Only a stream whose oldest entry is past the cap has anything to expire.
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #oldest > 0 and less(oldest[1][1], cap) and (minid == nil or less(minid, cap)) then
    -- The whole cap may be too much for one pass: stop where a group's budget ends.
    for _, g in ipairs(info) do
      local name, last = g[1], g[2]
      local pend = redis.call('XPENDING', stream, name, '-', last_before, budget)
      if #pend == budget then
        local b = succ(pend[#pend][1])
        if less(b, cap) then cap = b end
      else
        local n, start = #pend, '(' .. last
        while n < budget do
          local e = redis.call('XRANGE', stream, start, '(' .. cap, 'COUNT', math.min(100, budget - n))
          if #e == 0 then break end
          n = n + #e
          start = '(' .. e[#e][1]
          if n >= budget then
            local b = succ(e[#e][1])
            if less(b, cap) then cap = b end
          end
        end
      end
    end
    last_before = nil
    for _, g in ipairs(info) do
      local name, last = g[1], g[2]
      local n = 0
      local pend = redis.call('XPENDING', stream, name, '-', '+', budget)
      for _, p in ipairs(pend) do
        if less(p[1], cap) then
          redis.call('XACK', stream, name, p[1])
          n = n + 1
        end
      end
      local start = '(' .. last
      while true do
        local e = redis.call('XRANGE', stream, start, '(' .. cap, 'COUNT', 100)
        if #e == 0 then break end
        n = n + #e
        start = '(' .. e[#e][1]
      end
      if n > 0 then
        out[#out+1] = name
        out[#out+1] = n
      end
    end
    minid = cap
  end
end

if minid ~= nil then out[2] = redis.call('XTRIM', stream, 'MINID', minid) end
out[1] = redis.call('XLEN', stream)
if #out > 3 then
  -- Redis does not correct a group's entries-read when a trim removes entries it never
  -- read, so its lag would stay too high for good. A group whose last-delivered id is
  -- before what is left has every entry left still to read: say so.
  local ok, sinfo = pcall(redis.call, 'XINFO', 'STREAM', stream)
  if ok then
    local added, first = nil, nil
    for j = 1, #sinfo, 2 do
      if sinfo[j] == 'entries-added' then added = sinfo[j+1] end
      if sinfo[j] == 'first-entry' and type(sinfo[j+1]) == 'table' then first = sinfo[j+1][1] end
    end
    if added ~= nil then
      for _, g in ipairs(info) do
        if first == nil or less(g[2], first) then
          pcall(redis.call, 'XGROUP', 'SETID', stream, g[1], g[2], 'ENTRIESREAD', added - out[1])
        end
      end
    end
  end
end
return out`)

// staleInFlight is how old a process's in-flight report in a stats hash may get before a
// retention pass removes it (the process is long gone).
const staleInFlight = time.Hour

// Trim runs one retention pass over subject (see trimScript).
func (b *Broker) Trim(ctx context.Context, subject string, p core.TrimParams) (core.TrimResult, error) {
	var out core.TrimResult
	now := p.Now.UnixMilli()
	keys := make([]string, 2, 2+3*len(p.Subscriptions))
	keys[0], keys[1] = subject, ackedKey(subject)
	args := []string{
		strconv.FormatInt(now, 10), strconv.FormatInt(p.Retention.Milliseconds(), 10),
		strconv.FormatInt(p.MaxRetention.Milliseconds(), 10),
		// Samples are needed for one retention; a subject left alone takes its own with it.
		strconv.FormatInt((2*p.Retention + 10*time.Minute).Milliseconds(), 10),
		strconv.Itoa(2 * len(p.Subscriptions)), strconv.Itoa(len(p.Subscriptions)),
		strconv.FormatInt(staleInFlight.Milliseconds(), 10), strconv.Itoa(expiryBudget),
	}
	for _, s := range p.Subscriptions {
		keys = append(keys, dlqKey(subject, s.Name))
		args = append(args, strconv.FormatInt(max(now-time.Duration(s.DLQRetention).Milliseconds(), 0), 10)+"-0")
	}
	attemptsFrom := strconv.FormatInt(max(now-p.AttemptRetention.Milliseconds(), 0), 10) + "-0"
	for _, s := range p.Subscriptions {
		keys = append(keys, attemptsKey(subject, s.Name))
		args = append(args, attemptsFrom)
	}
	for _, s := range p.Subscriptions {
		keys = append(keys, statsKey(subject, s.Name))
	}
	arr, err := trimScript.Exec(ctx, b.c, keys, args).ToArray()
	if err != nil {
		return out, fmt.Errorf("trim %s: %w", subject, classify(err))
	}
	if len(arr) < 3 {
		return out, fmt.Errorf("trim %s: unexpected reply", subject)
	}
	out.Length, _ = arr[0].AsInt64()
	out.Trimmed, _ = arr[1].AsInt64()
	out.DeadLettersTrimmed, _ = arr[2].AsInt64()
	out.Exists = out.Length >= 0
	if !out.Exists {
		out.Length = 0
	}
	for i := 3; i+1 < len(arr); i += 2 {
		g, _ := arr[i].ToString()
		n, _ := arr[i+1].AsInt64()
		if out.Expired == nil {
			out.Expired = map[string]int64{}
		}
		out.Expired[g] = n
	}
	return out, nil
}

// AddExpired counts n entries the subscription lost to the hard retention cap.
func (b *Broker) AddExpired(ctx context.Context, s *core.Subscription, n int64) error {
	keys := []string{markerKey(s.Subject, s.Name), statsKey(s.Subject, s.Name)}
	args := []string{s.Incarnation(), "1", "expired", strconv.FormatInt(n, 10)}
	if err := checkGone(addStatsScript.Exec(ctx, b.c, keys, args)); err != nil {
		return fmt.Errorf("stats of %s: %w", s.Name, classify(err))
	}
	return nil
}

// RememberSubjects adds subjects the bridge published to to the shared list, so every
// process (and every later one) trims their streams.
func (b *Broker) RememberSubjects(ctx context.Context, subjects []string) error {
	if len(subjects) == 0 {
		return nil
	}
	err := b.c.Do(ctx, b.c.B().Sadd().Key(subjectsKey).Member(subjects...).Build()).Error()
	if err != nil {
		return fmt.Errorf("remember subjects: %w", classify(err))
	}
	return nil
}

// KnownSubjects returns the subjects the bridge published to.
func (b *Broker) KnownSubjects(ctx context.Context) ([]string, error) {
	all, err := b.c.Do(ctx, b.c.B().Smembers().Key(subjectsKey).Build()).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("known subjects: %w", classify(err))
	}
	return all, nil
}

// ForgetSubject drops a subject whose stream is gone from the shared list.
func (b *Broker) ForgetSubject(ctx context.Context, subject string) error {
	return classify(b.c.Do(ctx, b.c.B().Srem().Key(subjectsKey).Member(subject).Build()).Error())
}
