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

// sizeField is added by pageScript to an entry whose payload it cut: the whole size.
const sizeField = "_size"

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
		b.c.B().Xlen().Key(s.Subject).Build(),
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
