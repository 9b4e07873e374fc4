// Package registry applies changes to subscriptions the same way for every entry point
// (the REST API and the subscriptions file): validation, the SSRF check of the URL, the
// signing secret, the consumer group, then the stored record.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/filter"
	"github.com/bridge-dev/bridge/internal/netguard"
	"github.com/bridge-dev/bridge/internal/webhook"
)

// Store is what the registry needs from Redis. *broker.Broker implements it.
type Store interface {
	EnsureGroup(ctx context.Context, subject, sub, start string) (bool, error)
	CheckListKey(ctx context.Context, subject string) error
	PutSubscription(ctx context.Context, s *core.Subscription) (replaced bool, version int64, err error)
	MarkLive(ctx context.Context, s *core.Subscription) error
	GetSubscription(ctx context.Context, name string) (*core.Subscription, error)
}

// InputError is a refused change, with the API's problem code.
type InputError struct {
	Code   string
	Detail string
}

func (e *InputError) Error() string { return e.Detail }

// SecretRotationOverlap is how long a rotated-out secret keeps signing beside the new one.
const SecretRotationOverlap = 24 * time.Hour

// Registry is safe for concurrent use.
type Registry struct {
	store    Store
	guard    *netguard.Guard
	resolver netguard.Resolver
	now      func() time.Time
}

// New returns a registry over store, checking URLs (and what their host names resolve to)
// with guard.
func New(store Store, guard *netguard.Guard) *Registry {
	return &Registry{store: store, guard: guard, resolver: net.DefaultResolver, now: func() time.Time { return time.Now().UTC() }}
}

// Result is what Apply did.
type Result struct {
	Subscription *core.Subscription
	Created      bool
	// Changed is false when the stored subscription already matched the input.
	Changed bool
	// Version is the registry version the change made (0 when nothing changed).
	Version int64
}

// Apply creates or replaces the subscription name from in (PUT semantics). A replaced
// subscription keeps its secret when in has none, its creation time and its group's cursor;
// its subject cannot change. Applying an input that matches what is stored writes nothing.
func (r *Registry) Apply(ctx context.Context, name string, in core.SubscriptionInput) (Result, error) {
	if !core.ValidName(name) {
		return Result{}, &InputError{"invalid_name", core.SubjectRule}
	}
	s, err := in.Build(name)
	if err != nil {
		return Result{}, &InputError{"invalid_subscription", err.Error()}
	}
	u, err := r.guard.CheckURL(s.URL)
	if err == nil {
		err = r.guard.CheckResolved(ctx, r.resolver, u)
	}
	if err != nil {
		if errors.Is(err, netguard.ErrDenied) {
			return Result{}, &InputError{"target_not_allowed", err.Error() + " (allow it with BRIDGE_TARGET_ALLOW_CIDRS)"}
		}
		return Result{}, &InputError{"invalid_url", err.Error()}
	}
	if s.Filter != "" {
		if _, err := filter.Compile(s.Filter); err != nil {
			return Result{}, &InputError{"invalid_filter", "filter: " + err.Error()}
		}
	}
	if s.Secret != "" {
		if err := webhook.ValidateSecret(s.Secret); err != nil {
			return Result{}, &InputError{"invalid_secret", err.Error()}
		}
	}
	old, err := r.store.GetSubscription(ctx, name)
	switch {
	case errors.Is(err, core.ErrNotFound):
		old = nil
	case err != nil:
		return Result{}, err
	}
	now := r.now()
	s.CreatedAt, s.UpdatedAt = now, now
	if old != nil {
		if old.Subject != s.Subject {
			return Result{}, &InputError{"subject_immutable", fmt.Sprintf("subscription %s reads %s; delete it to read another subject", name, old.Subject)}
		}
		s.CreatedAt = old.CreatedAt
		if s.Secret == "" {
			s.Secret = old.Secret
			s.PreviousSecret, s.PreviousSecretUntil = old.PreviousSecret, old.PreviousSecretUntil
		}
		if s.Paused && old.Paused {
			s.PausedReason = old.PausedReason
		}
	}
	if s.Secret == "" {
		if s.Secret, err = webhook.NewSecret(); err != nil {
			return Result{}, err
		}
	}
	if s.Paused && s.PausedReason == "" {
		s.PausedReason = "paused by configuration"
	}
	if old != nil && sameSettings(old, s) {
		return Result{Subscription: old}, nil
	}
	if old != nil && old.Transport != s.Transport {
		return Result{}, &InputError{"subject_immutable", fmt.Sprintf("subscription %s uses transport %s; delete it to use another", name, old.Transport)}
	}
	// The subject's key first: if it holds another type this fails with nothing stored.
	switch s.Transport {
	case core.TransportStream:
		if _, err := r.store.EnsureGroup(ctx, s.Subject, s.Name, s.Start); err != nil {
			return Result{}, err
		}
	case core.TransportList:
		if err := r.store.CheckListKey(ctx, s.Subject); err != nil {
			return Result{}, err
		}
	}
	// The marker before the record: from the moment processes see the subscription, its
	// settlements may write (a replace keeps the marker's value, see Incarnation).
	if err := r.store.MarkLive(ctx, s); err != nil {
		return Result{}, err
	}
	replaced, version, err := r.store.PutSubscription(ctx, s)
	if err != nil {
		return Result{}, err
	}
	return Result{Subscription: s, Created: !replaced, Changed: true, Version: version}, nil
}

// sameSettings compares everything but the timestamps.
func sameSettings(a, b *core.Subscription) bool {
	x, y := *a, *b
	x.CreatedAt, x.UpdatedAt, y.CreatedAt, y.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	jx, _ := json.Marshal(x)
	jy, _ := json.Marshal(y)
	return string(jx) == string(jy)
}

// SetPaused pauses or resumes the subscription and returns it with the registry version
// the change made (0 when it was already so).
func (r *Registry) SetPaused(ctx context.Context, name string, paused bool, reason string) (*core.Subscription, int64, error) {
	s, err := r.store.GetSubscription(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	if s.Paused == paused {
		return s, 0, nil
	}
	s.Paused, s.PausedReason, s.UpdatedAt = paused, "", r.now()
	if paused {
		s.PausedReason = reason
	}
	_, version, err := r.store.PutSubscription(ctx, s)
	if err != nil {
		return nil, 0, err
	}
	return s, version, nil
}

// RotateSecret gives the subscription a new secret; the old one keeps signing beside it
// for SecretRotationOverlap so receivers can switch without losing a push. It returns the
// registry version the change made.
func (r *Registry) RotateSecret(ctx context.Context, name string) (*core.Subscription, int64, error) {
	s, err := r.store.GetSubscription(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	next, err := webhook.NewSecret()
	if err != nil {
		return nil, 0, err
	}
	now := r.now()
	until := now.Add(SecretRotationOverlap)
	s.PreviousSecret, s.PreviousSecretUntil = s.Secret, &until
	s.Secret, s.UpdatedAt = next, now
	_, version, err := r.store.PutSubscription(ctx, s)
	if err != nil {
		return nil, 0, err
	}
	return s, version, nil
}

// ApplySubscription is Apply for the subscriptions file.
func (r *Registry) ApplySubscription(ctx context.Context, name string, in core.SubscriptionInput) (bool, error) {
	res, err := r.Apply(ctx, name, in)
	return res.Changed, err
}
