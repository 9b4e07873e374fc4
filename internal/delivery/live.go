package delivery

import (
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/filter"
	"github.com/bridge-dev/bridge/internal/webhook"
)

// liveSub is the configuration of one subscription as this process knows it now. It
// outlives runners: a change that does not need a new runner (URL, headers, secrets,
// timeout, retry policy, max_deliveries) is stored here and read by every push that starts
// afterwards, so a change is in force as soon as it is applied, in-flight work included.
// Safe for concurrent use.
type liveSub struct {
	sub    atomic.Pointer[core.Subscription]
	signer atomic.Pointer[signerState]
	// gone is set once the subscription is deleted (or deleted and created again): its
	// pushes still in flight settle without writing anything and nothing new starts.
	gone atomic.Bool
	// stats are this process's counters, kept across runner replacements.
	stats *Stats
	// circuit is the circuit breaker as this process knows it.
	circuit circuitLocal
	// filter is the compiled filter of the configuration in force; nil when it has none.
	filter atomic.Pointer[filter.Program]
	// pushes records this subscription's pushes in the metrics.
	pushes interface {
		Pushed(status int, outcome string, d time.Duration)
	}
}

// signerState is a signer and when its set of secrets stops being valid (a rotation's end).
type signerState struct {
	signer *webhook.Signer
	until  time.Time
}

func newLiveSub(s *core.Subscription) (*liveSub, error) {
	l := &liveSub{stats: &Stats{}}
	if err := l.update(s); err != nil {
		return nil, err
	}
	return l, nil
}

// update stores a new configuration; the signer is rebuilt only when the secrets changed.
func (l *liveSub) update(s *core.Subscription) error {
	old := l.sub.Load()
	if old == nil || old.Secret != s.Secret || old.PreviousSecret != s.PreviousSecret ||
		!equalTimePtr(old.PreviousSecretUntil, s.PreviousSecretUntil) || l.signer.Load() == nil {
		st, err := newSignerState(s, time.Now())
		if err != nil {
			return err
		}
		l.signer.Store(st)
	}
	if old == nil || old.Filter != s.Filter {
		var p *filter.Program
		if s.Filter != "" {
			// Checked at PUT; a filter stored by a newer bridge that this one cannot compile
			// pushes everything rather than nothing.
			if c, err := filter.Compile(s.Filter); err == nil {
				p = c
			}
		}
		l.filter.Store(p)
	}
	l.sub.Store(s)
	l.stats.sub.Store(s)
	return nil
}

func newSignerState(s *core.Subscription, now time.Time) (*signerState, error) {
	signer, err := webhook.NewSigner(s.Secrets(now)...)
	if err != nil {
		return nil, err
	}
	st := &signerState{signer: signer}
	if s.PreviousSecretUntil != nil && now.Before(*s.PreviousSecretUntil) {
		st.until = *s.PreviousSecretUntil
	}
	return st, nil
}

// currentSigner signs with the secrets valid now: once a rotation's overlap ends, the old
// secret stops signing without waiting for a configuration change.
func (l *liveSub) currentSigner(now time.Time) *webhook.Signer {
	st := l.signer.Load()
	if st.until.IsZero() || now.Before(st.until) {
		return st.signer
	}
	next, err := newSignerState(l.sub.Load(), now)
	if err != nil {
		return st.signer
	}
	l.signer.CompareAndSwap(st, next)
	return next.signer
}

func equalTimePtr(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// needsNewRunner reports whether going from a to b changes how messages are read (which
// takes a new runner) rather than only how they are pushed (which the live config covers).
func needsNewRunner(a, b *core.Subscription) bool {
	return a.Subject != b.Subject || a.Transport != b.Transport || a.ListMode != b.ListMode ||
		a.PubSubMode != b.PubSubMode || a.Pattern != b.Pattern || a.Ordered != b.Ordered ||
		a.MaxInFlight != b.MaxInFlight || a.RateLimit != b.RateLimit ||
		a.VisibilityTimeout != b.VisibilityTimeout || a.Paused != b.Paused ||
		a.Incarnation() != b.Incarnation()
}
