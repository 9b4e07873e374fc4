package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

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
)

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
	items, next, err := b.claimLeased(ctx, keys, now, scheduleLease, limit)
	if err != nil {
		return out, fmt.Errorf("claim scheduled: %w", classify(err))
	}
	out.Next = next
	var ids, subjects []string
	cmds := make(rueidis.Commands, 0, len(items))
	var done []rueidis.LuaExec
	for _, it := range items {
		var rec scheduledRecord
		if err := json.Unmarshal([]byte(it.Record), &rec); err != nil {
			// Unreadable: it can never be appended, so it is dropped rather than re-leased forever.
			out.Dropped = append(out.Dropped, core.DroppedScheduled{ID: it.ID, Err: fmt.Errorf("decode: %w", err)})
			done = append(done, rueidis.LuaExec{Keys: keys, Args: []string{it.ID}})
			continue
		}
		args := append([]string{"*"}, streamArgs(rec.Body, rec.Headers, idField, it.ID)...)
		cmds = append(cmds, b.c.B().Arbitrary("XADD").Keys(rec.Subject).Args(args...).Build())
		ids = append(ids, it.ID)
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
		if !slices.Contains(out.Subjects, subjects[i]) {
			out.Subjects = append(out.Subjects, subjects[i])
		}
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
