// Package core holds the types every layer of the bridge shares: messages,
// subscriptions, their validation and the errors callers branch on.
package core

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors returned (wrapped) by the broker and understood by the HTTP layer.
var (
	// ErrNotFound: the subscription, message or dead letter does not exist.
	ErrNotFound = errors.New("not found")
	// ErrWrongType: a Redis key the bridge needs already holds another type.
	ErrWrongType = errors.New("key holds the wrong kind of value")
	// ErrUnavailable: Redis could not be reached or refused the write (OOM, loading).
	ErrUnavailable = errors.New("redis unavailable")
	// ErrNoGroup: a subscription's consumer group does not exist; the stream was deleted or
	// flushed, or the subscription was deleted meanwhile. Only the caller can tell which.
	ErrNoGroup = errors.New("consumer group does not exist")
	// ErrGone: the subscription a settlement belongs to was deleted (or deleted and created
	// again) meanwhile; nothing was written.
	ErrGone = errors.New("subscription no longer exists")
	// ErrDeferFull: the subscription holds max_deferred deferred messages already.
	ErrDeferFull = errors.New("max_deferred messages are deferred already")
	// ErrSettled: a deferred message's lease is gone: its handler settled it meanwhile
	// (or its deadline passed and it was redelivered).
	ErrSettled = errors.New("the deferred message was settled meanwhile")
	// ErrLeaseToken: the lease token does not belong to the deferred message's delivery.
	ErrLeaseToken = errors.New("the lease token is not this delivery's")
)

// ReservedPrefix begins every key and channel the bridge keeps for itself. A subject,
// pattern or subscription name with it could overwrite the registry or read internal
// channels, so none may begin with it.
const ReservedPrefix = "bridge:"

// ValidSubject reports whether s is a subject (and stream key) the bridge accepts.
// The rule excludes braces, so a subject can always be used as a cluster hash tag.
func ValidSubject(s string) bool {
	// A loop, not a regexp: this runs on every publish (^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$).
	if len(s) == 0 || len(s) > 200 || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '_' && c != '.' && c != ':' && c != '-' {
			return false
		}
	}
	return !strings.HasPrefix(s, ReservedPrefix)
}

