package broker

import (
	"context"
	"encoding/json"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/redis/rueidis"
)

// scriptEnv is one real redis-server owned by a test, with a Broker on it. The Lua script
// tests share one per top-level test and call reset at the start of every case.
type scriptEnv struct {
	rs  *redistest.Server
	c   rueidis.Client
	b   *Broker
	ctx context.Context
}

func newScriptEnv(t *testing.T) *scriptEnv {
	t.Helper()
	rs := redistest.Start(t, redistest.Options{})
	c := rs.Client(t)
	return &scriptEnv{rs: rs, c: c, b: New(c), ctx: context.Background()}
}

// reset empties the server: every case starts from nothing.
func (e *scriptEnv) reset(t *testing.T) {
	t.Helper()
	e.must(t, "FLUSHALL")
}

// must runs a command and fails the test on an error reply (a nil reply is no error).
func (e *scriptEnv) must(t *testing.T, args ...string) rueidis.RedisResult {
	t.Helper()
	res := e.rs.Do(t, args...)
	if err := res.Error(); err != nil && !rueidis.IsRedisNil(err) {
		t.Fatalf("%v: %v", args, err)
	}
	return res
}

func (e *scriptEnv) int(t *testing.T, args ...string) int64 {
	t.Helper()
	n, err := e.must(t, args...).AsInt64()
	if err != nil && !rueidis.IsRedisNil(err) {
		t.Fatalf("%v: %v", args, err)
	}
	return n
}

func (e *scriptEnv) str(t *testing.T, args ...string) (string, bool) {
	t.Helper()
	s, err := e.must(t, args...).ToString()
	if rueidis.IsRedisNil(err) {
		return "", false
	}
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return s, true
}

func (e *scriptEnv) strs(t *testing.T, args ...string) []string {
	t.Helper()
	v, err := e.must(t, args...).AsStrSlice()
	if err != nil && !rueidis.IsRedisNil(err) {
		t.Fatalf("%v: %v", args, err)
	}
	return v
}

func (e *scriptEnv) hash(t *testing.T, key string) map[string]string {
	t.Helper()
	m, err := e.must(t, "HGETALL", key).AsStrMap()
	if err != nil {
		t.Fatalf("HGETALL %s: %v", key, err)
	}
	return m
}

// zset returns member -> score.
func (e *scriptEnv) zset(t *testing.T, key string) map[string]int64 {
	t.Helper()
	arr, err := e.must(t, "ZRANGE", key, "0", "-1", "WITHSCORES").ToArray()
	if err != nil {
		t.Fatalf("ZRANGE %s: %v", key, err)
	}
	out := map[string]int64{}
	for _, v := range arr {
		// RESP3 answers [member, score] pairs; RESP2 a flat list.
		if pair, err := v.ToArray(); err == nil && len(pair) == 2 {
			m, _ := pair[0].ToString()
			f, _ := pair[1].AsFloat64()
			out[m] = int64(f)
		}
	}
	if len(out) == 0 && len(arr) > 0 {
		for i := 0; i+1 < len(arr); i += 2 {
			m, _ := arr[i].ToString()
			f, _ := arr[i+1].AsFloat64()
			out[m] = int64(f)
		}
	}
	return out
}

func (e *scriptEnv) exists(t *testing.T, key string) bool {
	t.Helper()
	return e.int(t, "EXISTS", key) == 1
}

// rawEntry is a stream entry with its fields in stored order, duplicates kept.
type rawEntry struct {
	ID     string
	Fields []string // name, value, name, value, ...
}

func (r rawEntry) get(name string) (string, bool) {
	for i := 0; i+1 < len(r.Fields); i += 2 {
		if r.Fields[i] == name {
			return r.Fields[i+1], true
		}
	}
	return "", false
}

func (r rawEntry) count(name string) int {
	n := 0
	for i := 0; i+1 < len(r.Fields); i += 2 {
		if r.Fields[i] == name {
			n++
		}
	}
	return n
}

func (e *scriptEnv) xrange(t *testing.T, key string) []rawEntry {
	t.Helper()
	arr, err := e.must(t, "XRANGE", key, "-", "+").ToArray()
	if err != nil && !rueidis.IsRedisNil(err) {
		t.Fatalf("XRANGE %s: %v", key, err)
	}
	out := make([]rawEntry, 0, len(arr))
	for _, v := range arr {
		pair, err := v.ToArray()
		if err != nil || len(pair) != 2 {
			t.Fatalf("XRANGE %s: entry %v", key, v)
		}
		id, _ := pair[0].ToString()
		fields, err := pair[1].AsStrSlice()
		if err != nil {
			t.Fatalf("XRANGE %s: fields %v: %v", key, pair[1], err)
		}
		out = append(out, rawEntry{ID: id, Fields: fields})
	}
	return out
}

