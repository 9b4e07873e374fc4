package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

var (
	// KEYS: marker, dlq, source, zset, data, counts, list counts, attempt log, leases.
	// ARGV: incarnation, mode, group, handle, id, the lease operation (see leaseLua), the
	// attempt (see logAttemptLua), then the DLQ entry's field/value pairs.
	deadLetterScript = rueidis.NewLuaScript(settleLua + logAttemptLua + markerLua + leaseLua + `
local lease = leaseOp(KEYS[9], ARGV[5], 6)
if lease ~= 0 then return lease end
local rest = logAttempt(KEYS[8], 9)
redis.call('XADD', KEYS[2], '*', unpack(ARGV, rest))
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
	d.Size = len(d.Body)
	if n, err := strconv.Atoi(e.FieldValues[sizeField]); err == nil && n > len(d.Body) {
		d.Size, d.Truncated = n, true
	}
	if _, ok := e.FieldValues[payloadField]; !ok {
		// Not written by the bridge; keep it listable with what it has.
		d.Headers = map[string]string{core.HeaderContentType: "application/json"}
	}
	for _, k := range []string{"_id", "_status", "_error", "_deliveries", "_time", sizeField} {
		delete(d.Headers, k)
	}
	return d
}

// pageScript reads up to ARGV[2] entries of a dead-letter stream after ARGV[1] ("-" for
// the start, "(<id>" after an id), each payload cut to ARGV[3] bytes, and stops early once
// the payloads it returns pass ARGV[4] bytes. One entry at a time, so even a page of huge
// dead letters never sits whole in memory, in Redis or in the bridge. It returns
// {more (0|1), entry, entry, ...}, entries as XRANGE gives them plus _size when cut.
var pageScript = rueidis.NewLuaScript(`
local start, limit, cut, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out, used = {0}, 0
for i = 1, limit do
  local e = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1)
  if #e == 0 then return out end
  local id, f = e[1][1], e[1][2]
  local fields = {}
  for j = 1, #f, 2 do
    local v = f[j+1]
    if f[j] == '_payload' then
      if #v > cut then
        fields[#fields+1] = '_size'
        fields[#fields+1] = tostring(#v)
        v = string.sub(v, 1, cut)
      end
      used = used + #v
    end
    fields[#fields+1] = f[j]
    fields[#fields+1] = v
  end
  out[#out+1] = {id, fields}
  start = '(' .. id
  if used >= budget and i < limit then
    out[1] = 1
    return out
  end
end
out[1] = 1
return out`)

// pageBudget stops a dead-letter page once its (cut) bodies pass it, so a listing's memory
// is bounded whatever the bodies' size and the page's limit.
const pageBudget = 4 << 20

// DeadLetters lists up to limit dead letters of s after the entry id after ("" = from the
// start), bodies cut to cut bytes (Truncated says which were).
func (b *Broker) DeadLetters(ctx context.Context, s *core.Subscription, after string, limit, cut int) (core.DeadLetterPage, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	var page core.DeadLetterPage
	arr, err := pageScript.Exec(ctx, b.c, []string{dlqKey(s.Subject, s.Name)},
		[]string{start, strconv.Itoa(limit), strconv.Itoa(cut), strconv.Itoa(pageBudget)}).ToArray()
	if err != nil {
		return page, fmt.Errorf("list dlq of %s: %w", s.Name, classify(err))
	}
	if len(arr) == 0 {
		return page, nil
	}
	more, _ := arr[0].AsInt64()
	page.More = more == 1
	page.DeadLetters = make([]core.DeadLetter, 0, len(arr)-1)
	for _, v := range arr[1:] {
		e, err := v.AsXRangeEntry()
		if err != nil {
			return page, fmt.Errorf("list dlq of %s: %w", s.Name, err)
		}
		page.DeadLetters = append(page.DeadLetters, decodeDeadLetter(s.Subject, e))
	}
	return page, nil
}

// findDeadLetterScript returns the entry id of the newest dead letter whose _id is ARGV[1],
// looking at no more than ARGV[2] entries, one at a time (newest first); "" if none.
var findDeadLetterScript = rueidis.NewLuaScript(`
local start = '+'
for i = 1, tonumber(ARGV[2]) do
  local e = redis.call('XREVRANGE', KEYS[1], start, '-', 'COUNT', 1)
  if #e == 0 then return '' end
  local f = e[1][2]
  for j = 1, #f, 2 do
    if f[j] == '_id' and f[j+1] == ARGV[1] then return e[1][1] end
  end
  start = '(' .. e[1][1]
end
return ''`)

// DeadLetterSearchDepth is how many of the newest dead letters a lookup by message id
// looks through.
const DeadLetterSearchDepth = 10000

// GetDeadLetter returns one whole dead letter of s, by its dead_letter_id (the entry id) or
// its message id (searched among the newest DeadLetterSearchDepth), or core.ErrNotFound.
func (b *Broker) GetDeadLetter(ctx context.Context, s *core.Subscription, id string) (core.DeadLetter, error) {
	key := dlqKey(s.Subject, s.Name)
	entryID := id
	if !core.ValidEntryID(id) {
		found, err := findDeadLetterScript.Exec(ctx, b.c, []string{key}, []string{id, strconv.Itoa(DeadLetterSearchDepth)}).ToString()
		if err != nil {
			return core.DeadLetter{}, fmt.Errorf("find dead letter %s: %w", id, classify(err))
		}
		if found == "" {
			return core.DeadLetter{}, fmt.Errorf("dead letter %s: %w", id, core.ErrNotFound)
		}
		entryID = found
	}
	entries, err := b.c.Do(ctx, b.c.B().Xrange().Key(key).Start(entryID).End(entryID).Build()).AsXRange()
	if err != nil && !rueidis.IsRedisNil(err) {
		return core.DeadLetter{}, fmt.Errorf("read dead letter %s: %w", id, classify(err))
	}
	if len(entries) == 0 {
		return core.DeadLetter{}, fmt.Errorf("dead letter %s: %w", id, core.ErrNotFound)
	}
	return decodeDeadLetter(s.Subject, entries[0]), nil
}

// DeadLetterCount is the size of the subscription's dead-letter stream.
func (b *Broker) DeadLetterCount(ctx context.Context, s *core.Subscription) (int64, error) {
	n, err := b.c.Do(ctx, b.c.B().Xlen().Key(dlqKey(s.Subject, s.Name)).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("xlen dlq of %s: %w", s.Name, classify(err))
	}
	return n, nil
}

// replayChunk bounds the bytes of whole dead letters a replay holds at once.
const replayChunk = 4 << 20

// ReplayDeadLetters moves dead letters of s back into its retry set, due now, with their
// original message ids and a fresh delivery budget. ids are message ids; nil replays all.
// It returns how many were moved. Nothing reaches another subscription. Memory stays
// bounded: the listing carries no bodies, and whole entries are read a few MiB at a time.
func (b *Broker) ReplayDeadLetters(ctx context.Context, s *core.Subscription, ids []string) (int, error) {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	key := dlqKey(s.Subject, s.Name)
	moved := 0
	after := ""
	for {
		page, err := b.DeadLetters(ctx, s, after, 500, 0)
		if err != nil || len(page.DeadLetters) == 0 {
			return moved, err
		}
		after = page.DeadLetters[len(page.DeadLetters)-1].EntryID
		var chunk []string
		size := 0
		flush := func() error {
			n, err := b.replayEntries(ctx, s, key, chunk)
			moved += n
			chunk, size = chunk[:0], 0
			return err
		}
		for _, d := range page.DeadLetters {
			if ids != nil && !want[d.ID] {
				continue
			}
			if len(chunk) > 0 && size+d.Size > replayChunk {
				if err := flush(); err != nil {
					return moved, err
				}
			}
			chunk = append(chunk, d.EntryID)
			size += d.Size
		}
		if len(chunk) > 0 {
			if err := flush(); err != nil {
				return moved, err
			}
		}
		if !page.More {
			return moved, nil
		}
	}
}

// replayEntries reads the given dead letters whole and moves each into the retry set, in
// one pipelined round trip for the reads and one for the moves.
func (b *Broker) replayEntries(ctx context.Context, s *core.Subscription, key string, entryIDs []string) (int, error) {
	reads := make(rueidis.Commands, len(entryIDs))
	for i, id := range entryIDs {
		reads[i] = b.c.B().Xrange().Key(key).Start(id).End(id).Build()
	}
	keys := []string{key, retryKey(s.Subject, s.Name), retryDataKey(s.Subject, s.Name), retryCountKey(s.Subject, s.Name)}
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	execs := make([]rueidis.LuaExec, 0, len(entryIDs))
	for _, r := range b.c.DoMulti(ctx, reads...) {
		entries, err := r.AsXRange()
		if err != nil && !rueidis.IsRedisNil(err) {
			return 0, fmt.Errorf("replay dead letters of %s: %w", s.Name, classify(err))
		}
		if len(entries) == 0 {
			continue // replayed or purged meanwhile
		}
		d := decodeDeadLetter(s.Subject, entries[0])
		id, rec, err := replayRecord(s, d)
		if err != nil {
			return 0, err
		}
		execs = append(execs, rueidis.LuaExec{Keys: keys, Args: []string{d.EntryID, id, rec, now}})
	}
	moved := 0
	for _, res := range replayScript.ExecMulti(ctx, b.c, execs...) {
		n, err := res.AsInt64()
		if err != nil {
			return moved, fmt.Errorf("replay dead letters of %s: %w", s.Name, classify(err))
		}
		moved += int(n)
	}
	return moved, nil
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

// DeadLetter copies m into the subscription's own dead-letter stream (ruststream-fred layout
// plus x-dead-letter-reason and the bridge's own _-fields) and settles the original, in one
// script.
func (b *Broker) DeadLetter(ctx context.Context, s *core.Subscription, m *core.Message, info core.DeadLetterInfo) error {
	mode, src := settleMode(s, m)
	args := make([]string, 0, 19+2*len(m.Headers))
	args = append(args, s.Incarnation(), mode, groupName(s.Name), m.EntryID, m.ID)
	args = append(args, leaseArgs(m, "", 0)...)
	args = append(args, b.attemptArgs(info.Attempt)...)
	args = append(args, payloadField, rueidis.BinaryString(m.Body))
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
		retryCountKey(s.Subject, s.Name), listCountKey(s.Subject, s.Name), attemptsKey(s.Subject, s.Name), leasesKey(s.Subject, s.Name)}
	if err := checkGone(deadLetterScript.Exec(ctx, b.c, keys, args)); err != nil {
		return fmt.Errorf("dead-letter %s: %w", m.ID, classify(err))
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
