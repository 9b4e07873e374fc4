package broker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// SubscriptionStats reads lag and pending (XINFO GROUPS), the retry set size and the DLQ size.
func (b *Broker) SubscriptionStats(ctx context.Context, s *core.Subscription) (core.GroupStats, error) {
	if s.Transport == core.TransportList || s.Transport == core.TransportPubSub {
		return b.otherStats(ctx, s)
	}
	var st core.GroupStats
	res := b.c.DoMulti(ctx,
		b.c.B().XinfoGroups().Key(s.Subject).Build(),
		b.c.B().Zcard().Key(retryKey(s.Subject, s.Name)).Build(),
		b.c.B().Xlen().Key(dlqKey(s.Subject, s.Name)).Build(),
		b.c.B().Hgetall().Key(statsKey(s.Subject, s.Name)).Build(),
		b.c.B().Xlen().Key(s.Subject).Build(),
		b.c.B().Xlen().Key(attemptsKey(s.Subject, s.Name)).Build(),
		b.c.B().Hgetall().Key(circuitKey(s.Subject, s.Name)).Build(),
		b.c.B().Hlen().Key(leasesKey(s.Subject, s.Name)).Build(),
	)
	groups, err := res[0].ToArray()
	if err != nil && !isNoKey(err) && !rueidis.IsRedisNil(err) {
		re, ok := rueidis.IsRedisErr(err)
		if !ok || !strings.Contains(re.Error(), "no such key") {
			return st, fmt.Errorf("xinfo groups %s: %w", s.Subject, classify(err))
		}
	}
	for _, g := range groups {
		kv, err := g.AsMap()
		if err != nil {
			continue
		}
		name, pending, lag := kv["name"], kv["pending"], kv["lag"]
		if n, _ := name.ToString(); n != groupName(s.Name) {
			continue
		}
		st.Pending, _ = pending.AsInt64()
		// Redis leaves lag (and entries-read) null when it cannot tell, after a SETID or a
		// deletion; the embedded server always reports the stream's length. Count instead.
		if read := kv["entries-read"]; read.IsNil() || lag.IsNil() {
			ldi := kv["last-delivered-id"]
			last, _ := ldi.ToString()
			st.Lag, err = b.countAfter(ctx, s.Subject, last)
			if err != nil {
				return st, err
			}
		} else {
			st.Lag, _ = lag.AsInt64()
		}
	}
	st.Retrying, _ = res[1].AsInt64()
	st.DLQSize, _ = res[2].AsInt64()
	st.StreamLength, _ = res[4].AsInt64()
	st.AttemptLog, _ = res[5].AsInt64()
	cf, _ := res[6].AsStrMap()
	st.Circuit = decodeCircuit(cf)
	st.Deferred, _ = res[7].AsInt64()
	fields, _ := res[3].AsStrMap()
	st.Shared = decodeShared(fields, time.Now())
	return st, nil
}

// otherStats are the figures of list and Pub/Sub subscriptions: a list's lag is its length
// and its pending messages are those in the processing lists; Pub/Sub keeps nothing.
func (b *Broker) otherStats(ctx context.Context, s *core.Subscription) (core.GroupStats, error) {
	var st core.GroupStats
	cmds := rueidis.Commands{
		b.c.B().Hgetall().Key(statsKey(s.Subject, s.Name)).Build(),
		b.c.B().Zcard().Key(retryKey(s.Subject, s.Name)).Build(),
		b.c.B().Xlen().Key(dlqKey(s.Subject, s.Name)).Build(),
		b.c.B().Xlen().Key(attemptsKey(s.Subject, s.Name)).Build(),
		b.c.B().Hgetall().Key(circuitKey(s.Subject, s.Name)).Build(),
		b.c.B().Hlen().Key(leasesKey(s.Subject, s.Name)).Build(),
	}
	if s.Transport == core.TransportList {
		cmds = append(cmds, b.c.B().Llen().Key(s.Subject).Build(),
			b.c.B().Zrange().Key(consumersKey(s.Subject, s.Name)).Min("0").Max("-1").Build())
	}
	res := b.c.DoMulti(ctx, cmds...)
	fields, err := res[0].AsStrMap()
	if err != nil && !rueidis.IsRedisNil(err) {
		return st, fmt.Errorf("stats of %s: %w", s.Name, classify(err))
	}
	st.Shared = decodeShared(fields, time.Now())
	st.Retrying, _ = res[1].AsInt64()
	st.DLQSize, _ = res[2].AsInt64()
	st.AttemptLog, _ = res[3].AsInt64()
	cf, _ := res[4].AsStrMap()
	st.Circuit = decodeCircuit(cf)
	st.Deferred, _ = res[5].AsInt64()
	if s.Transport == core.TransportList {
		st.Lag, _ = res[6].AsInt64()
		consumers, _ := res[7].AsStrSlice()
		if len(consumers) > 0 {
			lens := make(rueidis.Commands, len(consumers))
			for i, c := range consumers {
				lens[i] = b.c.B().Llen().Key(processingKey(s.Subject, s.Name, c)).Build()
			}
			for _, r := range b.c.DoMulti(ctx, lens...) {
				n, _ := r.AsInt64()
				st.Pending += n
			}
		}
	}
	return st, nil
}

