package broker

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// A leased set holds work that comes due at a time: a zset (member -> due, ms) and a hash
// (member -> record), and optionally a hash of how often each member was handed out. The
// subscriptions' retry sets and the scheduled publishes are leased sets. Claiming a due
// member moves its score to the end of a lease instead of removing it, so a process that
// dies holding it lets it come due again after the lease: work is never lost, at worst done
// twice.
//
// claimLeasedScript claims up to ARGV[3] members due at ARGV[1] until ARGV[2].
// KEYS: zset, records, [counts]. Returns the score of the earliest member left ("" when
// none), then per claimed member: id, record, and the new count when KEYS[3] is given.
// A member without a record is dropped (settled meanwhile by someone else).
var claimLeasedScript = rueidis.NewLuaScript(`
local counted = KEYS[3] ~= nil
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {''}
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out+1] = id
    out[#out+1] = rec
    if counted then out[#out+1] = tostring(redis.call('HINCRBY', KEYS[3], id, 1)) end
  else
    redis.call('ZREM', KEYS[1], id)
    if counted then redis.call('HDEL', KEYS[3], id) end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then out[1] = first[2] end
return out`)

// leased is one member handed out by claimLeased.
type leased struct {
	ID     string
	Record string
	// Count is how often it was handed out, this time included (counted sets only).
	Count int
}

// claimLeased claims up to limit members of a leased set that are due at now, until
// now+lease. keys are the zset, the records and, for a counted set, the counts. next is
// when the earliest member left comes due (zero when none is left).
func (b *Broker) claimLeased(ctx context.Context, keys []string, now time.Time, lease time.Duration, limit int) (items []leased, next time.Time, err error) {
	args := []string{strconv.FormatInt(now.UnixMilli(), 10), strconv.FormatInt(now.Add(lease).UnixMilli(), 10), strconv.Itoa(limit)}
	vals, err := claimLeasedScript.Exec(ctx, b.c, keys, args).AsStrSlice()
	if err != nil || len(vals) == 0 {
		return nil, next, err
	}
	if ms, err := strconv.ParseFloat(vals[0], 64); err == nil {
		next = time.UnixMilli(int64(ms))
	}
	step := 2
	if len(keys) == 3 {
		step = 3
	}
	vals = vals[1:]
	items = make([]leased, 0, len(vals)/step)
	for i := 0; i+step-1 < len(vals); i += step {
		it := leased{ID: vals[i], Record: vals[i+1]}
		if step == 3 {
			it.Count, _ = strconv.Atoi(vals[i+2])
		}
		items = append(items, it)
	}
	return items, next, nil
}
