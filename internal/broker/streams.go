package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
	"golang.org/x/net/http/httpguts"
)

// ReclaimOthers is Reclaim for an ordered subscription: it takes over entries pending
// longer than minIdle under any consumer but the caller. The caller's own pending entries
// are waiting behind their partition key on purpose; claiming them would only inflate
// their delivery counts.
func (b *Broker) ReclaimOthers(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error) {
	var out core.Reclaimed
	group := groupName(s.Name)
	type pinfo struct{ idle, count int64 }
	info := map[string]pinfo{}
	var ids []string
	// Page through the PEL in id order: the caller's own entries, possibly many, come first
	// and must not use up the page.
	start := "-"
	for page := 0; page < 64 && len(ids) < limit; page++ {
		pend, err := b.c.Do(ctx, b.c.B().Xpending().Key(s.Subject).Group(group).Idle(minIdle.Milliseconds()).
			Start(start).End("+").Count(256).Build()).ToArray()
		if isNoGroup(err) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("xpending %s: %w", s.Subject, classify(err))
		}
		for _, p := range pend {
			row, err := p.ToArray()
			if err != nil || len(row) < 4 {
				continue
			}
			id, _ := row[0].ToString()
			start = "(" + id
			if owner, _ := row[1].ToString(); owner == consumer || len(ids) == limit {
				continue
			}
			idle, _ := row[2].AsInt64()
			cnt, _ := row[3].AsInt64()
			info[id] = pinfo{idle, cnt}
			ids = append(ids, id)
		}
		if len(pend) < 256 {
			break
		}
	}
	if len(ids) == 0 {
		return out, nil
	}
	entries, err := b.c.Do(ctx, b.c.B().Xclaim().Key(s.Subject).Group(group).Consumer(consumer).
		MinIdleTime(strconv.FormatInt(minIdle.Milliseconds(), 10)).Id(ids...).Build()).ToArray()
	if err != nil {
		return out, fmt.Errorf("xclaim %s: %w", s.Subject, classify(err))
	}
	claimed := map[string]bool{}
	for _, em := range entries {
		if em.IsNil() {
			continue
		}
		e, err := em.AsXRangeEntry()
		if err != nil {
			continue
		}
		claimed[e.ID] = true
		if e.FieldValues == nil {
			out.Lost = append(out.Lost, e.ID)
			continue
		}
		m := DecodeEntry(s.Subject, e)
		m.Deliveries, m.IdleMS = int(info[e.ID].count)+1, info[e.ID].idle
		out.Messages = append(out.Messages, m)
	}
	// Ids XCLAIM did not return were claimed by someone else meanwhile, or no longer exist
	// (Redis 7 drops those from the PEL); which one is told by XRANGE.
	var missing []string
	var checks rueidis.Commands
	for _, id := range ids {
		if !claimed[id] {
			missing = append(missing, id)
			checks = append(checks, b.c.B().Xrange().Key(s.Subject).Start(id).End(id).Build())
		}
	}
	for i, r := range b.c.DoMulti(ctx, checks...) {
		if e, err := r.AsXRange(); err == nil && len(e) == 0 {
			out.Lost = append(out.Lost, missing[i])
		}
	}
	if len(out.Lost) > 0 {
		if err := b.Ack(ctx, s.Subject, s.Name, out.Lost...); err != nil {
			return out, err
		}
	}
	return out, nil
}

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
	if s.Transport == core.TransportList {
		if err := b.destroyList(ctx, s); err != nil {
			return fmt.Errorf("release processing lists of %s: %w", s.Name, err)
		}
	}
	if s.Transport != core.TransportStream && s.Transport != "" {
		return b.deleteKeys(ctx, s.Subject, s.Name)
	}
	return b.destroyGroup(ctx, s.Subject, s.Name)
}

