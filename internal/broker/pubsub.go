package broker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// PublishPubSub sends a message on the subject's channel (PUBLISH, or SPUBLISH when
// sharded) and returns its id and how many subscribers Redis handed it to.
func (b *Broker) PublishPubSub(ctx context.Context, subject string, body []byte, headers map[string]string, sharded bool) (string, int64, error) {
	id := newMessageID(subject, "p")
	env := encodeEnvelope(id, body, headers)
	cmd := b.c.B().Publish().Channel(subject).Message(env).Build()
	if sharded {
		cmd = b.c.B().Spublish().Channel(subject).Message(env).Build()
	}
	n, err := b.c.Do(ctx, cmd).AsInt64()
	if err != nil {
		return "", 0, fmt.Errorf("publish %s: %w", subject, classify(err))
	}
	return id, n, nil
}

// SubscribePubSub receives the subscription's channel (or pattern) on a connection of its
// own and calls fn for each message until ctx ends or the connection is lost (the error
// says which). fn runs on the receiving goroutine.
func (b *Broker) SubscribePubSub(ctx context.Context, s *core.Subscription, onSubscribed func(), fn func(core.Message)) error {
	var cmd rueidis.Completed
	switch {
	case s.PubSubMode == "sharded":
		cmd = b.c.B().Ssubscribe().Channel(s.Subject).Build()
	case s.Pattern:
		cmd = b.c.B().Psubscribe().Pattern(s.Subject).Build()
	default:
		cmd = b.c.B().Subscribe().Channel(s.Subject).Build()
	}
	dc, release := b.c.Dedicate()
	defer release()
	hooks := dc.SetPubSubHooks(rueidis.PubSubHooks{
		OnSubscription: func(rueidis.PubSubSubscription) { onSubscribed() },
		OnMessage: func(m rueidis.PubSubMessage) {
			if strings.HasPrefix(m.Channel, core.ReservedPrefix) {
				return // the bridge's own channels (a pattern such as "*" matches them too)
			}
			msg := decodeEnvelope(m.Channel, m.Message)
			msg.Origin, msg.Deliveries = core.Unsettled, 1
			fn(msg)
		},
	})
	if err := dc.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("subscribe %s: %w", s.Subject, classify(err))
	}
	select {
	case err := <-hooks:
		if err == nil {
			err = fmt.Errorf("subscription connection closed")
		}
		return fmt.Errorf("subscribe %s: %w", s.Subject, classify(err))
	case <-ctx.Done():
		return nil
	}
}

// pubsubSeenTTL bounds how long a Pub/Sub message id is remembered to keep processes from
// pushing it twice.
const pubsubSeenTTL = 10 * time.Minute

// ClaimPubSub reports whether this process is the one to push message id of s: every
// bridge process receives each Pub/Sub message, and exactly one of them may push it.
func (b *Broker) ClaimPubSub(ctx context.Context, s *core.Subscription, id string) (bool, error) {
	key := "bridge:{pubsub:" + s.Name + "}:seen:" + id
	err := b.c.Do(ctx, b.c.B().Set().Key(key).Value("1").Nx().Px(pubsubSeenTTL).Build()).Error()
	if rueidis.IsRedisNil(err) {
		return false, nil
	}
	if err != nil {
		return false, classify(err)
	}
	return true, nil
}
