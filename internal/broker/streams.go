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
	"golang.org/x/net/http/httpguts"
)

// EnsureGroup creates the subscription's consumer group on its subject (and the stream,
// if missing) at start: "new" ($), "beginning" (0) or an entry id. An existing group keeps
// its cursor; created reports whether this call made it.
func (b *Broker) EnsureGroup(ctx context.Context, subject, sub, start string) (created bool, err error) {
	id := "$"
	switch start {
	case "", "new":
	case "beginning":
		id = "0"
	default:
		id = start
	}
	err = b.c.Do(ctx, b.c.B().XgroupCreate().Key(subject).Group(groupName(sub)).Id(id).Mkstream().Build()).Error()
	if rueidis.IsRedisBusyGroup(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("xgroup create %s %s: %w", subject, groupName(sub), classify(err))
	}
	return true, nil
}

// DestroySubscription removes what the subscription keeps in Redis: its consumer group
// (stream), or its processing lists, returned to the queue first (list); and its retry set,
// dead letters and counters. The messages of the subject itself stay.
func (b *Broker) DestroySubscription(ctx context.Context, s *core.Subscription) error {
	if s.Transport == "list" {
		if err := b.destroyList(ctx, s); err != nil {
			return fmt.Errorf("release processing lists of %s: %w", s.Name, err)
		}
	}
	if s.Transport != "stream" && s.Transport != "" {
		return b.deleteKeys(ctx, s.Subject, s.Name)
	}
	return b.destroyGroup(ctx, s.Subject, s.Name)
}

// MarkLive records s as the live subscription of its name, so its settlements may write
// its keys (see markerKey). Called when a subscription is created or found without a marker.
func (b *Broker) MarkLive(ctx context.Context, s *core.Subscription) error {
	err := b.c.Do(ctx, b.c.B().Set().Key(markerKey(s.Subject, s.Name)).Value(s.Incarnation()).Build()).Error()
	if err != nil {
		return fmt.Errorf("mark %s live: %w", s.Name, classify(err))
	}
	return nil
}

func (b *Broker) deleteKeys(ctx context.Context, subject, sub string) error {
	err := b.c.Do(ctx, b.c.B().Del().Key(markerKey(subject, sub), retryKey(subject, sub), retryDataKey(subject, sub), retryCountKey(subject, sub),
		dlqKey(subject, sub), statsKey(subject, sub)).Build()).Error()
	if err != nil {
		return fmt.Errorf("delete keys of %s: %w", sub, classify(err))
	}
	return nil
}

func (b *Broker) destroyGroup(ctx context.Context, subject, sub string) error {
	if err := b.deleteKeys(ctx, subject, sub); err != nil {
		return err
	}
	err := b.c.Do(ctx, b.c.B().XgroupDestroy().Key(subject).Group(groupName(sub)).Build()).Error()
	if err != nil && !isNoGroup(err) && !isNoKey(err) {
		return fmt.Errorf("xgroup destroy %s: %w", sub, classify(err))
	}
	return nil
}

func isNoKey(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	// XGROUP DESTROY on a missing key answers "ERR The XGROUP subcommand requires the key to exist".
	return ok && strings.Contains(re.Error(), "requires the key to exist")
}

