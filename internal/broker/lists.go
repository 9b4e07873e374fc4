package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// PublishList pushes a message onto the subject's list (LPUSH: FIFO for right-poppers).
func (b *Broker) PublishList(ctx context.Context, subject string, body []byte, headers map[string]string) (string, error) {
	id := newMessageID(subject, "l")
	err := b.c.Do(ctx, b.c.B().Lpush().Key(subject).Element(encodeEnvelope(id, body, headers)).Build()).Error()
	if err != nil {
		return "", fmt.Errorf("lpush %s: %w", subject, classify(err))
	}
	return id, nil
}

// Heartbeat records that consumer is alive and working on its processing list of s.
func (b *Broker) Heartbeat(ctx context.Context, s *core.Subscription, consumer string) error {
	err := b.c.Do(ctx, b.c.B().Zadd().Key(consumersKey(s.Subject, s.Name)).ScoreMember().
		ScoreMember(float64(time.Now().UnixMilli()), consumer).Build()).Error()
	return classify(err)
}

// popScript moves up to ARGV[1] messages from the right of a list (KEYS[1]) to the left of
// a processing list (KEYS[2]) and returns them; an empty list costs one LMOVE.
var popScript = rueidis.NewLuaScript(`
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[#out+1] = v
end
return out`)

// PopList takes up to count messages of a list subscription without blocking. Reliable
// mode moves each into the caller's processing list and counts the delivery; simple mode
// pops them (RPOP count): at-most-once, nothing to settle.
func (b *Broker) PopList(ctx context.Context, s *core.Subscription, consumer string, count int) ([]core.Message, error) {
	if s.ListMode == core.ListSimple {
		return b.popSimple(ctx, s, count)
	}
	proc := processingKey(s.Subject, s.Name, consumer)
	raws, err := popScript.Exec(ctx, b.c, []string{s.Subject, proc}, []string{strconv.Itoa(count)}).AsStrSlice()
	if err != nil && !rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("pop %s: %w", s.Subject, classify(err))
	}
	if len(raws) == 0 {
		return nil, nil
	}
	msgs := make([]core.Message, len(raws))
	cmds := make(rueidis.Commands, len(raws))
	for i, raw := range raws {
		msgs[i] = decodeEnvelope(s.Subject, raw)
		msgs[i].Origin, msgs[i].EntryID, msgs[i].Queue = core.FromList, raw, proc
		cmds[i] = b.c.B().Hincrby().Key(listCountKey(s.Subject, s.Name)).Field(msgs[i].ID).Increment(1).Build()
	}
	for i, r := range b.c.DoMulti(ctx, cmds...) {
		n, err := r.AsInt64()
		if err != nil {
			n = 1 // the message is safe in the processing list; only its count is unknown
		}
		msgs[i].Deliveries = int(n)
	}
	return msgs, nil
}

func (b *Broker) popSimple(ctx context.Context, s *core.Subscription, count int) ([]core.Message, error) {
	raws, err := b.c.Do(ctx, b.c.B().Rpop().Key(s.Subject).Count(int64(count)).Build()).AsStrSlice()
	if err != nil && !rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("rpop %s: %w", s.Subject, classify(err))
	}
	msgs := make([]core.Message, len(raws))
	for i, raw := range raws {
		msgs[i] = decodeEnvelope(s.Subject, raw)
		msgs[i].Origin, msgs[i].Deliveries = core.Unsettled, 1
	}
	return msgs, nil
}

// AckList removes settled messages from the caller's processing list.
var ackListScript = rueidis.NewLuaScript(`
for i = 1, #ARGV, 2 do
  redis.call('LREM', KEYS[1], 1, ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i+1])
end
return 1`)

// AckList removes settled messages (all from one processing list) and their counts.
func (b *Broker) AckList(ctx context.Context, s *core.Subscription, msgs ...*core.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	args := make([]string, 0, 2*len(msgs))
	for _, m := range msgs {
		args = append(args, m.EntryID, m.ID)
	}
	err := ackListScript.Exec(ctx, b.c, []string{msgs[0].Queue, listCountKey(s.Subject, s.Name)}, args).Error()
	if err != nil {
		return fmt.Errorf("ack list %s: %w", s.Subject, classify(err))
	}
	return nil
}

