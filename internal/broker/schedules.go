package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// tickMarkerTTL is how long a tick stays marked as published. Every process fires a tick
// within moments of its time, and a tick at or before a schedule's last published tick is
// never due again (see the schedules package), so days are plenty.
const tickMarkerTTL = 72 * time.Hour

var (
	// KEYS: hash. ARGV: name, json. Returns {the previous json or false, the new version}.
	putScheduleScript = rueidis.NewLuaScript(`
local prev = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {prev, redis.call('HINCRBY', KEYS[1], '_version', 1)}`)
	// KEYS: hash. ARGV: name. Returns the deleted json, or false when there was none.
	delScheduleScript = rueidis.NewLuaScript(`
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[1], '_version', 1)
return prev`)
	// KEYS: stream, tick marker, last tick (one slot). ARGV: tick ms, marker TTL s, then the
	// XADD field/value pairs. Returns 1 when the message was appended, 0 when the tick had
	// been published already. The checks come before the first write: a script that fails
	// half-way keeps what it wrote, and a marker without its message would lose the tick.
	fireTickScript = rueidis.NewLuaScript(`
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'none' and t ~= 'stream' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local last = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local tick = tonumber(ARGV[1])
local fresh = redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2])
if fresh then redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3)) end
if tick > last then redis.call('SET', KEYS[3], ARGV[1]) end
if fresh then return 1 end
return 0`)
)

// ScheduleMessageID is the id of the message a schedule publishes to subject for tick:
// "<subject with '.' as '~'>:c<tick unix ms>-<hash of the schedule name>". The same for
// every process, so a tick published twice would carry one id; names may hold '.', which
// message ids may not, hence the hash.
func ScheduleMessageID(subject, schedule string, tick time.Time) string {
	h := sha256.Sum256([]byte(schedule))
	return idPrefix(subject) + "c" + strconv.FormatInt(tick.UnixMilli(), 10) + "-" + hex.EncodeToString(h[:6])
}

// FireTick publishes the message of one tick of a schedule to subject's stream, with its
// id in the entry, unless that tick was published already: then appended is false and
// nothing is written but the last tick. Every process may call it for the same tick;
// Redis publishes it once. A subject holding another type is core.ErrWrongType.
func (b *Broker) FireTick(ctx context.Context, subject, schedule string, tick time.Time, body []byte, headers map[string]string) (id string, appended bool, err error) {
	id = ScheduleMessageID(subject, schedule, tick)
	ms := tick.UnixMilli()
	keys := []string{subject, tickKey(subject, schedule, ms), lastTickKey(subject, schedule)}
	args := append([]string{strconv.FormatInt(ms, 10), strconv.FormatInt(int64(tickMarkerTTL/time.Second), 10)},
		streamArgs(body, headers, idField, id)...)
	n, err := fireTickScript.Exec(ctx, b.c, keys, args).AsInt64()
	if err != nil {
		return id, false, fmt.Errorf("fire schedule %s on %s: %w", schedule, subject, classify(err))
	}
	return id, n == 1, nil
}

// PutSchedule stores s and reports whether it replaced one. Unless s is paused, a subject
// that holds another type than a stream is core.ErrWrongType and nothing is stored: no
// tick could ever be published to it. (Pausing such a schedule is what its owner may want.)
func (b *Broker) PutSchedule(ctx context.Context, s *core.Schedule) (replaced bool, err error) {
	if !s.Paused {
		t, err := b.c.Do(ctx, b.c.B().Type().Key(s.Subject).Build()).ToString()
		if err != nil {
			return false, fmt.Errorf("type %s: %w", s.Subject, classify(err))
		}
		if t != "none" && t != "stream" {
			return false, fmt.Errorf("%s holds a %s: %w", s.Subject, t, core.ErrWrongType)
		}
	}
	raw, err := json.Marshal(s)
	if err != nil {
		return false, err
	}
	arr, err := putScheduleScript.Exec(ctx, b.c, []string{schedulesKey}, []string{s.Name, string(raw)}).ToArray()
	if err != nil || len(arr) != 2 {
		if err == nil {
			err = fmt.Errorf("unexpected reply %v", arr)
		}
		return false, fmt.Errorf("store schedule %s: %w", s.Name, classify(err))
	}
	prev, err := arr[0].ToString()
	if err != nil {
		return false, nil // nothing before: created
	}
	if old, err := decodeSchedule(s.Name, []byte(prev)); err == nil && old.Subject != s.Subject {
		// The old subject's last tick is of no use any more. Left behind it would only cost
		// a few bytes: ticks at or before the change never fire again anyway.
		_ = b.c.Do(ctx, b.c.B().Del().Key(lastTickKey(old.Subject, s.Name)).Build()).Error()
	}
	return true, nil
}

