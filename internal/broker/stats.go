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

// A subscription's counters are shared by every process in one hash: counters grow by
// HINCRBY; each process reports its in-flight count in its own field with the time it
// wrote it, so a process that died stops counting once its report is stale.
func statsKey(subject, sub string) string { return "bridge:{" + subject + "}:stats:" + sub }

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
	}{{"delivered", d.Delivered}, {"retried", d.Retried}, {"dead_lettered", d.DeadLettered}, {"lost", d.Lost}} {
		if f.n != 0 {
			args = append(args, f.name, strconv.FormatInt(f.n, 10))
			counters++
		}
	}
	args[1] = strconv.Itoa(counters)
	now := time.Now()
	args = append(args, inFlightPrefix+consumer, strconv.FormatInt(d.InFlight, 10)+":"+strconv.FormatInt(now.UnixMilli(), 10))
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
	return classify(b.c.Do(ctx, b.c.B().Hdel().Key(statsKey(s.Subject, s.Name)).Field(inFlightPrefix+consumer).Build()).Error())
}

func decodeShared(f map[string]string, now time.Time) core.SharedStats {
	var st core.SharedStats
	num := func(k string) int64 { n, _ := strconv.ParseInt(f[k], 10, 64); return n }
	st.Delivered, st.Retried, st.DeadLettered, st.Lost = num("delivered"), num("retried"), num("dead_lettered"), num("lost")
	st.Expired = num("expired")
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