// Read hands out up to count new entries of the subscription's group to consumer,
// blocking up to block when there are none (a block under 1 ms does not block).
func (b *Broker) Read(ctx context.Context, s *core.Subscription, consumer string, count int, block time.Duration) ([]core.Message, error) {
	// BLOCK 0 would wait forever: below a millisecond the read does not block at all.
	var cmd rueidis.Completed
	if ms := block.Milliseconds(); ms > 0 {
		cmd = b.c.B().Xreadgroup().Group(groupName(s.Name), consumer).Count(int64(count)).Block(ms).
			Streams().Key(s.Subject).Id(">").Build()
	} else {
		cmd = b.c.B().Xreadgroup().Group(groupName(s.Name), consumer).Count(int64(count)).
			Streams().Key(s.Subject).Id(">").Build()
	}
	res, err := b.c.Do(ctx, cmd).AsXRead()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if isNoGroup(err) {
		return nil, fmt.Errorf("xreadgroup %s %s: %w", s.Subject, groupName(s.Name), core.ErrNoGroup)
	}
	if err != nil {
		return nil, fmt.Errorf("xreadgroup %s: %w", s.Subject, classify(err))
	}
	entries := res[s.Subject]
	msgs := make([]core.Message, 0, len(entries))
	for _, e := range entries {
		m := DecodeEntry(s.Subject, e)
		m.Deliveries = 1
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// DecodeEntry turns a stream entry into a message. Entries in ruststream-fred's layout give
// their payload and h: headers; any other entry is delivered as a JSON object of its fields.
func DecodeEntry(subject string, e rueidis.XRangeEntry) core.Message {
	m := core.Message{ID: core.MessageID(subject, e.ID), Subject: subject, EntryID: e.ID, Origin: core.FromStream}
	// A message published with a delay got its id before its entry existed; the entry
	// carries it so the id stays the one the publisher was given.
	if id := e.FieldValues[idField]; validID(id) {
		m.ID = id
	}
	payload, ok := e.FieldValues[payloadField]
	if !ok {
		m.Body, _ = json.Marshal(e.FieldValues) // map[string]string cannot fail to marshal
		m.Headers = map[string]string{core.HeaderContentType: "application/json"}
		return m
	}
	m.Body = []byte(payload)
	m.Headers = make(map[string]string, len(e.FieldValues)-1)
	for k, v := range e.FieldValues {
		// Another producer may have written anything: a header that is not valid HTTP
		// would make every push of the message fail, so it is left out.
		if name, ok := strings.CutPrefix(k, headerPrefix); ok && httpguts.ValidHeaderFieldName(name) && httpguts.ValidHeaderFieldValue(v) {
			m.Headers[strings.ToLower(name)] = v
		}
	}
	return m
}

// validID accepts a stored message id only if it can be a webhook-id: visible ASCII, no '.'.
func validID(id string) bool {
	if id == "" || len(id) > 512 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' || id[i] == '.' {
			return false
		}
	}
	return true
}

// Ack acknowledges stream entries of the subscription in one command.
func (b *Broker) Ack(ctx context.Context, subject, sub string, entryIDs ...string) error {
	if len(entryIDs) == 0 {
		return nil
	}
	err := b.c.Do(ctx, b.c.B().Xack().Key(subject).Group(groupName(sub)).Id(entryIDs...).Build()).Error()
	if err != nil {
		return fmt.Errorf("xack %s: %w", subject, classify(err))
	}
	return nil
}

// retryRecord is how a message waits in a subscription's retry set. The delivery count
// lives beside it in a hash so the claim script can bump it without decoding JSON.
type retryRecord struct {
	ID      string            `json:"i"`
	Body    []byte            `json:"b"`
	Headers map[string]string `json:"h,omitempty"`
}

// The retry set of a subscription is a ZSET scored by due time (ms) plus two hashes keyed
// by message id: the record and the deliveries made so far. Claiming a due member moves
// its score to now+lease, so a process that dies holding it lets it come due again after
// the lease (the visibility timeout) instead of losing it.
// settleLua removes a message from where it was delivered from, by mode.
const settleLua = `
local function settle(mode, src, zset, data, counts, lcounts, group, handle, id)
  if mode == 'stream' then
    redis.call('XACK', src, group, handle)
  elseif mode == 'retry' then
    redis.call('ZREM', zset, id)
    redis.call('HDEL', data, id)
    redis.call('HDEL', counts, id)
  elseif mode == 'list' then
    redis.call('LREM', src, 1, handle)
    redis.call('HDEL', lcounts, id)
  end
end
`

