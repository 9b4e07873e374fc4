package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// idField carries a message id assigned before the entry existed (scheduled publishes).
const idField = "_id"

func idemKey(subject, key string) string { return "bridge:{" + subject + "}:idem:" + key }

// Scheduled messages wait in one zset (id -> due ms) and one hash (id -> message) that share
// a hash tag, so any bridge process can move them into their streams when due. Moving is
// claim-by-lease like the retry set: a process that dies mid-move leaves them due again
// after the lease, which can append a message twice (same id) but never loses one.
const (
	scheduledDueKey  = "bridge:{scheduled}:due"
	scheduledDataKey = "bridge:{scheduled}:data"
	scheduleLease    = 30 * time.Second
)

var (
	// KEYS: stream, idem key ("" key not used when ARGV[2] is ""). ARGV: idPrefix, windowMs ("" = no
	// idempotency), then XADD field/value pairs. Returns {id, duplicate}.
	publishScript = rueidis.NewLuaScript(`
if ARGV[2] ~= '' then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {prev, 1} end
end
local eid = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
local id = ARGV[1] .. eid
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], id, 'PX', ARGV[2]) end
return {id, 0}`)
	// KEYS: due, data. ARGV: id, dueMs, record.
	scheduleScript = rueidis.NewLuaScript(`
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1`)
	// KEYS: due, data. ARGV: id.
	unscheduleScript = rueidis.NewLuaScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1`)
	// KEYS: due, data. ARGV: nowMs, leaseUntilMs, limit. Returns the earliest remaining due
	// score ("" if none) then id, record pairs.
	claimScheduledScript = rueidis.NewLuaScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {''}
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out+1] = id
    out[#out+1] = rec
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then out[1] = first[2] end
return out`)
)

func streamArgs(body []byte, headers map[string]string, extra ...string) []string {
	args := make([]string, 0, 2+len(extra)+2*len(headers))
	args = append(args, extra...)
	args = append(args, payloadField, rueidis.BinaryString(body))
	for k, v := range headers {
		args = append(args, headerPrefix+strings.ToLower(k), v)
	}
	return args
}

func idPrefix(subject string) string { return core.MessageID(subject, "") }

// Publish appends a message to the subject's stream in ruststream-fred's layout and
// returns its message id once Redis has confirmed the write.
func (b *Broker) Publish(ctx context.Context, subject string, body []byte, headers map[string]string) (string, error) {
	args := append([]string{"*"}, streamArgs(body, headers)...)
	id, err := b.c.Do(ctx, b.c.B().Arbitrary("XADD").Keys(subject).Args(args...).Build()).ToString()
	if err != nil {
		return "", fmt.Errorf("xadd %s: %w", subject, classify(err))
	}
	return core.MessageID(subject, id), nil
}

// PublishMany writes msgs to subject, one result per message in order. Immediate messages
// go out in one pipelined round trip; the idempotency check and the append are one script
// per message, so two concurrent publishes with one key write one message.
func (b *Broker) PublishMany(ctx context.Context, subject string, msgs []core.Outgoing, window time.Duration) []core.Published {
	out := make([]core.Published, len(msgs))
	var now []int
	var execs []rueidis.LuaExec
	for i, m := range msgs {
		if !m.NotBefore.IsZero() && time.Until(m.NotBefore) > 0 {
			out[i] = b.schedule(ctx, subject, m, window)
			continue
		}
		win, key := "", idemKey(subject, "")
		if m.IdempotencyKey != "" {
			win, key = strconv.FormatInt(window.Milliseconds(), 10), idemKey(subject, m.IdempotencyKey)
		}
		now = append(now, i)
		execs = append(execs, rueidis.LuaExec{
			Keys: []string{subject, key},
			Args: append([]string{idPrefix(subject), win}, streamArgs(m.Body, m.Headers)...),
		})
	}
	if len(execs) == 0 {
		return out
	}
	for j, res := range publishScript.ExecMulti(ctx, b.c, execs...) {
		i := now[j]
		arr, err := res.ToArray()
		if err != nil || len(arr) != 2 {
			if err == nil {
				err = fmt.Errorf("unexpected reply")
			}
			out[i] = core.Published{Err: fmt.Errorf("publish to %s: %w", subject, classify(err))}
			continue
		}
		id, _ := arr[0].ToString()
		dup, _ := arr[1].AsInt64()
		out[i] = core.Published{ID: id, Duplicate: dup == 1}
	}
	return out
}

type scheduledRecord struct {
	Subject string            `json:"s"`
	Body    []byte            `json:"b"`
	Headers map[string]string `json:"h,omitempty"`
}

func newScheduledID(subject string, due time.Time) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return idPrefix(subject) + "s" + strconv.FormatInt(due.UnixMilli(), 10) + "-" + hex.EncodeToString(r[:])
}

