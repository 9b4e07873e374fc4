package broker

import (
	"context"
	"errors"
	"fmt"
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

// Receive subscribes to one channel or pattern and calls fn with each message (decoded
// from its envelope; Subject is the channel it came on) until ctx ends (nil) or the
// subscription is lost (the error says why). On RESP3 servers the subscription rides on
// the client's shared connection, so any number of them costs no connection of its own.
// fn runs on the connection's reader: it must not block.
func (b *Broker) Receive(ctx context.Context, kind core.PubSubKind, channel string, fn func(core.Message)) error {
	var cmd rueidis.Completed
	switch kind {
	case core.SubscribeSharded:
		cmd = b.c.B().Ssubscribe().Channel(channel).Build()
	case core.SubscribePattern:
		cmd = b.c.B().Psubscribe().Pattern(channel).Build()
	default:
		cmd = b.c.B().Subscribe().Channel(channel).Build()
	}
	err := b.c.Receive(ctx, cmd, func(m rueidis.PubSubMessage) {
		msg := decodeEnvelope(m.Channel, m.Message)
		msg.Origin, msg.Deliveries = core.Unsettled, 1
		fn(msg)
	})
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		err = errors.New("unsubscribed")
	}
	return fmt.Errorf("subscribe %s: %w", channel, classify(err))
}

// ReceiveControl receives the bridge's own channels, like Receive: onChange for every
// registry change ("<version>:<subscription name>"), onWake with the subject another
// process published to.
func (b *Broker) ReceiveControl(ctx context.Context, onChange func(change string), onWake func(subject string)) error {
	err := b.c.Receive(ctx, b.c.B().Subscribe().Channel(ChangesChannel, WakeChannel).Build(),
		func(m rueidis.PubSubMessage) {
			if m.Channel == WakeChannel {
				onWake(m.Message)
				return
			}
			onChange(m.Message)
		})
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		err = errors.New("unsubscribed")
	}
	return fmt.Errorf("subscribe to the bridge's channels: %w", classify(err))
}

// Wake tells the other bridge processes that subject has new messages (they read it
// without waiting for their next sweep).
func (b *Broker) Wake(ctx context.Context, subject string) error {
	return classify(b.c.Do(ctx, b.c.B().Publish().Channel(WakeChannel).Message(subject).Build()).Error())
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
