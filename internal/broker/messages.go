package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// A message id tells where its message lives (see core.MessageID and newMessageID):
// "<subject>:<entry id>" on a stream, "<subject>:l<ms>-<hex>" on a list, "p…" on Pub/Sub,
// "s<due ms>-<hex>" for a scheduled publish, "c<tick ms>-<hex>" for a schedule's tick (see
// ScheduleMessageID), "x<hash>" for a value another producer pushed.
type idKind byte

const (
	kindStream    idKind = 'e'
	kindList      idKind = 'l'
	kindPubSub    idKind = 'p'
	kindScheduled idKind = 's'
	kindTick      idKind = 'c'
	kindForeign   idKind = 'x'
)

// parseMessageID splits id into its subject, kind, and the time it carries (zero if none).
func parseMessageID(id string) (subject string, kind idKind, at time.Time, ok bool) {
	i := strings.LastIndexByte(id, ':')
	if i <= 0 || i == len(id)-1 || !validID(id) {
		return "", 0, time.Time{}, false
	}
	subject, rest := strings.ReplaceAll(id[:i], "~", "."), id[i+1:]
	if !core.ValidSubject(subject) {
		return "", 0, time.Time{}, false
	}
	msPart, tail, found := strings.Cut(rest, "-")
	switch {
	case rest[0] >= '0' && rest[0] <= '9':
		if !found || !digits(msPart) || !digits(tail) {
			return "", 0, time.Time{}, false
		}
		kind = kindStream
	case strings.ContainsRune("lpsc", rune(rest[0])):
		msPart = msPart[1:]
		if !found || !digits(msPart) {
			return "", 0, time.Time{}, false
		}
		kind = idKind(rest[0])
	case rest[0] == 'x':
		return subject, kindForeign, time.Time{}, true
	default:
		return "", 0, time.Time{}, false
	}
	ms, err := strconv.ParseInt(msPart, 10, 64)
	if err != nil {
		return "", 0, time.Time{}, false
	}
	return subject, kind, time.UnixMilli(ms).UTC(), true
}