func alnum(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' }

// ValidName reports whether s is a valid subscription name (same rule as subjects).
func ValidName(s string) bool { return ValidSubject(s) }

// SubjectRule describes what ValidSubject accepts, for error messages.
const SubjectRule = "subjects and names match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$ and do not begin with \"bridge:\" (the bridge's own keys)"

// Header names the bridge reads and writes (ruststream-fred's names where they exist).
const (
	HeaderDeliveryCount    = "redis-delivery-count"
	HeaderIdleMS           = "redis-idle-ms"
	HeaderPartitionKey     = "redis-partition-key"
	HeaderDeadLetterReason = "x-dead-letter-reason"
	HeaderContentType      = "content-type"
	HeaderContentEncoding  = "content-encoding"
	HeaderTraceparent      = "traceparent"
	HeaderTracestate       = "tracestate"
	// Failure context on a retry (SPEC §10): the previous attempt's status or error, and
	// when the first attempt was made.
	HeaderLastStatus   = "bridge-last-status"
	HeaderLastError    = "bridge-last-error"
	HeaderFirstAttempt = "bridge-first-attempt"
)

// Dead-letter reasons, as ruststream-fred spells them.
const (
	ReasonDropped       = "dropped"
	ReasonMaxDeliveries = "max-deliveries"
)

// Origin says where a message handed to the engine lives in Redis, which decides how it is settled.
type Origin uint8

const (
	// FromStream: an entry of the subject's stream, pending in the subscription's group.
	FromStream Origin = iota
	// FromRetry: a record in the subscription's durable retry set, leased to this process.
	FromRetry
	// FromList: an envelope in this process's processing list of a reliable list subscription.
	FromList
	// Unsettled: nothing in Redis to settle (simple lists and Pub/Sub are at-most-once).
	Unsettled
)

// Message is one delivery of one message to one subscription.
type Message struct {
	// ID is stable across retries, reclaims and replays; it is the webhook-id.
	ID      string
	Subject string
	// EntryID is the handle that settles the message: the stream entry id (FromStream) or
	// the raw envelope to remove from the processing list Queue (FromList).
	EntryID string
	// Queue is the processing list holding the message (FromList).
	Queue  string
	Origin Origin
	Body   []byte
	// Headers have lower-case names; content-type is among them when known.
	Headers map[string]string
	// Deliveries is the number of this delivery, 1 for the first.
	Deliveries int
	// IdleMS is how long the message sat unsettled before it was reclaimed from a dead consumer; 0 otherwise.
	IdleMS int64
	// The failure context of a retried message: the previous attempt's status (0: none)
	// or error, and when its first attempt was made (zero when unknown).
	LastStatus   int
	LastError    string
	FirstAttempt time.Time
	// Deferred: the webhook took this message to settle later and its ack deadline passed
	// (it came back from the retry set as a failed attempt, not to be pushed at once).
	Deferred bool
}

// MessageID derives the public message id from a subject and a stream entry id.
// Dots are not allowed in Standard Webhooks ids (they separate the signed parts),
// so the subject's dots become '~', which subjects cannot contain: the mapping stays
// unique across subjects. The entry id never holds ':' so the last ':' splits the two.
func MessageID(subject, entryID string) string {
	return strings.ReplaceAll(subject, ".", "~") + ":" + entryID
}

// PublishTime is when the message with this id was published, as far as the id tells: a
// stream entry id's time, or the time in a list, Pub/Sub or scheduled id; now otherwise.
func PublishTime(id string) time.Time {
	rest := id[strings.LastIndexByte(id, ':')+1:]
	if rest != "" && strings.ContainsRune("lpsc", rune(rest[0])) {
		rest = rest[1:]
	}
	ms, _, _ := strings.Cut(rest, "-")
	if n, err := strconv.ParseInt(ms, 10, 64); err == nil && n > 0 {
		return time.UnixMilli(n)
	}
	return time.Now()
}

// ForbiddenPushHeader reports whether a stored or forwarded header must never be sent
// on a push, because the bridge or the HTTP layer owns it.
func ForbiddenPushHeader(lowerName string) bool {
	switch lowerName {
	case "host", "content-length", "connection", "keep-alive", "proxy-connection",
		"proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
		"upgrade", "expect", "bridge-subject", "bridge-subscription",
		HeaderDeliveryCount, HeaderIdleMS, HeaderLastStatus, HeaderLastError, HeaderFirstAttempt:
		return true
	}
	return strings.HasPrefix(lowerName, "webhook-")
}

// DeadLetterInfo is what the bridge records beside a dead-lettered message.
type DeadLetterInfo struct {
	Reason     string
	LastStatus int
	LastError  string
	At         time.Time
	// Attempt, when set, is recorded in the attempt log in the same script.
	Attempt *Attempt
}

// Reclaimed is the result of one reclaim pass over a subscription's pending entries.
type Reclaimed struct {
	Messages []Message
	// Lost are ids that were pending but whose entries no longer exist (trimmed or deleted).
	Lost []string
	// NextStale, when there was nothing to take over, is how long until the oldest entry
	// pending (with a consumer that may be gone) has been idle for minIdle; 0 when none is.
	NextStale time.Duration
}

// DeadLetter is one entry of a subscription's dead-letter stream.
type DeadLetter struct {
	// EntryID is the entry's id in the dead-letter stream (the paging cursor).
	EntryID    string
	ID         string
	Body       []byte
	Headers    map[string]string
	Reason     string
	LastStatus int
	LastError  string
	Deliveries int
	At         time.Time
	// Size is the whole body's size; Truncated says Body holds only its start (listings).
	Size      int
	Truncated bool
}

// DeadLetterPage is one page of a dead-letter listing.
type DeadLetterPage struct {
	DeadLetters []DeadLetter
	// More is true when the listing stopped at its limit or byte budget: the next page
	// starts after the last entry (and may turn out empty).
	More bool
}

// GroupStats are the Redis-side figures of one subscription.
type GroupStats struct {
	// StreamLength is the subject's stream length (streams only).
	StreamLength int64
	Lag          int64
	Pending      int64
	Retrying     int64
	DLQSize      int64
	// AttemptLog is the number of attempts in the subscription's attempt log.
	AttemptLog int64
	// Deferred is the number of messages its webhook holds deferred.
	Deferred int64
	Circuit  Circuit
	Shared   SharedStats
}

// LocalStats are one bridge process's delivery counters for one subscription.
type LocalStats struct {
	InFlight     int64
	Delivered    int64
	Retried      int64
	DeadLettered int64
	Lost         int64
	LastStatus   int64
	LastError    string
}

// Outgoing is one message to publish.
type Outgoing struct {
	Body    []byte
	Headers map[string]string // lower-case names
	// IdempotencyKey, when set, makes a repeat within the window a no-op returning the first id.
	IdempotencyKey string
	// NotBefore, when in the future, schedules the message instead of appending it now.
	NotBefore time.Time
}

// Published is the outcome of one publish.
type Published struct {
	ID        string
	Duplicate bool
	Err       error
}

// StatsDelta is what one process adds to a subscription's shared counters.
type StatsDelta struct {
	Delivered, Retried, DeadLettered, Lost, Filtered int64
	// LastStatus and LastError are written when LastAt is set.
	LastStatus int
	LastError  string
	LastAt     time.Time
	// OkAt is when the process last had a push acknowledged (zero: not since the last
	// report); it resets the circuit breaker's run of failures.
	OkAt time.Time
	// InFlight is the process's current number of pushes in flight.
	InFlight int64
}

// SharedStats are a subscription's counters summed over every bridge process.
type SharedStats struct {
	Delivered, Retried, DeadLettered, Lost, InFlight int64
	// Filtered counts messages the subscription's filter acked without a push.
	Filtered int64
	// Expired counts messages removed by the hard retention cap before they were delivered.
	Expired    int64
	LastStatus int
	LastError  string
	LastAt     time.Time
}

// ScheduledMove is what one pass over the scheduled messages did.
type ScheduledMove struct {
	Moved int
	// Dropped are scheduled messages whose subject can no longer take them (its key now
	// holds another type): removed once instead of being retried forever.
	Dropped []DroppedScheduled
	// Next is when the earliest remaining message comes due (zero if none).
	Next time.Time
	// Subjects are the subjects messages were appended to.
	Subjects []string
}

// DroppedScheduled names a scheduled message that was dropped and why.
type DroppedScheduled struct {
	ID, Subject string
	Err         error
}

// ProcessState is what a bridge process last reported about itself.
type ProcessState struct {
	// Version is the subscription registry version it has applied.
	Version int64
	// At is when it reported.
	At time.Time
}

// TrimParams say what one retention pass over a subject may remove (SPEC §8).
type TrimParams struct {
	Now time.Time
	// Retention is how long an entry stays after every group acknowledged it.
	Retention time.Duration
	// MaxRetention removes entries older than this even if unacknowledged (0 = never).
	MaxRetention time.Duration
	// Subscriptions are the subject's stream subscriptions: their dead letters are trimmed
	// by their dlq_retention, their attempt logs by AttemptRetention, and their losses to
	// MaxRetention counted.
	Subscriptions []*Subscription
	// AttemptRetention is how long attempts stay in the attempt logs.
	AttemptRetention time.Duration
}

// TrimResult is what one retention pass did.
type TrimResult struct {
	// Exists is false when the subject has no stream (or its key holds another type).
	Exists bool
	// Length is the stream's length after the pass.
	Length int64
	// Trimmed entries left the stream; DeadLettersTrimmed left the dead-letter streams.
	Trimmed, DeadLettersTrimmed int64
	// Expired counts, per consumer group, entries removed by MaxRetention before the group
	// read or acknowledged them.
	Expired map[string]int64
}

// IdleCheckRequest asks CheckIdle to look at one subscription; Retries adds a look at its
// retry set.
type IdleCheckRequest struct {
	Sub     *Subscription
	Retries bool
}

// IdleCheck is what CheckIdle found for one subscription.
type IdleCheck struct {
	// RetryDue: a message in its retry set is due.
	RetryDue bool
	// NextRetry is when the earliest message of its retry set comes due (zero: none).
	NextRetry time.Time
	// Stale: entries pending past the visibility timeout (streams), or a consumer whose
	// heartbeat is older than it (reliable lists): work to take over.
	Stale bool
	// GroupMissing: the stream's consumer group is gone (stream deleted or flushed).
	GroupMissing bool
	Err          error
}

// Settlement is one acknowledgement the engine batches: a stream entry (XACK), a message of
// the retry set, or one of a processing list.
type Settlement struct {
	Sub    *Subscription
	Origin Origin
	// Handle is the stream entry id (FromStream), the message id (FromRetry) or the raw
	// envelope (FromList).
	Handle string
	// ID and Queue are the message id and processing list of a FromList settlement.
	ID, Queue string
	// Attempt, when set, is recorded in the subscription's attempt log with the settlement.
	// A settlement with Origin Unsettled records only its attempt.
	Attempt *Attempt
}

// CircuitState is where a subscription's circuit breaker stands.
type CircuitState string

// The circuit states (SPEC §10).
const (
	CircuitClosed   CircuitState = "closed"
	CircuitOpen     CircuitState = "open"
	CircuitHalfOpen CircuitState = "half_open"
)

// CircuitVerdict is what the circuit made of one failed attempt.
type CircuitVerdict string

// The circuit's verdicts on a failure.
const (
	// CircuitCounted: closed; the failure counts as an attempt.
	CircuitCounted CircuitVerdict = "counted"
	// CircuitOpened: this failure opened the circuit; it counts as an attempt.
	CircuitOpened CircuitVerdict = "opened"
	// CircuitIsOpen: the circuit was open already; the attempt must not count.
	CircuitIsOpen CircuitVerdict = "open"
	// CircuitReopened: the probe failed; open again with a doubled cooldown, not counted.
	CircuitReopened CircuitVerdict = "reopened"
)

// Circuit is a subscription's circuit breaker as the stats show it.
type Circuit struct {
	State CircuitState
	// Since is when it opened (zero when closed); Until when a probe may go (open) or the
	// probe's lease ends (half_open).
	Since, Until time.Time
	// Failures is the current run of consecutive failures.
	Failures int
}

// DeferredAction is what a handler does with the message it deferred (SPEC §10).
type DeferredAction struct {
	// Op is "ack", "extend", "nack" (deliver it again at Due) or "dead" (dead-letter it).
	Op  string
	Due time.Time // extend: the new deadline; nack: when to deliver it again
}

// Attempt outcomes, as the attempt log records them (SPEC §9).
const (
	OutcomeAck        = "ack"
	OutcomeRetry      = "retry"
	OutcomeDeadLetter = "dead_letter"
	OutcomeFiltered   = "filtered"
	OutcomeDeferred   = "deferred"
	// OutcomeFailed is a failed push nothing retries: Pub/Sub is at most once.
	OutcomeFailed = "failed"
)

// Attempt is one push of one message to one subscription, as the attempt log keeps it.
type Attempt struct {
	// Cursor is the attempt's id in the log (read side only): its time and its place.
	Cursor    string
	At        time.Time // when the outcome was recorded (read side only)
	MessageID string
	Delivery  int
	Status    int // the HTTP status; 0 when there was no answer
	Error     string
	Latency   time.Duration
	Outcome   string
	Process   string
}

// Message states in a message view (SPEC §9); StateFailed is a Pub/Sub push that failed
// (at most once: nothing retries it).
const (
	StatePending      = "pending"
	StateDelivered    = "delivered"
	StateRetrying     = "retrying"
	StateDeadLettered = "dead_lettered"
	StateFiltered     = "filtered"
	StateExpired      = "expired"
	StateFailed       = "failed"
)

// MessageView is one message as GET /v1/messages/{id} shows it.
type MessageView struct {
	ID, Subject string
	Transport   Transport
	PublishedAt time.Time
	// HasBody says whether the message itself was found (a delivered list or Pub/Sub
	// message is kept nowhere, only its attempts are).
	HasBody   bool
	Headers   map[string]string
	Body      []byte
	Size      int
	Truncated bool
	States    []MessageState
}

// MessageState is where one message stands for one subscription.
type MessageState struct {
	Subscription string
	State        string
	Attempts     []Attempt
}

// AttemptQuery selects attempts of one subscription, newest first.
type AttemptQuery struct {
	// Before is a cursor: only attempts older than it ("" = from the newest).
	Before  string
	Limit   int
	Outcome string // "" = every outcome
}

// AttemptPage is one page of an attempt listing; Next continues it ("" = no more).
type AttemptPage struct {
	Attempts []Attempt
	Next     string
}

// PubSubKind says how a Pub/Sub channel is subscribed.
type PubSubKind uint8

// The kinds of Pub/Sub subscription.
const (
	SubscribeChannel PubSubKind = iota // SUBSCRIBE
	SubscribePattern                   // PSUBSCRIBE
	SubscribeSharded                   // SSUBSCRIBE
)
