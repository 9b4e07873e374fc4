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

// AddStats adds one process's delta to the subscription's shared counters.
func (b *Broker) AddStats(ctx context.Context, s *core.Subscription, consumer string, d core.StatsDelta) error {
	key := statsKey(s.Subject, s.Name)
	cmds := make(rueidis.Commands, 0, 6)
	for _, f := range []struct {
		name string
		n    int64
	}{{"delivered", d.Delivered}, {"retried", d.Retried}, {"dead_lettered", d.DeadLettered}, {"lost", d.Lost}} {
		if f.n != 0 {
			cmds = append(cmds, b.c.B().Hincrby().Key(key).Field(f.name).Increment(f.n).Build())
		}
	}
	now := time.Now()
	fv := b.c.B().Hset().Key(key).FieldValue().
		FieldValue(inFlightPrefix+consumer, strconv.FormatInt(d.InFlight, 10)+":"+strconv.FormatInt(now.UnixMilli(), 10))
	if !d.LastAt.IsZero() {
		fv = fv.FieldValue("last_status", strconv.Itoa(d.LastStatus)).
			FieldValue("last_error", d.LastError).
			FieldValue("last_at", strconv.FormatInt(d.LastAt.UnixMilli(), 10))
	}
	cmds = append(cmds, fv.Build())
	for _, r := range b.c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("stats of %s: %w", s.Name, classify(err))
		}
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