func digits(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// entryScript reads one stream entry (KEYS[1], id ARGV[1]) with its payload cut to ARGV[2]
// bytes (plus _size when cut), so a huge body never crosses the wire whole.
var entryScript = rueidis.NewLuaScript(`
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local cut, f, out = tonumber(ARGV[2]), e[1][2], {}
for j = 1, #f, 2 do
  local v = f[j+1]
  if f[j] == '_payload' and #v > cut then
    out[#out+1] = '_size'
    out[#out+1] = tostring(#v)
    v = string.sub(v, 1, cut)
  end
  out[#out+1] = f[j]
  out[#out+1] = v
end
return {e[1][1], out}`)

// findEntryScript scans up to ARGV[3] entries of KEYS[1] from ARGV[1] for one whose field
// ARGV[4] is ARGV[2]; it returns {last id scanned or ” at the end, id found or ”}.
var findEntryScript = rueidis.NewLuaScript(`
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[3]))
for _, e in ipairs(entries) do
  local f = e[2]
  for j = 1, #f, 2 do
    if f[j] == ARGV[4] and f[j+1] == ARGV[2] then return {'', e[1]} end
  end
end
if #entries == tonumber(ARGV[3]) then return {entries[#entries][1], ''} end
return {'', ''}`)

// findEntry looks for the entry of key whose field is value, from start, reading at most
// limit entries (in small steps: entries may hold large bodies). It returns "" when none.
func (b *Broker) findEntry(ctx context.Context, key, start, field, value string, limit int) (string, error) {
	const step = 50
	for n := 0; n < limit; n += step {
		arr, err := findEntryScript.Exec(ctx, b.c, []string{key}, []string{start, value, strconv.Itoa(step), field}).AsStrSlice()
		if err != nil {
			if isNoKey(err) || rueidis.IsRedisNil(err) {
				return "", nil
			}
			return "", classify(err)
		}
		if len(arr) != 2 {
			return "", fmt.Errorf("find entry in %s: unexpected reply", key)
		}
		if arr[1] != "" {
			return arr[1], nil
		}
		if arr[0] == "" {
			return "", nil
		}
		start = "(" + arr[0]
	}
	return "", nil
}

// entryWithBody reads one entry of key with its body cut to cut bytes.
func (b *Broker) entryWithBody(ctx context.Context, key, id string, cut int) (rueidis.XRangeEntry, bool, error) {
	e, err := entryScript.Exec(ctx, b.c, []string{key}, []string{id, strconv.Itoa(cut)}).AsXRangeEntry()
	if err != nil {
		if rueidis.IsRedisNil(err) || isNoKey(err) {
			return e, false, nil
		}
		return e, false, classify(err)
	}
	return e, true, nil
}

// How far a lookup searches for an entry written after its id was given out (a scheduled
// publish appended when due, a dead letter).
const findEntryLimit = 20_000

// LookupMessage finds message id and where it stands for each of subs (the subscriptions
// of its subject; the others are ignored), with its body cut to 64 KiB. found is false
// when nothing of the message is left: no body and no attempt.
func (b *Broker) LookupMessage(ctx context.Context, id string, subs []*core.Subscription) (v core.MessageView, found bool, err error) {
	subject, kind, at, ok := parseMessageID(id)
	if !ok {
		return v, false, nil
	}
	v = core.MessageView{ID: id, Subject: subject, PublishedAt: at, Transport: core.TransportStream}
	switch kind {
	case kindList:
		v.Transport = core.TransportList
	case kindPubSub:
		v.Transport = core.TransportPubSub
	case kindForeign:
		v.Transport = "" // a list or a channel: only its subscriptions' attempts tell
	}

	// The message itself: its stream entry, or a copy the bridge keeps (scheduled, retry, DLQ).
	entryID, scheduled := "", false
	switch kind {
	case kindStream:
		entryID = id[strings.LastIndexByte(id, ':')+1:]
	case kindScheduled:
		raw, err := b.c.Do(ctx, b.c.B().Hget().Key(scheduledDataKey).Field(id).Build()).ToString()
		if err == nil {
			var rec scheduledRecord
			if json.Unmarshal([]byte(raw), &rec) == nil {
				v.HasBody, v.Headers, v.Body, v.Size = true, rec.Headers, rec.Body, len(rec.Body)
				scheduled = true
			}
		} else if !rueidis.IsRedisNil(err) {
			return v, false, fmt.Errorf("lookup %s: %w", id, classify(err))
		}
		if !v.HasBody {
			if entryID, err = b.findEntry(ctx, subject, strconv.FormatInt(at.UnixMilli(), 10), idField, id, findEntryLimit); err != nil {
				return v, false, fmt.Errorf("lookup %s: %w", id, err)
			}
		}
	case kindTick:
		// Appended at or after its tick, by whichever process fired it first.
		var err error
		if entryID, err = b.findEntry(ctx, subject, strconv.FormatInt(at.UnixMilli(), 10), idField, id, findEntryLimit); err != nil {
			return v, false, fmt.Errorf("lookup %s: %w", id, err)
		}
	}
	inStream := false
	if entryID != "" {
		e, ok, err := b.entryWithBody(ctx, subject, entryID, maxViewBody)
		if err != nil {
			return v, false, fmt.Errorf("lookup %s: %w", id, err)
		}
		if ok {
			inStream = true
			b.setBody(&v, subject, e)
			if kind == kindScheduled || kind == kindTick {
				v.PublishedAt = entryTime(e.ID)
			}
		}
	}

	var mine []*core.Subscription
	for _, s := range subs {
		if s.Subject == subject || (s.Pattern && v.Transport != core.TransportStream && globMatch(s.Subject, subject)) {
			mine = append(mine, s)
		}
	}
	var groups map[string]groupPosition
	if inStream {
		if groups, err = b.groupPositions(ctx, subject, entryID, mine); err != nil {
			return v, false, fmt.Errorf("lookup %s: %w", id, err)
		}
	}
	from := v.PublishedAt.Add(-time.Second)
	if kind == kindForeign {
		from = time.Time{}
	}
	for _, s := range mine {
		st, err := b.messageState(ctx, s, &v, from, inStream, scheduled, groups)
		if err != nil {
			return v, false, fmt.Errorf("lookup %s: %w", id, err)
		}
		if st != nil {
			v.States = append(v.States, *st)
		}
	}
	if len(v.Body) > maxViewBody {
		v.Body, v.Truncated = v.Body[:maxViewBody], true
	}
	return v, v.HasBody || len(v.States) > 0, nil
}

func (b *Broker) setBody(v *core.MessageView, subject string, e rueidis.XRangeEntry) {
	m := DecodeEntry(subject, e)
	v.HasBody, v.Headers, v.Body, v.Size = true, m.Headers, m.Body, len(m.Body)
	delete(v.Headers, sizeField)
	if n, err := strconv.Atoi(e.FieldValues[sizeField]); err == nil && n > len(m.Body) {
		v.Size, v.Truncated = n, true
	}
}

// globMatch is Redis's pattern match as far as subjects go (they hold no '/').
func globMatch(pattern, subject string) bool {
	ok, err := path.Match(pattern, subject)
	return err == nil && ok
}

// groupPosition is where a subscription's group stands relative to one entry.
type groupPosition struct {
	exists  bool
	read    bool // the group has read past (or up to) the entry
	pending bool // the entry is delivered and not yet acknowledged
}

func (b *Broker) groupPositions(ctx context.Context, subject, entryID string, subs []*core.Subscription) (map[string]groupPosition, error) {
	cmds := rueidis.Commands{b.c.B().XinfoGroups().Key(subject).Build()}
	var streamSubs []*core.Subscription
	for _, s := range subs {
		if s.Transport == core.TransportStream {
			streamSubs = append(streamSubs, s)
			cmds = append(cmds, b.c.B().Xpending().Key(subject).Group(groupName(s.Name)).Start(entryID).End(entryID).Count(1).Build())
		}
	}
	out := make(map[string]groupPosition, len(streamSubs))
	if len(streamSubs) == 0 {
		return out, nil
	}
	res := b.c.DoMulti(ctx, cmds...)
	infos, err := res[0].ToArray()
	if err != nil && !isNoKey(err) {
		return nil, classify(err)
	}
	last := map[string]string{}
	for _, g := range infos {
		kv, err := g.AsMap()
		if err != nil {
			continue
		}
		nm, ldi := kv["name"], kv["last-delivered-id"]
		name, _ := nm.ToString()
		last[name], _ = ldi.ToString()
	}
	for i, s := range streamSubs {
		ldi, ok := last[groupName(s.Name)]
		if !ok {
			continue
		}
		p := groupPosition{exists: true, read: !entryLess(ldi, entryID)}
		if arr, err := res[i+1].ToArray(); err == nil && len(arr) > 0 {
			p.pending = true
		}
		out[s.Name] = p
	}
	return out, nil
}

// entryLess compares two stream entry ids.
func entryLess(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	ami, _ := strconv.ParseUint(am, 10, 64)
	bmi, _ := strconv.ParseUint(bm, 10, 64)
	if ami != bmi {
		return ami < bmi
	}
	asi, _ := strconv.ParseUint(as, 10, 64)
	bsi, _ := strconv.ParseUint(bs, 10, 64)
	return asi < bsi
}

// messageState decides where v stands for s; nil when s has nothing to say about it (it
// did not exist when the message was published, or never saw it).
func (b *Broker) messageState(ctx context.Context, s *core.Subscription, v *core.MessageView, from time.Time,
	inStream, scheduled bool, groups map[string]groupPosition) (*core.MessageState, error) {
	attempts, err := b.MessageAttempts(ctx, s, v.ID, from)
	if err != nil {
		return nil, err
	}
	retrying := false
	if s.Transport != core.TransportPubSub {
		_, err := b.c.Do(ctx, b.c.B().Zscore().Key(retryKey(s.Subject, s.Name)).Member(v.ID).Build()).AsFloat64()
		switch {
		case err == nil:
			retrying = true
		case !rueidis.IsRedisNil(err):
			return nil, classify(err)
		}
		if retrying && !v.HasBody {
			b.retryBody(ctx, s, v)
		}
	}
	st := &core.MessageState{Subscription: s.Name, Attempts: attempts}
	var last string
	if len(attempts) > 0 {
		last = attempts[len(attempts)-1].Outcome
	}
	pos, inGroup := groups[s.Name]
	switch {
	case retrying:
		st.State = core.StateRetrying
	case last == core.OutcomeAck:
		st.State = core.StateDelivered
	case last == core.OutcomeFiltered:
		st.State = core.StateFiltered
	case last == core.OutcomeDeadLetter:
		st.State = core.StateDeadLettered
		if !v.HasBody {
			if err := b.deadLetterBody(ctx, s, v); err != nil {
				return nil, err
			}
		}
	case last == core.OutcomeFailed:
		st.State = core.StateFailed
	case scheduled && s.Transport == core.TransportStream:
		st.State = core.StatePending // not due yet
	case inStream && inGroup && (pos.pending || !pos.read):
		st.State = core.StatePending
	case inStream && inGroup:
		if len(attempts) == 0 && s.CreatedAt.After(v.PublishedAt) {
			return nil, nil // the subscription did not exist yet
		}
		// Acknowledged, and its attempts already left the log (or the log is off).
		st.State = core.StateDelivered
	case inStream:
		return nil, nil // no group: this subscription never read it
	case len(attempts) > 0 && s.Transport == core.TransportStream:
		// Retried (last outcome retry) and no longer anywhere: removed by the hard cap.
		st.State = core.StateExpired
	case len(attempts) > 0:
		st.State = core.StatePending // taken from the retry set, or back in a processing list
	default:
		return nil, nil
	}
	return st, nil
}

// retryBody fills v's body from s's retry copy.
func (b *Broker) retryBody(ctx context.Context, s *core.Subscription, v *core.MessageView) {
	raw, err := b.c.Do(ctx, b.c.B().Hget().Key(retryDataKey(s.Subject, s.Name)).Field(v.ID).Build()).ToString()
	if err != nil {
		return
	}
	var rec retryRecord
	if json.Unmarshal([]byte(raw), &rec) == nil {
		v.HasBody, v.Headers, v.Body, v.Size = true, rec.Headers, rec.Body, len(rec.Body)
	}
}

// deadLetterBody fills v's body from s's dead letter of it, if it is still there.
func (b *Broker) deadLetterBody(ctx context.Context, s *core.Subscription, v *core.MessageView) error {
	key := dlqKey(s.Subject, s.Name)
	start := "-"
	if !v.PublishedAt.IsZero() {
		start = strconv.FormatInt(v.PublishedAt.UnixMilli(), 10)
	}
	eid, err := b.findEntry(ctx, key, start, "_id", v.ID, findEntryLimit)
	if err != nil || eid == "" {
		return err
	}
	e, ok, err := b.entryWithBody(ctx, key, eid, maxViewBody)
	if err != nil || !ok {
		return err
	}
	d := decodeDeadLetter(s.Subject, e)
	v.HasBody, v.Headers, v.Body, v.Size, v.Truncated = true, d.Headers, d.Body, d.Size, d.Truncated
	delete(v.Headers, core.HeaderDeadLetterReason)
	return nil
}

// maxViewBody is how much of a body a message view shows (SPEC §9).
const maxViewBody = 64 << 10