var (
	// Settling the original is one of: XACK (stream), ZREM+HDEL from the retry set (retry),
	// LREM from the processing list plus its delivery count (list), or nothing (none).
	// KEYS: marker, zset, data, counts, source (stream or processing list), list counts.
	// ARGV: incarnation, id, dueMs, record ("" keeps the stored one), deliveries, mode, group, handle.
	retryScript = rueidis.NewLuaScript(settleLua + markerLua + `
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[6] ~= 'retry' then settle(ARGV[6], KEYS[5], KEYS[2], KEYS[3], KEYS[4], KEYS[6], ARGV[7], ARGV[8], ARGV[2]) end
return 1`)
	// KEYS: zset, data, counts. ARGV: nowMs, leaseUntilMs, limit. Returns the score of the
	// earliest remaining member ("" if none) followed by id, record, deliveries triples.
	claimScript = rueidis.NewLuaScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {''}
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    local n = redis.call('HINCRBY', KEYS[3], id, 1)
    out[#out+1] = id
    out[#out+1] = rec
    out[#out+1] = tostring(n)
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then out[1] = first[2] end
return out`)
	// KEYS: zset, data, counts. ARGV: ids.
	ackRetryScript = rueidis.NewLuaScript(`
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return #ARGV`)
	// KEYS: marker, dlq, source, zset, data, counts, list counts. ARGV: incarnation, mode,
	// group, handle, id, then the DLQ entry's field/value pairs.
	deadLetterScript = rueidis.NewLuaScript(settleLua + markerLua + `
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
settle(ARGV[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[3], ARGV[4], ARGV[5])
return 1`)
	// KEYS: dlq, zset, data, counts. ARGV: dlqEntryID, id, record, nowMs.
	replayScript = rueidis.NewLuaScript(`
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[2], 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1`)
)

func (b *Broker) retryKeys(s *core.Subscription) []string {
	return []string{retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)}
}

// Retry schedules m for another delivery to s at due. The copy is written and the original
// acknowledged in one script, so a crash can neither lose nor duplicate it; the retry is
// scoped to this subscription and never reaches another group on the same stream.
func (b *Broker) Retry(ctx context.Context, s *core.Subscription, m *core.Message, due time.Time) error {
	rec := ""
	if m.Origin != core.FromRetry {
		raw, err := json.Marshal(retryRecord{ID: m.ID, Body: m.Body, Headers: m.Headers})
		if err != nil {
			return err
		}
		rec = string(raw)
	}
	mode, src := settleMode(s, m)
	keys := []string{markerKey(s.Subject, s.Name), retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name),
		retryCountKey(s.Subject, s.Name), src, listCountKey(s.Subject, s.Name)}
	args := []string{s.Incarnation(), m.ID, strconv.FormatInt(due.UnixMilli(), 10), rec, strconv.Itoa(m.Deliveries), mode, groupName(s.Name), m.EntryID}
	if err := checkGone(retryScript.Exec(ctx, b.c, keys, args)); err != nil {
		return fmt.Errorf("schedule retry of %s: %w", m.ID, classify(err))
	}
	return nil
}

// settleMode says how the scripts settle m, and which key holds it.
func settleMode(s *core.Subscription, m *core.Message) (mode, src string) {
	switch m.Origin {
	case core.FromStream:
		return "stream", s.Subject
	case core.FromRetry:
		return "retry", s.Subject
	case core.FromList:
		return "list", m.Queue
	}
	// No key to settle; the subject keeps the script's keys in the subscription's slot.
	return "none", retryKey(s.Subject, s.Name)
}

// ClaimRetries leases up to limit due retries of s to the caller until now+lease. next is
// when the earliest message left in the set comes due (zero when the set is empty).
func (b *Broker) ClaimRetries(ctx context.Context, s *core.Subscription, now time.Time, lease time.Duration, limit int) (msgs []core.Message, next time.Time, err error) {
	args := []string{strconv.FormatInt(now.UnixMilli(), 10), strconv.FormatInt(now.Add(lease).UnixMilli(), 10), strconv.Itoa(limit)}
	vals, err := claimScript.Exec(ctx, b.c, b.retryKeys(s), args).AsStrSlice()
	if err != nil {
		return nil, next, fmt.Errorf("claim retries of %s: %w", s.Name, classify(err))
	}
	if len(vals) == 0 {
		return nil, next, nil
	}
	if ms, err := strconv.ParseFloat(vals[0], 64); err == nil {
		next = time.UnixMilli(int64(ms))
	}
	vals = vals[1:]
	msgs = make([]core.Message, 0, len(vals)/3)
	for i := 0; i+2 < len(vals); i += 3 {
		var rec retryRecord
		if err := json.Unmarshal([]byte(vals[i+1]), &rec); err != nil {
			return nil, next, fmt.Errorf("retry record %s: %w", vals[i], err)
		}
		n, _ := strconv.Atoi(vals[i+2])
		msgs = append(msgs, core.Message{
			ID: vals[i], Subject: s.Subject, Origin: core.FromRetry,
			Body: rec.Body, Headers: rec.Headers, Deliveries: n,
		})
	}
	return msgs, next, nil
}

// AckRetries removes settled messages from the subscription's retry set.
func (b *Broker) AckRetries(ctx context.Context, s *core.Subscription, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := ackRetryScript.Exec(ctx, b.c, b.retryKeys(s), ids).Error(); err != nil {
		return fmt.Errorf("ack retries of %s: %w", s.Name, classify(err))
	}
	return nil
}

// DeadLetter copies m into the subscription's own dead-letter stream (ruststream-fred layout
// plus x-dead-letter-reason and the bridge's own _-fields) and settles the original, in one
// script.
func (b *Broker) DeadLetter(ctx context.Context, s *core.Subscription, m *core.Message, info core.DeadLetterInfo) error {
	mode, src := settleMode(s, m)
	args := make([]string, 0, 19+2*len(m.Headers))
	args = append(args, s.Incarnation(), mode, groupName(s.Name), m.EntryID, m.ID,
		payloadField, rueidis.BinaryString(m.Body))
	for k, v := range m.Headers {
		if k == core.HeaderDeadLetterReason {
			continue
		}
		args = append(args, headerPrefix+k, v)
	}
	args = append(args,
		headerPrefix+core.HeaderDeadLetterReason, info.Reason,
		"_id", m.ID,
		"_status", strconv.Itoa(info.LastStatus),
		"_error", info.LastError,
		"_deliveries", strconv.Itoa(m.Deliveries),
		"_time", strconv.FormatInt(info.At.UnixMilli(), 10),
	)
	keys := []string{markerKey(s.Subject, s.Name), dlqKey(s.Subject, s.Name), src, retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name),
		retryCountKey(s.Subject, s.Name), listCountKey(s.Subject, s.Name)}
	if err := checkGone(deadLetterScript.Exec(ctx, b.c, keys, args)); err != nil {
		return fmt.Errorf("dead-letter %s: %w", m.ID, classify(err))
	}
	return nil
}