// GetSchedule returns the stored schedule or core.ErrNotFound.
func (b *Broker) GetSchedule(ctx context.Context, name string) (*core.Schedule, error) {
	raw, err := b.c.Do(ctx, b.c.B().Hget().Key(schedulesKey).Field(name).Build()).AsBytes()
	if rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("schedule %s: %w", name, core.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read schedule %s: %w", name, classify(err))
	}
	return decodeSchedule(name, raw)
}

func decodeSchedule(name string, raw []byte) (*core.Schedule, error) {
	var s core.Schedule
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("decode schedule %s: %w", name, err)
	}
	return &s, nil
}

// ListSchedules returns every stored schedule and the version of the set they belong to.
func (b *Broker) ListSchedules(ctx context.Context) ([]*core.Schedule, int64, error) {
	all, err := b.c.Do(ctx, b.c.B().Hgetall().Key(schedulesKey).Build()).AsStrMap()
	if err != nil {
		return nil, 0, fmt.Errorf("list schedules: %w", classify(err))
	}
	version, _ := strconv.ParseInt(all[versionField], 10, 64)
	out := make([]*core.Schedule, 0, len(all))
	for name, raw := range all {
		if name == versionField {
			continue
		}
		s, err := decodeSchedule(name, []byte(raw))
		if err != nil {
			return nil, 0, err
		}
		out = append(out, s)
	}
	return out, version, nil
}

// SchedulesVersion is bumped by every change of the stored schedules.
func (b *Broker) SchedulesVersion(ctx context.Context) (int64, error) {
	v, err := b.c.Do(ctx, b.c.B().Hget().Key(schedulesKey).Field(versionField).Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schedules version: %w", classify(err))
	}
	return v, nil
}

// DeleteSchedule removes the schedule, or answers core.ErrNotFound. Ticks it published stay
// in their stream.
func (b *Broker) DeleteSchedule(ctx context.Context, name string) error {
	prev, err := delScheduleScript.Exec(ctx, b.c, []string{schedulesKey}, []string{name}).ToString()
	if rueidis.IsRedisNil(err) {
		return fmt.Errorf("schedule %s: %w", name, core.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete schedule %s: %w", name, classify(err))
	}
	if old, err := decodeSchedule(name, []byte(prev)); err == nil {
		// Best effort, as in PutSchedule: a schedule created again under this name starts
		// after its own creation, whatever this key says.
		_ = b.c.Do(ctx, b.c.B().Del().Key(lastTickKey(old.Subject, name)).Build()).Error()
	}
	return nil
}

// ScheduleLastRuns returns the latest published tick of each schedule that has one, by name.
func (b *Broker) ScheduleLastRuns(ctx context.Context, scheds []*core.Schedule) (map[string]time.Time, error) {
	out := make(map[string]time.Time, len(scheds))
	if len(scheds) == 0 {
		return out, nil
	}
	cmds := make(rueidis.Commands, len(scheds))
	for i, s := range scheds {
		cmds[i] = b.c.B().Get().Key(lastTickKey(s.Subject, s.Name)).Build()
	}
	for i, res := range b.c.DoMulti(ctx, cmds...) {
		ms, err := res.AsInt64()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("last run of schedule %s: %w", scheds[i].Name, classify(err))
		}
		out[scheds[i].Name] = time.UnixMilli(ms).UTC()
	}
	return out, nil
}