// lagCountCap bounds how far countAfter counts; a lag beyond it shows as the cap.
const lagCountCap = 100000

// countAfterScript counts the entries of a stream after an id, a hundred at a time, up to
// a cap. KEYS: stream. ARGV: id, cap.
var countAfterScript = rueidis.NewLuaScript(`
local n, start, cap = 0, '(' .. ARGV[1], tonumber(ARGV[2])
while n < cap do
  local e = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 100)
  if #e == 0 then break end
  n = n + #e
  start = '(' .. e[#e][1]
end
return n`)

func (b *Broker) countAfter(ctx context.Context, stream, id string) (int64, error) {
	if id == "" {
		id = "0-0"
	}
	n, err := countAfterScript.Exec(ctx, b.c, []string{stream}, []string{id, strconv.Itoa(lagCountCap)}).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("count entries of %s: %w", stream, classify(err))
	}
	return n, nil
}

const (
	inFlightPrefix = "inflight:"
	// inFlightFresh is how old an in-flight report may be and still count.
	inFlightFresh = 5 * time.Second
)

// addStatsScript adds counters (field, increment pairs) and sets fields (field, value pairs)
// of a live subscription's stats hash. KEYS: marker, stats. ARGV: incarnation, number of
// counter pairs, then the pairs.
var addStatsScript = rueidis.NewLuaScript(markerLua + `
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i+1])
  i = i + 2
end
if i <= #ARGV then redis.call('HSET', KEYS[2], unpack(ARGV, i)) end
return 1`)

// AddStats adds one process's delta to the subscription's shared counters (core.ErrGone
// when the subscription was deleted meanwhile: its counters are not brought back).
func (b *Broker) AddStats(ctx context.Context, s *core.Subscription, consumer string, d core.StatsDelta) error {
	args := make([]string, 2, 16)
	args[0] = s.Incarnation()
	counters := 0
	for _, f := range []struct {
		name string
		n    int64
	}{{"delivered", d.Delivered}, {"retried", d.Retried}, {"dead_lettered", d.DeadLettered}, {"lost", d.Lost}, {"filtered", d.Filtered}} {
		if f.n != 0 {
			args = append(args, f.name, strconv.FormatInt(f.n, 10))
			counters++
		}
	}
	args[1] = strconv.Itoa(counters)
	now := time.Now()
	args = append(args, inFlightPrefix+consumer, strconv.FormatInt(d.InFlight, 10)+":"+strconv.FormatInt(now.UnixMilli(), 10))
	if !d.OkAt.IsZero() {
		args = append(args, okAtPrefix+consumer, strconv.FormatInt(d.OkAt.UnixMilli(), 10))
	}
	if !d.LastAt.IsZero() {
		args = append(args, "last_status", strconv.Itoa(d.LastStatus), "last_error", d.LastError,
			"last_at", strconv.FormatInt(d.LastAt.UnixMilli(), 10))
	}
	keys := []string{markerKey(s.Subject, s.Name), statsKey(s.Subject, s.Name)}
	if err := checkGone(addStatsScript.Exec(ctx, b.c, keys, args)); err != nil {
		return fmt.Errorf("stats of %s: %w", s.Name, classify(err))
	}
	return nil
}

// ForgetInFlight removes this process's in-flight report (at a clean stop).
func (b *Broker) ForgetInFlight(ctx context.Context, s *core.Subscription, consumer string) error {
	return classify(b.c.Do(ctx, b.c.B().Hdel().Key(statsKey(s.Subject, s.Name)).Field(inFlightPrefix+consumer, okAtPrefix+consumer).Build()).Error())
}

func decodeShared(f map[string]string, now time.Time) core.SharedStats {
	var st core.SharedStats
	num := func(k string) int64 { n, _ := strconv.ParseInt(f[k], 10, 64); return n }
	st.Delivered, st.Retried, st.DeadLettered, st.Lost = num("delivered"), num("retried"), num("dead_lettered"), num("lost")
	st.Expired = num("expired")
	st.Filtered = num("filtered")
	st.LastStatus = int(num("last_status"))
	st.LastError = f["last_error"]
	if ms := num("last_at"); ms > 0 {
		st.LastAt = time.UnixMilli(ms).UTC()
	}
	for k, v := range f {
		if !strings.HasPrefix(k, inFlightPrefix) {
			continue
		}
		n, at, _ := strings.Cut(v, ":")
		ms, _ := strconv.ParseInt(at, 10, 64)
		if now.Sub(time.UnixMilli(ms)) <= inFlightFresh {
			c, _ := strconv.ParseInt(n, 10, 64)
			st.InFlight += c
		}
	}
	return st
}