// Reclaim takes over up to limit entries of s that stayed pending longer than minIdle
// (their consumer died or hung), with their delivery count and how long they sat idle.
func (b *Broker) Reclaim(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error) {
	var out core.Reclaimed
	group := groupName(s.Name)
	pend, err := b.c.Do(ctx, b.c.B().Xpending().Key(s.Subject).Group(group).Idle(minIdle.Milliseconds()).
		Start("-").End("+").Count(int64(limit)).Build()).ToArray()
	if isNoGroup(err) {
		return out, nil // Read recreates the group
	}
	if err != nil {
		return out, fmt.Errorf("xpending %s: %w", s.Subject, classify(err))
	}
	if len(pend) == 0 {
		return out, nil
	}
	type pinfo struct{ idle, count int64 }
	info := make(map[string]pinfo, len(pend))
	first := ""
	for _, p := range pend {
		row, err := p.ToArray()
		if err != nil || len(row) < 4 {
			continue
		}
		id, _ := row[0].ToString()
		idle, _ := row[2].AsInt64()
		cnt, _ := row[3].AsInt64()
		info[id] = pinfo{idle, cnt}
		if first == "" {
			first = id
		}
	}
	cursor := first
	// XAUTOCLAIM scans at most COUNT*10 PEL entries per call; loop the cursor, bounded.
	for range 16 {
		if len(out.Messages) >= limit || cursor == "0-0" {
			break
		}
		res, err := b.c.Do(ctx, b.c.B().Xautoclaim().Key(s.Subject).Group(group).Consumer(consumer).
			MinIdleTime(strconv.FormatInt(minIdle.Milliseconds(), 10)).Start(cursor).
			Count(int64(limit-len(out.Messages))).Build()).ToArray()
		if err != nil {
			return out, fmt.Errorf("xautoclaim %s: %w", s.Subject, classify(err))
		}
		if len(res) < 2 {
			break
		}
		cursor, _ = res[0].ToString()
		entries, _ := res[1].ToArray()
		for _, em := range entries {
			if em.IsNil() {
				continue
			}
			e, err := em.AsXRangeEntry()
			if err != nil {
				continue
			}
			if e.FieldValues == nil {
				// Redis 6.2 returns claimed-but-deleted entries with nil fields.
				out.Lost = append(out.Lost, e.ID)
				continue
			}
			m := DecodeEntry(s.Subject, e)
			if pi, ok := info[e.ID]; ok {
				m.Deliveries = int(pi.count) + 1
				m.IdleMS = pi.idle
			} else {
				m.Deliveries = 2
				m.IdleMS = minIdle.Milliseconds()
			}
			out.Messages = append(out.Messages, m)
		}
		if len(res) > 2 {
			deleted, _ := res[2].AsStrSlice()
			out.Lost = append(out.Lost, deleted...)
		}
	}
	if len(out.Lost) > 0 {
		// Redis 7 already dropped deleted ids from the PEL; acking them is harmless and
		// covers servers that did not.
		if err := b.Ack(ctx, s.Subject, s.Name, out.Lost...); err != nil {
			return out, err
		}
	}
	return out, nil
}

