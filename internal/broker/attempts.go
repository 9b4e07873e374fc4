package broker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// The attempt log of a subscription is a stream in its subject's slot, one entry per push
// attempt (SPEC §9). It is written with the settlement the attempt led to, in the same
// round trip (the ack pipeline) or the same script (retry, dead letter), capped by
// MAXLEN ~ and trimmed by age on the retention pass. The entry id is the attempt's time and
// its cursor.
func attemptsKey(subject, sub string) string { return "bridge:{" + subject + "}:attempts:" + sub }

// Fields of an attempt entry: short, since every push writes one.
const (
	attMessage  = "m"
	attDelivery = "d"
	attStatus   = "s"
	attError    = "e"
	attLatency  = "l" // microseconds
	attOutcome  = "o"
	attProcess  = "p"
)

// WithAttemptLog keeps up to max attempts per subscription (0 turns the log off).
func WithAttemptLog(max int) Option { return func(b *Broker) { b.attemptMax = max } }

// attemptFields is the entry of a, as field/value pairs.
func attemptFields(a *core.Attempt) []string {
	f := make([]string, 0, 14)
	f = append(f, attMessage, a.MessageID, attDelivery, strconv.Itoa(a.Delivery),
		attStatus, strconv.Itoa(a.Status), attLatency, strconv.FormatInt(a.Latency.Microseconds(), 10),
		attOutcome, a.Outcome, attProcess, a.Process)
	if a.Error != "" {
		f = append(f, attError, a.Error)
	}
	return f
}

// attemptArgs are the ARGV tail a settlement script logs a (nil: nothing) from: maxlen, the
// number of field/value strings, then the pairs. See logAttemptLua.
func (b *Broker) attemptArgs(a *core.Attempt) []string {
	if a == nil || b.attemptMax <= 0 {
		return []string{"0", "0"}
	}
	f := attemptFields(a)
	return append([]string{strconv.Itoa(b.attemptMax), strconv.Itoa(len(f))}, f...)
}

// logAttemptLua appends an attempt from ARGV[from+2 .. from+1+n], where ARGV[from] is the
// maxlen and ARGV[from+1] is n; it returns the index after the attempt's arguments.
const logAttemptLua = `
local function logAttempt(key, from)
  local n = tonumber(ARGV[from + 1])
  if n > 0 then
    redis.call('XADD', key, 'MAXLEN', '~', ARGV[from], '*', unpack(ARGV, from + 2, from + 1 + n))
  end
  return from + 2 + n
end
`

// attemptCmd is the XADD that records a, for the ack pipeline.
func (b *Broker) attemptCmd(s *core.Subscription, a *core.Attempt) rueidis.Completed {
	fv := b.c.B().Xadd().Key(attemptsKey(s.Subject, s.Name)).Maxlen().Almost().Threshold(strconv.Itoa(b.attemptMax)).
		Id("*").FieldValue().
		FieldValue(attMessage, a.MessageID).FieldValue(attDelivery, strconv.Itoa(a.Delivery)).
		FieldValue(attStatus, strconv.Itoa(a.Status)).FieldValue(attLatency, strconv.FormatInt(a.Latency.Microseconds(), 10)).
		FieldValue(attOutcome, a.Outcome).FieldValue(attProcess, a.Process)
	if a.Error != "" {
		fv = fv.FieldValue(attError, a.Error)
	}
	return fv.Build()
}

func decodeAttempt(e rueidis.XRangeEntry) core.Attempt {
	f := e.FieldValues
	a := core.Attempt{Cursor: e.ID, MessageID: f[attMessage], Error: f[attError], Outcome: f[attOutcome], Process: f[attProcess]}
	a.Delivery, _ = strconv.Atoi(f[attDelivery])
	a.Status, _ = strconv.Atoi(f[attStatus])
	if us, err := strconv.ParseInt(f[attLatency], 10, 64); err == nil {
		a.Latency = time.Duration(us) * time.Microsecond
	}
	a.At = entryTime(e.ID)
	return a
}

