// Package delivery is the engine that reads each subscription through its consumer group,
// pushes every message to the webhook and settles it: ack, durable delayed retry, or
// dead-letter.
package delivery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
)

// Broker is what the engine needs from Redis. *broker.Broker implements it.
type Broker interface {
	ListSubscriptions(ctx context.Context) ([]*core.Subscription, int64, error)
	SubscriptionsVersion(ctx context.Context) (int64, error)
	PauseSubscription(ctx context.Context, name, reason string) error
	// Read returns an error wrapping ErrNoGroup when the subscription's group is missing.
	Read(ctx context.Context, s *core.Subscription, consumer string, count int, block time.Duration) ([]core.Message, error)
	GetSubscription(ctx context.Context, name string) (*core.Subscription, error)
	EnsureGroup(ctx context.Context, subject, sub, start string) (bool, error)
	Ack(ctx context.Context, subject, sub string, entryIDs ...string) error
	Retry(ctx context.Context, s *core.Subscription, m *core.Message, due time.Time) error
	ClaimRetries(ctx context.Context, s *core.Subscription, now time.Time, lease time.Duration, limit int) ([]core.Message, time.Time, error)
	AckRetries(ctx context.Context, s *core.Subscription, ids ...string) error
	DeadLetter(ctx context.Context, s *core.Subscription, m *core.Message, info core.DeadLetterInfo) error
	Reclaim(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error)
	MoveDueScheduled(ctx context.Context, now time.Time, limit int) (int, time.Time, error)
	AddStats(ctx context.Context, s *core.Subscription, consumer string, d core.StatsDelta) error
	ForgetInFlight(ctx context.Context, s *core.Subscription, consumer string) error
	WatchChanges(ctx context.Context, onChange func())

	PopList(ctx context.Context, s *core.Subscription, consumer string, count int, block time.Duration) ([]core.Message, error)
	AckList(ctx context.Context, s *core.Subscription, msgs ...*core.Message) error
	Heartbeat(ctx context.Context, s *core.Subscription, consumer string) error
	RecoverList(ctx context.Context, s *core.Subscription, staleAfter time.Duration) (int, error)
	ReleaseList(ctx context.Context, s *core.Subscription, consumer string) error

	HoldLease(ctx context.Context, s *core.Subscription, holder string, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, s *core.Subscription, holder string) error
	RetryingKeys(ctx context.Context, s *core.Subscription) ([]string, error)
	PruneConsumers(ctx context.Context, s *core.Subscription, idleOver time.Duration) (int, error)
	ReclaimOthers(ctx context.Context, s *core.Subscription, consumer string, minIdle time.Duration, limit int) (core.Reclaimed, error)

	SubscribePubSub(ctx context.Context, s *core.Subscription, onSubscribed func(), fn func(core.Message)) error
	ClaimPubSub(ctx context.Context, s *core.Subscription, id string) (bool, error)
}

// Metrics is what the engine reports; *metrics.Metrics implements it.
type Metrics interface {
	Pushed(sub string, status int, outcome string, d time.Duration)
	Lost(sub string, n int)
}

type noMetrics struct{}

func (noMetrics) Pushed(string, int, string, time.Duration) {}
func (noMetrics) Lost(string, int)                          {}

// Options tune the engine; zero values take the defaults.
type Options struct {
	// Consumer names this process in every consumer group; default host-pid-random.
	Consumer string
	// Client sends the pushes; default NewHTTPClient(nil) (no SSRF guard: set one in production).
	Client *http.Client
	Logger *zap.Logger
	// RegistryPoll is how often the subscription registry is checked for changes (default 1 s,
	// which keeps SPEC's "seen by all processes within 2 s").
	RegistryPoll time.Duration
	// Metrics records pushes; nil records nothing.
	Metrics Metrics
	// Block bounds each XREADGROUP wait (default 250 ms): a pause or stop takes effect
	// within it, since a read already waiting may still hand out entries.
	Block time.Duration
}