// Seek moves the subscription's group cursor: "beginning", "end", an entry id (delivery
// resumes after it) or a time (delivery resumes with the first entry at or after it).
// Entries already handed out stay pending and are settled as usual.
func (b *Broker) Seek(ctx context.Context, s *core.Subscription, to string, at time.Time) error {
	id := to
	switch {
	case to == "beginning":
		id = "0"
	case to == "end":
		id = "$"
	case !at.IsZero():
		// Entry ids start with their millisecond time: resume after the last id of the
		// millisecond before at.
		id = strconv.FormatInt(at.UnixMilli()-1, 10) + "-18446744073709551615"
		if at.UnixMilli() <= 0 {
			id = "0"
		}
	}
	err := b.c.Do(ctx, b.c.B().XgroupSetid().Key(s.Subject).Group(groupName(s.Name)).Id(id).Build()).Error()
	if isNoGroup(err) || isNoKey(err) {
		if _, cerr := b.EnsureGroup(ctx, s.Subject, s.Name, "beginning"); cerr != nil {
			return cerr
		}
		err = b.c.Do(ctx, b.c.B().XgroupSetid().Key(s.Subject).Group(groupName(s.Name)).Id(id).Build()).Error()
	}
	if err != nil {
		return fmt.Errorf("xgroup setid %s: %w", s.Subject, classify(err))
	}
	return nil
}

// PurgeDeadLetters deletes the subscription's dead letters and returns how many there were.
func (b *Broker) PurgeDeadLetters(ctx context.Context, s *core.Subscription) (int64, error) {
	key := dlqKey(s.Subject, s.Name)
	res := b.c.DoMulti(ctx, b.c.B().Xlen().Key(key).Build(), b.c.B().Del().Key(key).Build())
	n, err := res[0].AsInt64()
	if err == nil {
		err = res[1].Error()
	}
	if err != nil {
		return 0, fmt.Errorf("purge dlq of %s: %w", s.Name, classify(err))
	}
	return n, nil
}

// PruneConsumers removes consumers of the subscription's group that hold nothing and have
// been idle longer than idleOver: every bridge process (and every ordered runner) joins
// under a name of its own, and the names of those long gone would pile up otherwise.
// A consumer with pending entries is never removed (that would orphan them).
func (b *Broker) PruneConsumers(ctx context.Context, s *core.Subscription, idleOver time.Duration) (int, error) {
	rows, err := b.c.Do(ctx, b.c.B().XinfoConsumers().Key(s.Subject).Group(groupName(s.Name)).Build()).ToArray()
	if err != nil {
		if isNoGroup(err) || isNoKey(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("xinfo consumers %s: %w", s.Subject, classify(err))
	}
	var cmds rueidis.Commands
	for _, row := range rows {
		kv, err := row.AsMap()
		if err != nil {
			continue
		}
		name, pending, idle := kv["name"], kv["pending"], kv["idle"]
		n, _ := name.ToString()
		p, _ := pending.AsInt64()
		i, _ := idle.AsInt64()
		if n != "" && p == 0 && time.Duration(i)*time.Millisecond > idleOver {
			cmds = append(cmds, b.c.B().XgroupDelconsumer().Key(s.Subject).Group(groupName(s.Name)).Consumername(n).Build())
		}
	}
	removed := 0
	for _, r := range b.c.DoMulti(ctx, cmds...) {
		if r.Error() == nil {
			removed++
		}
	}
	return removed, nil
}