// recoverScript returns a dead consumer's processing list to the front of the queue (the
// right end, where the next pop takes from) and forgets the consumer. It checks the
// heartbeat again inside the script, so a consumer that came back in the meantime keeps
// its work. KEYS: consumers, processing, list. ARGV: consumer, staleBeforeMs.
var recoverScript = rueidis.NewLuaScript(`
local hb = redis.call('ZSCORE', KEYS[1], ARGV[1])
if hb and tonumber(hb) >= tonumber(ARGV[2]) then return 0 end
local n = 0
while true do
  -- newest first onto the right end, so the oldest ends up rightmost and is popped first
  local v = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
  if not v then break end
  n = n + 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
return n`)

// RecoverList returns the processing lists of consumers of s whose heartbeat is older than
// staleAfter to the queue, and reports how many messages came back.
func (b *Broker) RecoverList(ctx context.Context, s *core.Subscription, staleAfter time.Duration) (int, error) {
	cutoff := time.Now().Add(-staleAfter).UnixMilli()
	dead, err := b.c.Do(ctx, b.c.B().Zrangebyscore().Key(consumersKey(s.Subject, s.Name)).Min("-inf").
		Max(strconv.FormatInt(cutoff-1, 10)).Build()).AsStrSlice()
	if err != nil {
		return 0, fmt.Errorf("list consumers of %s: %w", s.Name, classify(err))
	}
	total := 0
	for _, c := range dead {
		n, err := recoverScript.Exec(ctx, b.c, []string{consumersKey(s.Subject, s.Name), processingKey(s.Subject, s.Name, c), s.Subject},
			[]string{c, strconv.FormatInt(cutoff, 10)}).AsInt64()
		if err != nil {
			return total, fmt.Errorf("recover %s of %s: %w", c, s.Name, classify(err))
		}
		total += int(n)
	}
	return total, nil
}

// ReleaseList hands the caller's processing list back to the queue at once (a clean stop
// whose pushes all settled leaves it empty; anything left goes back for another consumer).
func (b *Broker) ReleaseList(ctx context.Context, s *core.Subscription, consumer string) error {
	_, err := recoverScript.Exec(ctx, b.c, []string{consumersKey(s.Subject, s.Name), processingKey(s.Subject, s.Name, consumer), s.Subject},
		[]string{consumer, strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)}).AsInt64()
	return classify(err)
}

// destroyList returns every consumer's processing list to the queue and removes the list
// subscription's own keys: deleting a subscription never drops messages still queued.
func (b *Broker) destroyList(ctx context.Context, s *core.Subscription) error {
	consumers, err := b.c.Do(ctx, b.c.B().Zrange().Key(consumersKey(s.Subject, s.Name)).Min("0").Max("-1").Build()).AsStrSlice()
	if err != nil {
		return classify(err)
	}
	for _, c := range consumers {
		if err := b.ReleaseList(ctx, s, c); err != nil {
			return err
		}
	}
	return classify(b.c.Do(ctx, b.c.B().Del().Key(consumersKey(s.Subject, s.Name), listCountKey(s.Subject, s.Name)).Build()).Error())
}

// CheckListKey fails with core.ErrWrongType when the subject's key exists and is not a list.
func (b *Broker) CheckListKey(ctx context.Context, subject string) error {
	t, err := b.c.Do(ctx, b.c.B().Type().Key(subject).Build()).ToString()
	if err != nil {
		return fmt.Errorf("type %s: %w", subject, classify(err))
	}
	if t != "none" && t != "list" {
		return fmt.Errorf("%s holds a %s: %w", subject, t, core.ErrWrongType)
	}
	return nil
}

// ListLengths returns the length of each subject's list, in one pipelined round trip (a
// missing or foreign key counts as empty).
func (b *Broker) ListLengths(ctx context.Context, subjects []string) (map[string]int64, error) {
	cmds := make(rueidis.Commands, len(subjects))
	for i, s := range subjects {
		cmds[i] = b.c.B().Llen().Key(s).Build()
	}
	out := make(map[string]int64, len(subjects))
	for i, r := range b.c.DoMulti(ctx, cmds...) {
		n, err := r.AsInt64()
		if err != nil && !errors.Is(classify(err), core.ErrWrongType) {
			return out, fmt.Errorf("llen %s: %w", subjects[i], classify(err))
		}
		out[subjects[i]] = n
	}
	return out, nil
}