// Engine delivers every active subscription. Start it once; Shutdown it once (a second
// call returns at once). Safe for concurrent use.
type Engine struct {
	b        Broker
	client   *http.Client
	metrics  Metrics
	log      *zap.Logger
	consumer string
	opts     Options

	// abortCtx is cancelled only when the shutdown grace runs out: pushes still running
	// are then cut and their messages left unsettled for reclaim.
	abortCtx  context.Context
	abort     context.CancelFunc
	stop      chan struct{}
	flushStop chan struct{}
	// changed wakes the registry watcher when a change is announced (size one: a pending
	// wake-up already covers any later change).
	changed  chan struct{}
	watchCtx context.Context
	unwatch  context.CancelFunc
	// flushDone is closed when the stats flusher ended (after its last flush).
	flushDone chan struct{}
	stopped   atomic.Bool
	running   atomic.Bool
	wg        sync.WaitGroup // watcher and every runner's goroutines

	generation atomic.Int64 // numbers runners, see runner.consumer

	mu      sync.Mutex
	runners map[string]*runner
	stats   map[string]*Stats
}

// New returns an engine over b. It does nothing until Start.
func New(b Broker, opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Client == nil {
		opts.Client = NewHTTPClient(nil)
	}
	if opts.Consumer == "" {
		opts.Consumer = defaultConsumer()
	}
	if opts.RegistryPoll <= 0 {
		opts.RegistryPoll = time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = noMetrics{}
	}
	if opts.Block <= 0 {
		opts.Block = 250 * time.Millisecond
	}
	abortCtx, abort := context.WithCancel(context.Background())
	watchCtx, unwatch := context.WithCancel(context.Background())
	return &Engine{
		b: b, client: opts.Client, metrics: opts.Metrics, log: opts.Logger, consumer: opts.Consumer, opts: opts,
		abortCtx: abortCtx, abort: abort, stop: make(chan struct{}), flushStop: make(chan struct{}),
		changed: make(chan struct{}, 1), watchCtx: watchCtx, unwatch: unwatch,
		runners: map[string]*runner{}, stats: map[string]*Stats{},
	}
}

func defaultConsumer() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Consumer is this process's consumer name.
func (e *Engine) Consumer() string { return e.consumer }

// Running reports whether the engine has started and is not shutting down.
func (e *Engine) Running() bool { return e.running.Load() }

// Start begins watching the subscription registry and delivering.
func (e *Engine) Start() {
	e.running.Store(true)
	e.flushDone = make(chan struct{})
	go func() {
		defer close(e.flushDone)
		e.flushStatsLoop()
	}()
	e.wg.Add(3)
	go func() {
		defer e.wg.Done()
		e.watch()
	}()
	go func() {
		defer e.wg.Done()
		e.b.WatchChanges(e.watchCtx, func() {
			select {
			case e.changed <- struct{}{}:
			default:
			}
		})
	}()
	go func() {
		defer e.wg.Done()
		e.moveScheduled()
	}()
	e.log.Info("delivery engine started", zap.String("consumer", e.consumer))
}

// Shutdown stops reading from Redis and waits for in-flight pushes to finish and be
// settled. When ctx ends first, the remaining pushes are cancelled and their messages stay
// pending, to be reclaimed after their visibility timeout; ctx's error is returned then.
func (e *Engine) Shutdown(ctx context.Context) error {
	if !e.stopped.CompareAndSwap(false, true) {
		return nil
	}
	e.running.Store(false)
	close(e.stop)
	e.unwatch()
	e.mu.Lock()
	for _, r := range e.runners {
		r.stopReading()
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		e.abort()
		<-done
	}
	e.abort()
	close(e.flushStop)
	if e.flushDone != nil {
		<-e.flushDone
	}
	e.client.CloseIdleConnections()
	return err
}

// statsFlushEvery is how often this process adds its counters to the shared ones in Redis.
const statsFlushEvery = time.Second

func (e *Engine) flushStatsLoop() {
	t := time.NewTicker(statsFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-e.flushStop:
			e.flushStats(true)
			return
		case <-t.C:
			e.flushStats(false)
		}
	}
}

