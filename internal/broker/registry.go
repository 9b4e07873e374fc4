package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

var (
	// KEYS: hash. ARGV: name, json. Returns {1 when the name existed, the new version}.
	putSubScript = rueidis.NewLuaScript(`
local existed = redis.call('HEXISTS', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local v = redis.call('HINCRBY', KEYS[1], '_version', 1)
redis.call('PUBLISH', 'bridge:subscriptions:changed', v .. ':' .. ARGV[1])
return {existed, v}`)
	// KEYS: hash. ARGV: name. Returns the new version, or 0 when the name did not exist.
	delSubScript = rueidis.NewLuaScript(`
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if n == 0 then return 0 end
local v = redis.call('HINCRBY', KEYS[1], '_version', 1)
redis.call('PUBLISH', 'bridge:subscriptions:changed', v .. ':' .. ARGV[1])
return v`)
)

// PutSubscription stores s (secret included) and reports whether it replaced one and the
// registry version the change made.
func (b *Broker) PutSubscription(ctx context.Context, s *core.Subscription) (replaced bool, version int64, err error) {
	raw, err := json.Marshal(b.seal(s))
	if err != nil {
		return false, 0, err
	}
	res, err := putSubScript.Exec(ctx, b.c, []string{subscriptionsKey}, []string{s.Name, string(raw)}).AsIntSlice()
	if err != nil || len(res) != 2 {
		if err == nil {
			err = fmt.Errorf("unexpected reply %v", res)
		}
		return false, 0, fmt.Errorf("store subscription %s: %w", s.Name, classify(err))
	}
	return res[0] == 1, res[1], nil
}

// GetSubscription returns the stored subscription (secret included) or core.ErrNotFound.
func (b *Broker) GetSubscription(ctx context.Context, name string) (*core.Subscription, error) {
	raw, err := b.c.Do(ctx, b.c.B().Hget().Key(subscriptionsKey).Field(name).Build()).AsBytes()
	if rueidis.IsRedisNil(err) {
		return nil, fmt.Errorf("subscription %s: %w", name, core.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read subscription %s: %w", name, classify(err))
	}
	return b.decodeSubscription(name, raw)
}

func (b *Broker) decodeSubscription(name string, raw []byte) (*core.Subscription, error) {
	var s core.Subscription
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("decode subscription %s: %w", name, err)
	}
	if err := b.open(&s); err != nil {
		return nil, fmt.Errorf("subscription %s: %w", name, err)
	}
	if s.DLQRetention == 0 {
		// Stored before dlq_retention existed: the default, not "keep nothing".
		s.DLQRetention = core.Duration(core.DefaultDLQRetention)
	}
	return &s, nil
}

// seal returns a copy of s whose secrets and static header values are encrypted (when a
// key is configured), each bound to its subscription and field.
func (b *Broker) seal(s *core.Subscription) *core.Subscription {
	if b.sealer == nil {
		return s
	}
	c := *s
	c.Secret = b.sealer.Seal(s.Secret, "subscription/"+s.Name+"/secret")
	c.PreviousSecret = b.sealer.Seal(s.PreviousSecret, "subscription/"+s.Name+"/previous_secret")
	if len(s.Headers) > 0 {
		c.Headers = make(map[string]string, len(s.Headers))
		for k, v := range s.Headers {
			c.Headers[k] = b.sealer.Seal(v, "subscription/"+s.Name+"/header/"+k)
		}
	}
	return &c
}

func (b *Broker) open(s *core.Subscription) error {
	var err error
	if s.Secret, err = b.sealer.Open(s.Secret, "subscription/"+s.Name+"/secret"); err != nil {
		return err
	}
	if s.PreviousSecret, err = b.sealer.Open(s.PreviousSecret, "subscription/"+s.Name+"/previous_secret"); err != nil {
		return err
	}
	for k, v := range s.Headers {
		if s.Headers[k], err = b.sealer.Open(v, "subscription/"+s.Name+"/header/"+k); err != nil {
			return err
		}
	}
	return nil
}

// ListSubscriptions returns every stored subscription and the registry version they belong to.
func (b *Broker) ListSubscriptions(ctx context.Context) ([]*core.Subscription, int64, error) {
	all, err := b.c.Do(ctx, b.c.B().Hgetall().Key(subscriptionsKey).Build()).AsStrMap()
	if err != nil {
		return nil, 0, fmt.Errorf("list subscriptions: %w", classify(err))
	}
	version, _ := strconv.ParseInt(all[versionField], 10, 64)
	subs := make([]*core.Subscription, 0, len(all))
	for name, raw := range all {
		if name == versionField {
			continue
		}
		s, err := b.decodeSubscription(name, []byte(raw))
		if err != nil {
			return nil, 0, err
		}
		subs = append(subs, s)
	}
	return subs, version, nil
}

// SubscriptionsVersion is bumped by every change of the registry.
func (b *Broker) SubscriptionsVersion(ctx context.Context) (int64, error) {
	v, err := b.c.Do(ctx, b.c.B().Hget().Key(subscriptionsKey).Field(versionField).Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read subscriptions version: %w", classify(err))
	}
	return v, nil
}

// DeleteSubscription removes the subscription record and returns the registry version the
// change made, or core.ErrNotFound.
func (b *Broker) DeleteSubscription(ctx context.Context, name string) (int64, error) {
	v, err := delSubScript.Exec(ctx, b.c, []string{subscriptionsKey}, []string{name}).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("delete subscription %s: %w", name, classify(err))
	}
	if v == 0 {
		return 0, fmt.Errorf("subscription %s: %w", name, core.ErrNotFound)
	}
	return v, nil
}

// PauseSubscription marks the subscription paused with a reason, as every process will see
// at its next registry poll. A missing subscription is not an error: it was deleted meanwhile.
func (b *Broker) PauseSubscription(ctx context.Context, name, reason string) error {
	s, err := b.GetSubscription(ctx, name)
	if errors.Is(err, core.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if s.Paused {
		return nil
	}
	s.Paused, s.PausedReason, s.UpdatedAt = true, reason, time.Now().UTC()
	_, _, err = b.PutSubscription(ctx, s)
	return err
}
