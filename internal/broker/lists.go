package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
	"golang.org/x/net/http/httpguts"
)

// Envelope is how a message travels on a list or a Pub/Sub channel, which carry one string
// each: JSON with the message id, its lower-case headers and the body as base64.
//
//	{"id":"orders:l1732420000000-9f86d081","headers":{"content-type":"text/plain"},"payload":"aGVsbG8="}
//
// A value that is not such an envelope (pushed by another producer) is delivered as it is,
// with content-type application/octet-stream.
type Envelope struct {
	ID      string            `json:"id"`
	Headers map[string]string `json:"headers,omitempty"`
	Payload []byte            `json:"payload"`
}

func newMessageID(subject, kind string) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return idPrefix(subject) + kind + strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + hex.EncodeToString(r[:])
}

func encodeEnvelope(id string, body []byte, headers map[string]string) string {
	raw, _ := json.Marshal(Envelope{ID: id, Headers: headers, Payload: body}) // cannot fail
	return string(raw)
}

// decodeEnvelope turns a list or channel value into a message; foreign values get an id
// derived from their content so redeliveries of the same value keep it.
func decodeEnvelope(subject, raw string) core.Message {
	var env Envelope
	if err := json.Unmarshal([]byte(raw), &env); err == nil && validID(env.ID) && env.Payload != nil {
		h := make(map[string]string, len(env.Headers))
		for k, v := range env.Headers {
			if httpguts.ValidHeaderFieldName(k) && httpguts.ValidHeaderFieldValue(v) {
				h[strings.ToLower(k)] = v
			}
		}
		return core.Message{ID: env.ID, Subject: subject, Body: env.Payload, Headers: h}
	}
	return core.Message{
		ID: idPrefix(subject) + "x" + contentID(raw), Subject: subject, Body: []byte(raw),
		Headers: map[string]string{core.HeaderContentType: "application/octet-stream"},
	}
}

func contentID(raw string) string {
	h := uint64(14695981039346656037) // FNV-1a: an id, not a security property
	for i := 0; i < len(raw); i++ {
		h ^= uint64(raw[i])
		h *= 1099511628211
	}
	return strconv.FormatUint(h, 16)
}

// PublishList pushes a message onto the subject's list (LPUSH: FIFO for right-poppers).
func (b *Broker) PublishList(ctx context.Context, subject string, body []byte, headers map[string]string) (string, error) {
	id := newMessageID(subject, "l")
	err := b.c.Do(ctx, b.c.B().Lpush().Key(subject).Element(encodeEnvelope(id, body, headers)).Build()).Error()
	if err != nil {
		return "", fmt.Errorf("lpush %s: %w", subject, classify(err))
	}
	return id, nil
}

// List keys of a reliable list subscription: each process moves messages into its own
// processing list and proves it is alive with a heartbeat in the consumers zset.
func processingKey(subject, sub, consumer string) string {
	return "bridge:{" + subject + "}:processing:" + sub + ":" + consumer
}
func consumersKey(subject, sub string) string { return "bridge:{" + subject + "}:consumers:" + sub }
func listCountKey(subject, sub string) string { return "bridge:{" + subject + "}:list-count:" + sub }

// Heartbeat records that consumer is alive and working on its processing list of s.
func (b *Broker) Heartbeat(ctx context.Context, s *core.Subscription, consumer string) error {
	err := b.c.Do(ctx, b.c.B().Zadd().Key(consumersKey(s.Subject, s.Name)).ScoreMember().
		ScoreMember(float64(time.Now().UnixMilli()), consumer).Build()).Error()
	return classify(err)
}

// PopList takes up to count messages of a list subscription. Reliable mode moves each into
// the caller's processing list (LMOVE, pipelined; BLMOVE waiting up to block when the list
// is empty) and counts the delivery; simple mode pops them (RPOP count, BRPOP when empty):
// at-most-once, nothing to settle.
func (b *Broker) PopList(ctx context.Context, s *core.Subscription, consumer string, count int, block time.Duration) ([]core.Message, error) {
	if s.ListMode == "simple" {
		return b.popSimple(ctx, s, count, block)
	}
	proc := processingKey(s.Subject, s.Name, consumer)
	cmds := make(rueidis.Commands, count)
	for i := range cmds {
		cmds[i] = b.c.B().Lmove().Source(s.Subject).Destination(proc).Right().Left().Build()
	}
	var raws []string
	for _, r := range b.c.DoMulti(ctx, cmds...) {
		v, err := r.ToString()
		if rueidis.IsRedisNil(err) {
			break
		}
		if err != nil {
			if len(raws) > 0 {
				break // deliver what moved; the error will show again on the next call
			}
			return nil, fmt.Errorf("lmove %s: %w", s.Subject, classify(err))
		}
		raws = append(raws, v)
	}
	if len(raws) == 0 && block >= 10*time.Millisecond {
		v, err := b.c.Do(ctx, b.c.B().Blmove().Source(s.Subject).Destination(proc).Right().Left().Timeout(block.Seconds()).Build()).ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("blmove %s: %w", s.Subject, classify(err))
		}
		if err == nil {
			raws = append(raws, v)
		}
	}
	if len(raws) == 0 {
		return nil, nil
	}
	msgs := make([]core.Message, len(raws))
	cmds = make(rueidis.Commands, len(raws))
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

func (b *Broker) popSimple(ctx context.Context, s *core.Subscription, count int, block time.Duration) ([]core.Message, error) {
	raws, err := b.c.Do(ctx, b.c.B().Rpop().Key(s.Subject).Count(int64(count)).Build()).AsStrSlice()
	if err != nil && !rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("rpop %s: %w", s.Subject, classify(err))
	}
	if len(raws) == 0 && block >= 10*time.Millisecond {
		kv, err := b.c.Do(ctx, b.c.B().Brpop().Key(s.Subject).Timeout(block.Seconds()).Build()).AsStrSlice()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("brpop %s: %w", s.Subject, classify(err))
		}
		if len(kv) == 2 {
			raws = kv[1:]
		}
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