// flushStats adds every subscription's unseen counts to its shared counters; final also
// withdraws this process's in-flight report.
func (e *Engine) flushStats(final bool) {
	e.mu.Lock()
	all := make([]*Stats, 0, len(e.stats))
	for _, st := range e.stats {
		all = append(all, st)
	}
	e.mu.Unlock()
	for _, st := range all {
		sub := st.sub.Load()
		if sub == nil {
			continue
		}
		d := st.delta()
		if st.idle(d) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
		if err := e.b.AddStats(ctx, sub, e.consumer, d); err == nil {
			st.flushedDelta(d)
		}
		if final {
			_ = e.b.ForgetInFlight(ctx, sub, e.consumer)
		}
		cancel()
	}
}

// Stats returns this process's counters for a subscription, or nil if it never ran here.
func (e *Engine) Stats(name string) *Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats[name]
}

func (e *Engine) watch() {
	t := time.NewTicker(e.opts.RegistryPoll)
	defer t.Stop()
	version := int64(-1)
	failing := false
	for {
		v, err := e.b.SubscriptionsVersion(e.abortCtx)
		if err == nil && v != version {
			var subs []*core.Subscription
			subs, v, err = e.b.ListSubscriptions(e.abortCtx)
			if err == nil {
				e.apply(subs)
				version = v
			}
		}
		if err != nil && !failing {
			e.log.Warn("cannot read the subscription registry; delivery continues with what it knows", zap.Error(err))
		} else if err == nil && failing {
			e.log.Info("subscription registry readable again")
		}
		failing = err != nil
		select {
		case <-e.stop:
			return
		case <-t.C:
		case <-e.changed:
		}
	}
}

// apply starts, restarts and stops runners so that exactly the active subscriptions run,
// each with its current configuration. A replaced runner finishes its in-flight pushes
// with the old configuration while the new one starts reading.
func (e *Engine) apply(subs []*core.Subscription) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped.Load() {
		return
	}
	seen := make(map[string]bool, len(subs))
	for _, s := range subs {
		seen[s.Name] = true
		cur := e.runners[s.Name]
		if cur != nil && sameConfig(cur.sub, s) {
			continue
		}
		if cur != nil {
			cur.stopReading()
			delete(e.runners, s.Name)
		}
		if s.Paused {
			continue
		}
		st := e.stats[s.Name]
		if st == nil {
			st = &Stats{}
			e.stats[s.Name] = st
		}
		st.sub.Store(s)
		r, err := newRunner(e, s, st)
		if err != nil {
			e.log.Error("cannot start subscription", zap.String("subscription", s.Name), zap.Error(err))
			continue
		}
		e.runners[s.Name] = r
		r.start()
	}
	for name, r := range e.runners {
		if !seen[name] {
			r.stopReading()
			delete(e.runners, name)
		}
	}
	for name := range e.stats {
		if !seen[name] {
			// Deleted: its shared counters are gone with it; writing them would bring them back.
			delete(e.stats, name)
		}
	}
}

// scheduledPoll bounds how late a scheduled message enters its stream.
const scheduledPoll = 250 * time.Millisecond

// moveScheduled appends scheduled messages to their streams when they come due. Every
// process runs it; the lease in the broker keeps two from moving the same message.
func (e *Engine) moveScheduled() {
	var errs errThrottle
	for {
		ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
		moved, next, err := e.b.MoveDueScheduled(ctx, time.Now(), 256)
		cancel()
		if err != nil {
			errs.log(e.log, "moving scheduled messages failed; retrying", err)
		} else {
			errs.ok(e.log, "moving scheduled messages again")
		}
		wait := scheduledPoll
		if moved == 256 {
			wait = 0
		} else if !next.IsZero() {
			wait = min(max(time.Until(next), 10*time.Millisecond), scheduledPoll)
		}
		t := time.NewTimer(wait)
		select {
		case <-e.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func sameConfig(a, b *core.Subscription) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// LocalStats returns this process's counters for a subscription (zero if it never ran here).
func (e *Engine) LocalStats(name string) core.LocalStats {
	st := e.Stats(name)
	if st == nil {
		return core.LocalStats{}
	}
	return core.LocalStats{
		InFlight: st.InFlight.Load(), Delivered: st.Delivered.Load(), Retried: st.Retried.Load(),
		DeadLettered: st.DeadLettered.Load(), Lost: st.Lost.Load(), LastStatus: st.LastStatus.Load(),
		LastError: st.LastError(),
	}
}