// pending is the number of entries pending in a group of a stream.
func (e *scriptEnv) pending(t *testing.T, stream, group string) int64 {
	t.Helper()
	arr, err := e.must(t, "XPENDING", stream, group).ToArray()
	if err != nil || len(arr) == 0 {
		t.Fatalf("XPENDING %s %s: %v %v", stream, group, arr, err)
	}
	n, _ := arr[0].AsInt64()
	return n
}

// snapshot is every key of the server with its DUMP (type, value, groups, PEL, ...), so
// "wrote nothing" can be checked exactly.
func (e *scriptEnv) snapshot(t *testing.T) map[string]string {
	t.Helper()
	keys := e.strs(t, "KEYS", "*")
	sort.Strings(keys)
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		d, _ := e.str(t, "DUMP", k)
		out[k] = d
	}
	if n := e.rs.DBSize(t); n != int64(len(out)) {
		t.Fatalf("DBSIZE %d, KEYS found %d", n, len(out))
	}
	return out
}

// sameSnapshot fails unless nothing changed between two snapshots.
func sameSnapshot(t *testing.T, before, after map[string]string) {
	t.Helper()
	for k, v := range after {
		if w, ok := before[k]; !ok {
			t.Errorf("key %s was created", k)
		} else if w != v {
			t.Errorf("key %s was changed", k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("key %s was deleted", k)
		}
	}
}

// testSub returns a stream subscription with a fixed incarnation.
func testSub(name, subject string) *core.Subscription {
	return &core.Subscription{Name: name, Subject: subject, Transport: core.TransportStream,
		CreatedAt: time.Unix(1700000000, 123456789).UTC()}
}

// live marks s live and returns it.
func (e *scriptEnv) live(t *testing.T, s *core.Subscription) *core.Subscription {
	t.Helper()
	if err := e.b.MarkLive(e.ctx, s); err != nil {
		t.Fatal(err)
	}
	return s
}

// markerStates are the ways a settlement can find its subscription not live.
var markerStates = []struct {
	name string
	set  func(t *testing.T, e *scriptEnv, s *core.Subscription)
}{
	{"deleted (no marker)", func(t *testing.T, e *scriptEnv, s *core.Subscription) {
		e.must(t, "DEL", markerKey(s.Subject, s.Name))
	}},
	{"deleted and created again (another incarnation)", func(t *testing.T, e *scriptEnv, s *core.Subscription) {
		next := *s
		next.CreatedAt = s.CreatedAt.Add(time.Second)
		e.live(t, &next)
	}},
}

// streamMessage appends an entry to subject, has group bridge:<sub> read it (pending), and
// returns it as the engine would hold it.
func (e *scriptEnv) streamMessage(t *testing.T, s *core.Subscription, body string, headers map[string]string) *core.Message {
	t.Helper()
	args := []string{"XADD", s.Subject, "*", payloadField, body}
	for k, v := range headers {
		args = append(args, headerPrefix+k, v)
	}
	eid, _ := e.str(t, args...)
	e.must(t, "XGROUP", "CREATE", s.Subject, groupName(s.Name), "0", "MKSTREAM")
	e.must(t, "XREADGROUP", "GROUP", groupName(s.Name), "c1", "STREAMS", s.Subject, ">")
	return &core.Message{ID: core.MessageID(s.Subject, eid), Subject: s.Subject, EntryID: eid,
		Origin: core.FromStream, Body: []byte(body), Headers: headers, Deliveries: 1}
}

// retryMessage puts a record straight into the retry set of s and returns it as a claim
// would hand it out.
func (e *scriptEnv) retryMessage(t *testing.T, s *core.Subscription, id, body string, headers map[string]string, count int) (*core.Message, string) {
	t.Helper()
	raw, err := json.Marshal(retryRecord{ID: id, Body: []byte(body), Headers: headers})
	if err != nil {
		t.Fatal(err)
	}
	rec := string(raw)
	e.must(t, "HSET", retryDataKey(s.Subject, s.Name), id, rec)
	e.must(t, "HSET", retryCountKey(s.Subject, s.Name), id, strconv.Itoa(count))
	e.must(t, "ZADD", retryKey(s.Subject, s.Name), "1000", id)
	return &core.Message{ID: id, Subject: s.Subject, Origin: core.FromRetry, Body: []byte(body),
		Headers: headers, Deliveries: count}, rec
}

// listMessage pushes an envelope on the list subject of s and has consumer pop it reliably.
func (e *scriptEnv) listMessage(t *testing.T, s *core.Subscription, consumer, body string) *core.Message {
	t.Helper()
	if _, err := e.b.PublishList(e.ctx, s.Subject, []byte(body), map[string]string{"content-type": "text/plain"}); err != nil {
		t.Fatal(err)
	}
	ls := *s
	ls.Transport, ls.ListMode = core.TransportList, core.ListReliable
	msgs, err := e.b.PopList(e.ctx, &ls, consumer, 1)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("pop: %v %v", msgs, err)
	}
	return &msgs[0]
}
