package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

func decodeDeadLetter(subject string, e rueidis.XRangeEntry) core.DeadLetter {
	m := DecodeEntry(subject, e)
	d := core.DeadLetter{EntryID: e.ID, ID: e.FieldValues["_id"], Body: m.Body, Headers: m.Headers}
	d.Reason = d.Headers[core.HeaderDeadLetterReason]
	d.LastStatus, _ = strconv.Atoi(e.FieldValues["_status"])
	d.LastError = e.FieldValues["_error"]
	d.Deliveries, _ = strconv.Atoi(e.FieldValues["_deliveries"])
	if ms, err := strconv.ParseInt(e.FieldValues["_time"], 10, 64); err == nil {
		d.At = time.UnixMilli(ms).UTC()
	}
	if _, ok := e.FieldValues[payloadField]; !ok {
		// Not written by the bridge; keep it listable with what it has.
		d.Headers = map[string]string{core.HeaderContentType: "application/json"}
	}
	for _, k := range []string{"_id", "_status", "_error", "_deliveries", "_time"} {
		delete(d.Headers, k)
	}
	return d
}

// DeadLetters lists up to limit dead letters of s after the entry id after ("" = from the start).
func (b *Broker) DeadLetters(ctx context.Context, s *core.Subscription, after string, limit int) ([]core.DeadLetter, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	entries, err := b.c.Do(ctx, b.c.B().Xrange().Key(dlqKey(s.Subject, s.Name)).Start(start).End("+").Count(int64(limit)).Build()).AsXRange()
	if err != nil && !rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("xrange dlq of %s: %w", s.Name, classify(err))
	}
	out := make([]core.DeadLetter, 0, len(entries))
	for _, e := range entries {
		out = append(out, decodeDeadLetter(s.Subject, e))
	}
	return out, nil
}

// DeadLetterCount is the size of the subscription's dead-letter stream.
func (b *Broker) DeadLetterCount(ctx context.Context, s *core.Subscription) (int64, error) {
	n, err := b.c.Do(ctx, b.c.B().Xlen().Key(dlqKey(s.Subject, s.Name)).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("xlen dlq of %s: %w", s.Name, classify(err))
	}
	return n, nil
}

// ReplayDeadLetters moves dead letters of s back into its retry set, due now, with their
// original message ids and a fresh delivery budget. ids are message ids; nil replays all.
// It returns how many were moved. Nothing reaches another subscription.
func (b *Broker) ReplayDeadLetters(ctx context.Context, s *core.Subscription, ids []string) (int, error) {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	keys := []string{dlqKey(s.Subject, s.Name), retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)}
	moved := 0
	after := ""
	for {
		page, err := b.DeadLetters(ctx, s, after, 500)
		if err != nil || len(page) == 0 {
			return moved, err
		}
		now := strconv.FormatInt(time.Now().UnixMilli(), 10)
		execs := make([]rueidis.LuaExec, 0, len(page))
		for _, d := range page {
			after = d.EntryID
			if ids != nil && !want[d.ID] {
				continue
			}
			id, rec, err := replayRecord(s, d)
			if err != nil {
				return moved, err
			}
			execs = append(execs, rueidis.LuaExec{Keys: keys, Args: []string{d.EntryID, id, rec, now}})
		}
		if len(execs) == 0 {
			continue
		}
		// One pipelined round trip per page; each script moves one entry atomically.
		for _, res := range replayScript.ExecMulti(ctx, b.c, execs...) {
			n, err := res.AsInt64()
			if err != nil {
				return moved, fmt.Errorf("replay dead letters of %s: %w", s.Name, classify(err))
			}
			moved += int(n)
		}
	}
}

// replayRecord is the retry record a dead letter goes back as: its body and headers
// without the dead-letter reason, under its original id.
func replayRecord(s *core.Subscription, d core.DeadLetter) (id, rec string, err error) {
	h := make(map[string]string, len(d.Headers))
	for k, v := range d.Headers {
		if k != core.HeaderDeadLetterReason {
			h[k] = v
		}
	}
	id = d.ID
	if !validID(id) {
		id = core.MessageID(s.Subject, d.EntryID)
	}
	raw, err := json.Marshal(retryRecord{ID: id, Body: d.Body, Headers: h})
	return id, string(raw), err
}

// SubscriptionStats reads lag and pending (XINFO GROUPS), the retry set size and the DLQ size.
func (b *Broker) SubscriptionStats(ctx context.Context, s *core.Subscription) (core.GroupStats, error) {
	if s.Transport == "list" || s.Transport == "pubsub" {
		return b.otherStats(ctx, s)
	}
	var st core.GroupStats
	res := b.c.DoMulti(ctx,
		b.c.B().XinfoGroups().Key(s.Subject).Build(),
		b.c.B().Zcard().Key(retryKey(s.Subject, s.Name)).Build(),
		b.c.B().Xlen().Key(dlqKey(s.Subject, s.Name)).Build(),
		b.c.B().Hgetall().Key(statsKey(s.Subject, s.Name)).Build(),
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
		st.Lag, _ = lag.AsInt64()
	}
	st.Retrying, _ = res[1].AsInt64()
	st.DLQSize, _ = res[2].AsInt64()
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
	}
	if s.Transport == "list" {
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
	if s.Transport == "list" {
		st.Lag, _ = res[3].AsInt64()
		consumers, _ := res[4].AsStrSlice()
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
