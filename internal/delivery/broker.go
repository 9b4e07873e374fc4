package delivery

import (
	"context"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

// The engine's view of Redis, in the roles its parts play. *broker.Broker implements all of
// them; each part of the engine holds only the role it uses.

// Registry is the subscription registry as delivery sees it.
type Registry interface {
	ListSubscriptions(ctx context.Context) ([]*core.Subscription, int64, error)
	SubscriptionsVersion(ctx context.Context) (int64, error)
	GetSubscription(ctx context.Context, name string) (*core.Subscription, error)
	PauseSubscription(ctx context.Context, name, reason string) error
	// MarkLive restores the marker that lets a live subscription's settlements write.
	MarkLive(ctx context.Context, s *core.Subscription) error
}

// Fleet is what the bridge processes tell each other.
type Fleet interface {
	// ReportProcess records that consumer is alive and has applied registry version.
	ReportProcess(ctx context.Context, consumer string, version int64) error
	ForgetProcess(ctx context.Context, consumer string) error
	Processes(ctx context.Context) (map[string]core.ProcessState, error)
	// ReceiveControl reports registry changes ("<version>:<name>") and other processes'
	// wake-ups (a subject) until ctx ends.
	ReceiveControl(ctx context.Context, onChange func(change string), onWake func(subject string)) error
	// Wake tells the other processes that subject has new messages.
	Wake(ctx context.Context, subject string) error
}

// Streams reads a subscription's consumer group.
type Streams interface {
	EnsureGroup(ctx context.Context, subject, sub, start string) (bool, error)
	// Read blocks up to wait for an entry (0: never); it returns an error wrapping
	// core.ErrNoGroup when the group is gone.
	Read(ctx context.Context, s *core.Subscription, consumer string, count int, wait time.Duration) ([]core.Message, error)
	Reclaim(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error)
	ReclaimOthers(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error)
	PruneConsumers(ctx context.Context, s *core.Subscription, idleOver time.Duration) (int, error)
	// NewEntries and LastEntries let idle subscriptions notice what other producers wrote.
	NewEntries(ctx context.Context, after map[string]string) (map[string]string, error)
	LastEntries(ctx context.Context, subjects []string) (map[string]string, error)
}

// Lists reads list subscriptions.
type Lists interface {
	PopList(ctx context.Context, s *core.Subscription, consumer string, count int) ([]core.Message, error)
	Heartbeat(ctx context.Context, s *core.Subscription, consumer string) error
	RecoverList(ctx context.Context, s *core.Subscription, staleAfter time.Duration) (int, error)
	ReleaseList(ctx context.Context, s *core.Subscription, consumer string) error
	ListLengths(ctx context.Context, subjects []string) (map[string]int64, error)
}

// Settler writes what became of a push.
type Settler interface {
	// Settle acknowledges a batch (stream entries, retried and list messages).
	Settle(ctx context.Context, batch []core.Settlement) error
	Retry(ctx context.Context, s *core.Subscription, m *core.Message, due time.Time, attempt *core.Attempt) error
	DeadLetter(ctx context.Context, s *core.Subscription, m *core.Message, info core.DeadLetterInfo) error
	// Defer holds a message its webhook will settle later (core.ErrDeferFull past max).
	Defer(ctx context.Context, s *core.Subscription, m *core.Message, deadline time.Time, tokenHash string, maxDeferred int, attempt *core.Attempt) error
}

// RetrySets hands out due retries.
type RetrySets interface {
	ClaimRetries(ctx context.Context, s *core.Subscription, now time.Time, lease time.Duration, limit int) ([]core.Message, time.Time, error)
	RetryingKeys(ctx context.Context, s *core.Subscription) ([]string, error)
}

// Checks finds work nothing signals: due retries of a process that died, stale pending
// entries, dead list consumers.
type Checks interface {
	CheckIdle(ctx context.Context, checks []core.IdleCheckRequest, now time.Time) []core.IdleCheck
}

// Leases keeps an ordered subscription with one process at a time.
type Leases interface {
	HoldLease(ctx context.Context, s *core.Subscription, holder string, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, s *core.Subscription, holder string) error
}

// PubSub receives Pub/Sub subscriptions.
type PubSub interface {
	Receive(ctx context.Context, kind core.PubSubKind, channel string, fn func(core.Message)) error
	ClaimPubSub(ctx context.Context, s *core.Subscription, id string) (bool, error)
}

// StatsStore keeps the counters every process adds to.
type StatsStore interface {
	AddStats(ctx context.Context, s *core.Subscription, consumer string, d core.StatsDelta) error
	ForgetInFlight(ctx context.Context, s *core.Subscription, consumer string) error
}

// Scheduler moves scheduled publishes into their streams.
type Scheduler interface {
	MoveDueScheduled(ctx context.Context, now time.Time, limit int) (core.ScheduledMove, error)
}

// Circuits keeps the circuit breakers and publishes the bridge's events.
type Circuits interface {
	CircuitFailure(ctx context.Context, s *core.Subscription, consumer string, okAt time.Time, probe bool, now time.Time) (core.CircuitVerdict, time.Time, error)
	ClaimProbe(ctx context.Context, s *core.Subscription, consumer string, lease time.Duration, now time.Time) (bool, core.CircuitState, time.Time, error)
	CloseCircuit(ctx context.Context, s *core.Subscription, consumer string) (bool, error)
	Circuit(ctx context.Context, s *core.Subscription) (core.Circuit, error)
	// AnnounceCircuit tells the other processes that a circuit changed.
	AnnounceCircuit(ctx context.Context, name string) error
	Publish(ctx context.Context, subject string, body []byte, headers map[string]string) (string, error)
}

// Broker is every role at once, what New takes.
type Broker interface {
	Circuits
	Registry
	Fleet
	Streams
	Lists
	Settler
	RetrySets
	Checks
	Leases
	PubSub
	StatsStore
	Scheduler
}