// entryTime is the time in a stream entry id.
func entryTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// maxAttemptScan bounds the entries one listing reads while it filters by outcome, so a
// rare outcome in a long log costs a bounded page; Next lets the caller go on.
const maxAttemptScan = 5000

// Attempts lists s's attempts newest first.
func (b *Broker) Attempts(ctx context.Context, s *core.Subscription, q core.AttemptQuery) (core.AttemptPage, error) {
	var page core.AttemptPage
	end := "+"
	if q.Before != "" {
		end = "(" + q.Before
	}
	key := attemptsKey(s.Subject, s.Name)
	scanned := 0
	for len(page.Attempts) < q.Limit {
		count := q.Limit - len(page.Attempts)
		if q.Outcome != "" {
			count = min(max(count*4, 100), maxAttemptScan-scanned)
		}
		entries, err := b.c.Do(ctx, b.c.B().Xrevrange().Key(key).End(end).Start("-").Count(int64(count)).Build()).AsXRange()
		if err != nil && !rueidis.IsRedisNil(err) {
			return page, fmt.Errorf("attempts of %s: %w", s.Name, classify(err))
		}
		for _, e := range entries {
			a := decodeAttempt(e)
			if q.Outcome == "" || a.Outcome == q.Outcome {
				page.Attempts = append(page.Attempts, a)
			}
			end = "(" + e.ID
			if len(page.Attempts) == q.Limit {
				break
			}
		}
		scanned += len(entries)
		if len(entries) < count {
			return page, nil // the log's start
		}
		if scanned >= maxAttemptScan {
			break
		}
	}
	page.Next = strings.TrimPrefix(end, "(")
	if page.Next == "+" {
		page.Next = ""
	}
	return page, nil
}

// findAttemptsScript scans up to ARGV[3] entries of an attempt log from ARGV[1] (an
// exclusive or inclusive start) for message ARGV[2]. It returns {last id scanned or ”,
// matching entries...}: a bounded slice of work per call, so a long log never blocks Redis.
var findAttemptsScript = rueidis.NewLuaScript(`
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[3]))
local out = {''}
for _, e in ipairs(entries) do
  local f = e[2]
  for j = 1, #f, 2 do
    if f[j] == 'm' then
      if f[j+1] == ARGV[2] then out[#out+1] = e end
      break
    end
  end
end
if #entries == tonumber(ARGV[3]) then out[1] = entries[#entries][1] end
return out`)

// Scan sizes of a message's attempt lookup: per script call, and in all per subscription.
const (
	findAttemptsChunk = 2000
	findAttemptsLimit = 1_000_000
)

// MessageAttempts returns the attempts s logged for message id since from, oldest first.
func (b *Broker) MessageAttempts(ctx context.Context, s *core.Subscription, id string, from time.Time) ([]core.Attempt, error) {
	key := attemptsKey(s.Subject, s.Name)
	start := strconv.FormatInt(max(from.UnixMilli(), 0), 10)
	var out []core.Attempt
	for scanned := 0; scanned < findAttemptsLimit; scanned += findAttemptsChunk {
		arr, err := findAttemptsScript.Exec(ctx, b.c, []string{key}, []string{start, id, strconv.Itoa(findAttemptsChunk)}).ToArray()
		if err != nil {
			if rueidis.IsRedisNil(err) {
				return out, nil
			}
			return nil, fmt.Errorf("attempts of %s in %s: %w", id, s.Name, classify(err))
		}
		if len(arr) == 0 {
			return out, nil
		}
		for _, v := range arr[1:] {
			e, err := v.AsXRangeEntry()
			if err == nil {
				out = append(out, decodeAttempt(e))
			}
		}
		last, _ := arr[0].ToString()
		if last == "" {
			return out, nil
		}
		start = "(" + last
	}
	return out, nil
}