func (b *Broker) deleteKeys(ctx context.Context, subject, sub string) error {
	err := b.c.Do(ctx, b.c.B().Del().Key(markerKey(subject, sub), retryKey(subject, sub), retryDataKey(subject, sub), retryCountKey(subject, sub),
		dlqKey(subject, sub), statsKey(subject, sub), attemptsKey(subject, sub), circuitKey(subject, sub), leasesKey(subject, sub)).Build()).Error()
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

// Read hands out up to count new entries of the subscription's group to consumer. With
// wait 0 it never blocks: the engine reads when it knows (or suspects) there is something
// to read, so no connection is held waiting per subscription. With wait > 0 it waits up
// to that long for an entry (XREADGROUP BLOCK): the engine asks for that only while a
// subscription is busy.
func (b *Broker) Read(ctx context.Context, s *core.Subscription, consumer string, count int, wait time.Duration) ([]core.Message, error) {
	// Two whole chains: rueidis builders append to one command as they go, so a shared
	// prefix cannot be branched, and its intermediate types are not importable.
	var cmd rueidis.Completed
	if wait > 0 {
		// A blocking read runs on a pooled connection of its own: Redis answers it the moment
		// an entry is added, without a round trip after the publish.
		cmd = b.c.B().Xreadgroup().Group(groupName(s.Name), consumer).Count(int64(count)).
			Block(max(1, wait.Milliseconds())).Streams().Key(s.Subject).Id(">").Build()
	} else {
		cmd = b.c.B().Xreadgroup().Group(groupName(s.Name), consumer).Count(int64(count)).
			Streams().Key(s.Subject).Id(">").Build()
	}
	reply, err := b.c.Do(ctx, cmd).ToMessage()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if isNoGroup(err) {
		return nil, fmt.Errorf("xreadgroup %s %s: %w", s.Subject, groupName(s.Name), core.ErrNoGroup)
	}
	if err != nil {
		return nil, fmt.Errorf("xreadgroup %s: %w", s.Subject, classify(err))
	}
	// The reply is walked in place: AsXRead would build a map of every entry's fields
	// only for DecodeEntry to read it once.
	entries, err := streamEntries(reply, s.Subject)
	if err != nil {
		return nil, fmt.Errorf("xreadgroup %s: %w", s.Subject, err)
	}
	msgs := make([]core.Message, 0, len(entries))
	var kv []string // one buffer for every entry's fields: decodePairs keeps none of it
	for i := range entries {
		var id string
		id, kv, err = entryPairs(&entries[i], kv[:0])
		if err != nil {
			return nil, fmt.Errorf("xreadgroup %s: %w", s.Subject, err)
		}
		m := decodePairs(s.Subject, id, kv)
		m.Deliveries = 1
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// streamEntries is the entries of one stream in an XREAD or XREADGROUP reply: a map of
// stream to entries in RESP3, an array of [stream, entries] pairs in RESP2.
func streamEntries(reply rueidis.RedisMessage, stream string) ([]rueidis.RedisMessage, error) {
	if reply.IsMap() {
		streams, err := reply.AsMap()
		if err != nil {
			return nil, err
		}
		e, ok := streams[stream]
		if !ok {
			return nil, nil
		}
		return e.ToArray()
	}
	pairs, err := reply.ToArray()
	if err != nil {
		return nil, err
	}
	for i := range pairs {
		p, err := pairs[i].ToArray()
		if err != nil || len(p) != 2 {
			return nil, fmt.Errorf("stream reply: want [stream, entries], got %d items (%v)", len(p), err)
		}
		if name, _ := p[0].ToString(); name == stream {
			return p[1].ToArray()
		}
	}
	return nil, nil
}

// entryPairs appends the field/value pairs of a stream entry ([id, [field, value, ...]]) to
// kv, as Redis sent them. An entry deleted since it was read has no fields: kv stays nil.
func entryPairs(e *rueidis.RedisMessage, kv []string) (id string, _ []string, err error) {
	parts, err := e.ToArray()
	if err != nil || len(parts) != 2 {
		return "", kv, fmt.Errorf("stream entry: want [id, fields], got %d items (%v)", len(parts), err)
	}
	if id, err = parts[0].ToString(); err != nil {
		return "", kv, fmt.Errorf("stream entry id: %w", err)
	}
	if parts[1].IsNil() {
		return id, nil, nil
	}
	if parts[1].IsMap() {
		fields, err := parts[1].AsStrMap()
		if err != nil {
			return "", kv, fmt.Errorf("stream entry fields: %w", err)
		}
		return id, appendPairs(kv, fields), nil
	}
	fields, err := parts[1].ToArray()
	if err != nil {
		return "", kv, fmt.Errorf("stream entry fields: %w", err)
	}
	for i := range fields {
		v, _ := fields[i].ToString() // a non-string field reads as "", as AsStrMap has it
		kv = append(kv, v)
	}
	if kv == nil {
		kv = []string{} // present but empty: not a deleted entry
	}
	return id, kv, nil
}

// appendPairs appends a map's fields to kv as field/value pairs (never nil: the fields
// are there, even if none).
func appendPairs(kv []string, fields map[string]string) []string {
	if kv == nil {
		kv = make([]string, 0, 2*len(fields))
	}
	for k, v := range fields {
		kv = append(kv, k, v)
	}
	return kv
}

// DecodeEntry turns a stream entry into a message. Entries in ruststream-fred's layout give
// their payload and h: headers; any other entry is delivered as a JSON object of its fields.
func DecodeEntry(subject string, e rueidis.XRangeEntry) core.Message {
	var kv []string
	if e.FieldValues != nil {
		kv = appendPairs(nil, e.FieldValues)
	}
	return decodePairs(subject, e.ID, kv)
}

// decodePairs is DecodeEntry over the entry's field/value pairs in stream order (nil: an
// entry without fields). A field given twice counts as its last value, as in a map of them.
func decodePairs(subject, entryID string, kv []string) core.Message {
	m := core.Message{ID: core.MessageID(subject, entryID), Subject: subject, EntryID: entryID, Origin: core.FromStream}
	var id, payload string
	hasPayload, headers := false, 0
	for i := 0; i+1 < len(kv); i += 2 {
		switch k := kv[i]; {
		case k == idField:
			id = kv[i+1]
		case k == payloadField:
			payload, hasPayload = kv[i+1], true
		case strings.HasPrefix(k, headerPrefix):
			headers++
		}
	}
	// A message published with a delay got its id before its entry existed; the entry
	// carries it so the id stays the one the publisher was given.
	if validID(id) {
		m.ID = id
	}
	if !hasPayload {
		var fields map[string]string
		if kv != nil {
			fields = make(map[string]string, len(kv)/2)
			for i := 0; i+1 < len(kv); i += 2 {
				fields[kv[i]] = kv[i+1]
			}
		}
		m.Body, _ = json.Marshal(fields) // map[string]string cannot fail to marshal
		m.Headers = map[string]string{core.HeaderContentType: "application/json"}
		return m
	}
	m.Body = []byte(payload)
	m.Headers = make(map[string]string, headers)
	for i := 0; i+1 < len(kv); i += 2 {
		// Another producer may have written anything: a header that is not valid HTTP
		// would make every push of the message fail, so it is left out.
		if name, ok := strings.CutPrefix(kv[i], headerPrefix); ok && httpguts.ValidHeaderFieldName(name) && httpguts.ValidHeaderFieldValue(kv[i+1]) {
			m.Headers[strings.ToLower(name)] = kv[i+1]
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
		// Nothing to take over yet; the oldest entry pending says when there may be.
		oldest, err := b.c.Do(ctx, b.c.B().Xpending().Key(s.Subject).Group(group).Start("-").End("+").Count(1).Build()).ToArray()
		if err == nil && len(oldest) > 0 {
			if row, err := oldest[0].ToArray(); err == nil && len(row) >= 3 {
				idle, _ := row[2].AsInt64()
				out.NextStale = max(minIdle-time.Duration(idle)*time.Millisecond, time.Millisecond)
			}
		}
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

// sweepChunk bounds the keys of one XREAD of a sweep.
const sweepChunk = 1000

// NewEntries reports, for each subject in after whose stream holds an entry newer than the
// id given, the first such entry's id. It costs one XREAD per cluster slot in use (one in
// all on a single server), however many subjects: the engine sweeps idle subscriptions'
// subjects with it to notice what other producers wrote.
func (b *Broker) NewEntries(ctx context.Context, after map[string]string) (map[string]string, error) {
	// On a cluster a multi-key XREAD must stay in one slot; a single server takes them all.
	cluster := b.c.Mode() == rueidis.ClientModeCluster
	bySlot := map[uint16][]string{}
	for subject := range after {
		var slot uint16
		if cluster {
			cmd := b.c.B().Xlen().Key(subject).Build()
			slot = cmd.Slot()
		}
		bySlot[slot] = append(bySlot[slot], subject)
	}
	var cmds rueidis.Commands
	for _, subjects := range bySlot {
		for len(subjects) > 0 {
			chunk := subjects[:min(len(subjects), sweepChunk)]
			subjects = subjects[len(chunk):]
			ids := make([]string, len(chunk))
			for i, s := range chunk {
				ids[i] = after[s]
			}
			cmds = append(cmds, b.c.B().Xread().Count(1).Streams().Key(chunk...).Id(ids...).Build())
		}
	}
	out := map[string]string{}
	for _, r := range b.c.DoMulti(ctx, cmds...) {
		res, err := r.AsXRead()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("xread: %w", classify(err))
		}
		for subject, entries := range res {
			if len(entries) > 0 {
				out[subject] = entries[0].ID
			}
		}
	}
	return out, nil
}

// LastEntries returns the id of the newest entry of each subject's stream ("0-0" when it
// is empty or missing), in one pipelined round trip.
func (b *Broker) LastEntries(ctx context.Context, subjects []string) (map[string]string, error) {
	cmds := make(rueidis.Commands, len(subjects))
	for i, s := range subjects {
		cmds[i] = b.c.B().Xrevrange().Key(s).End("+").Start("-").Count(1).Build()
	}
	out := make(map[string]string, len(subjects))
	for i, r := range b.c.DoMulti(ctx, cmds...) {
		entries, err := r.AsXRange()
		if err != nil && !rueidis.IsRedisNil(err) {
			if errors.Is(classify(err), core.ErrWrongType) {
				out[subjects[i]] = "0-0"
				continue
			}
			return out, fmt.Errorf("xrevrange %s: %w", subjects[i], classify(err))
		}
		out[subjects[i]] = "0-0"
		if len(entries) > 0 {
			out[subjects[i]] = entries[0].ID
		}
	}
	return out, nil
}