// schedule stores m for delivery into its stream at m.NotBefore. With an idempotency key
// the schedule is written first and the key claimed after (they live in different slots):
// a crash between the two can only duplicate a message, and a lost race is undone.
func (b *Broker) schedule(ctx context.Context, subject string, m core.Outgoing, window time.Duration) core.Published {
	if m.IdempotencyKey != "" {
		prev, err := b.c.Do(ctx, b.c.B().Get().Key(idemKey(subject, m.IdempotencyKey)).Build()).ToString()
		if err == nil {
			return core.Published{ID: prev, Duplicate: true}
		}
		if !rueidis.IsRedisNil(err) {
			return core.Published{Err: fmt.Errorf("idempotency check: %w", classify(err))}
		}
	}
	// The schedule lives in a slot of its own, so the append at the due time is the first
	// command to touch the subject: check its type now, or the publisher gets a 202 for a
	// message that can never be appended.
	t, err := b.c.Do(ctx, b.c.B().Type().Key(subject).Build()).ToString()
	if err != nil {
		return core.Published{Err: fmt.Errorf("type %s: %w", subject, classify(err))}
	}
	if t != "none" && t != "stream" {
		return core.Published{Err: fmt.Errorf("%s holds a %s: %w", subject, t, core.ErrWrongType)}
	}
	id := newScheduledID(subject, m.NotBefore)
	rec, err := json.Marshal(scheduledRecord{Subject: subject, Body: m.Body, Headers: m.Headers})
	if err != nil {
		return core.Published{Err: err}
	}
	keys := []string{scheduledDueKey, scheduledDataKey}
	if err := scheduleScript.Exec(ctx, b.c, keys, []string{id, strconv.FormatInt(m.NotBefore.UnixMilli(), 10), string(rec)}).Error(); err != nil {
		return core.Published{Err: fmt.Errorf("schedule on %s: %w", subject, classify(err))}
	}
	if m.IdempotencyKey == "" {
		return core.Published{ID: id}
	}
	k := idemKey(subject, m.IdempotencyKey)
	err = b.c.Do(ctx, b.c.B().Set().Key(k).Value(id).Nx().Px(window).Build()).Error()
	if err == nil {
		return core.Published{ID: id}
	}
	if !rueidis.IsRedisNil(err) {
		return core.Published{ID: id} // scheduled; the key could not be recorded, so a retry may duplicate
	}
	// Another request with the same key won: undo ours and answer with theirs.
	_ = unscheduleScript.Exec(ctx, b.c, keys, []string{id}).Error()
	prev, err := b.c.Do(ctx, b.c.B().Get().Key(k).Build()).ToString()
	if err != nil {
		return core.Published{Err: fmt.Errorf("idempotency check: %w", classify(err))}
	}
	return core.Published{ID: prev, Duplicate: true}
}

// MoveDueScheduled appends up to limit scheduled messages that are due into their streams.
func (b *Broker) MoveDueScheduled(ctx context.Context, now time.Time, limit int) (core.ScheduledMove, error) {
	var out core.ScheduledMove
	keys := []string{scheduledDueKey, scheduledDataKey}
	vals, err := claimScheduledScript.Exec(ctx, b.c, keys, []string{
		strconv.FormatInt(now.UnixMilli(), 10), strconv.FormatInt(now.Add(scheduleLease).UnixMilli(), 10), strconv.Itoa(limit),
	}).AsStrSlice()
	if err != nil {
		return out, fmt.Errorf("claim scheduled: %w", classify(err))
	}
	if len(vals) == 0 {
		return out, nil
	}
	if ms, err := strconv.ParseFloat(vals[0], 64); err == nil {
		out.Next = time.UnixMilli(int64(ms))
	}
	vals = vals[1:]
	var ids, subjects []string
	cmds := make(rueidis.Commands, 0, len(vals)/2)
	var done []rueidis.LuaExec
	for i := 0; i+1 < len(vals); i += 2 {
		var rec scheduledRecord
		if err := json.Unmarshal([]byte(vals[i+1]), &rec); err != nil {
			// Unreadable: it can never be appended, so it is dropped rather than re-leased forever.
			out.Dropped = append(out.Dropped, core.DroppedScheduled{ID: vals[i], Err: fmt.Errorf("decode: %w", err)})
			done = append(done, rueidis.LuaExec{Keys: keys, Args: []string{vals[i]}})
			continue
		}
		args := append([]string{"*"}, streamArgs(rec.Body, rec.Headers, idField, vals[i])...)
		cmds = append(cmds, b.c.B().Arbitrary("XADD").Keys(rec.Subject).Args(args...).Build())
		ids = append(ids, vals[i])
		subjects = append(subjects, rec.Subject)
	}
	var firstErr error
	for i, res := range b.c.DoMulti(ctx, cmds...) {
		if err := classify(res.Error()); err != nil {
			if errors.Is(err, core.ErrWrongType) {
				out.Dropped = append(out.Dropped, core.DroppedScheduled{ID: ids[i], Subject: subjects[i], Err: err})
				done = append(done, rueidis.LuaExec{Keys: keys, Args: []string{ids[i]}})
				continue
			}
			// Left leased: it comes due again after the lease and is retried then.
			if firstErr == nil {
				firstErr = fmt.Errorf("append scheduled %s: %w", ids[i], err)
			}
			continue
		}
		out.Moved++
		done = append(done, rueidis.LuaExec{Keys: keys, Args: []string{ids[i]}})
	}
	if len(done) == 0 {
		return out, firstErr
	}
	for _, res := range unscheduleScript.ExecMulti(ctx, b.c, done...) {
		if err := res.Error(); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("unschedule: %w", classify(err))
		}
	}
	return out, firstErr
}
