// Package broker speaks Redis for the bridge: the stream layout shared with
// ruststream-fred, consumer groups, the durable per-subscription retry set, the
// dead-letter streams and the subscription registry. Everything goes through one
// rueidis client, so concurrent callers are pipelined automatically.
package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/sealer"
	"github.com/redis/rueidis"
)

// Broker is safe for concurrent use.
type Broker struct {
	c      rueidis.Client
	sealer *sealer.Sealer
	// attemptMax caps each subscription's attempt log; 0 turns it off.
	attemptMax int
}

// Option configures a Broker.
type Option func(*Broker)

// WithSealer stores subscription secrets and static header values encrypted.
func WithSealer(s *sealer.Sealer) Option { return func(b *Broker) { b.sealer = s } }

// New returns a broker over c. The caller owns c and closes it after the broker's last use.
func New(c rueidis.Client, opts ...Option) *Broker {
	b := &Broker{c: c}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Ping checks that Redis answers.
func (b *Broker) Ping(ctx context.Context) error {
	return classify(b.c.Do(ctx, b.c.B().Ping().Build()).Error())
}

// gone is what a marker-checking script answers when the subscription is not the live one.
const gone = -1

// Answers of the lease operation (see leaseLua) besides gone.
const (
	deferFull    = -2
	leaseSettled = -3
)

// checkGone turns a script's gone answer into core.ErrGone, and the lease operation's
// answers into core.ErrDeferFull and core.ErrSettled.
func checkGone(res rueidis.RedisResult) error {
	if n, err := res.AsInt64(); err == nil {
		switch n {
		case gone:
			return core.ErrGone
		case deferFull:
			return core.ErrDeferFull
		case leaseSettled:
			return core.ErrSettled
		}
	}
	return res.Error()
}

// markerLua guards the scripts below: KEYS[1] is the marker, ARGV[1] the incarnation.
const markerLua = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
`

// classify maps Redis and transport failures onto the sentinel errors the HTTP layer and
// the engine branch on. Redis reports these conditions only through the error code word at
// the start of the reply (WRONGTYPE, OOM, READONLY…); rueidis has no helper for them.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, core.ErrUnavailable) || errors.Is(err, core.ErrWrongType) || errors.Is(err, core.ErrGone) {
		return err
	}
	if re, ok := rueidis.IsRedisErr(err); ok {
		if re.IsNil() {
			return err
		}
		code, _, _ := strings.Cut(re.Error(), " ")
		switch {
		case code == "WRONGTYPE":
			return fmt.Errorf("%w: %w", core.ErrWrongType, err)
		case code == "OOM", code == "READONLY", code == "MASTERDOWN", code == "NOREPLICAS",
			code == "BUSY", re.IsLoading(), re.IsClusterDown(), re.IsTryAgain():
			return fmt.Errorf("%w: %w", core.ErrUnavailable, err)
		}
		return err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	// Anything that is not a Redis reply is a connection problem or a deadline.
	return fmt.Errorf("%w: %w", core.ErrUnavailable, err)
}

func isNoGroup(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(re.Error(), "NOGROUP")
}

// MarkLive records s as the live subscription of its name, so its settlements may write
// its keys (see markerKey). Called when a subscription is created or found without a marker.
func (b *Broker) MarkLive(ctx context.Context, s *core.Subscription) error {
	err := b.c.Do(ctx, b.c.B().Set().Key(markerKey(s.Subject, s.Name)).Value(s.Incarnation()).Build()).Error()
	if err != nil {
		return fmt.Errorf("mark %s live: %w", s.Name, classify(err))
	}
	return nil
}

func isNoKey(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	// XGROUP DESTROY on a missing key answers "ERR The XGROUP subcommand requires the key to exist".
	return ok && strings.Contains(re.Error(), "requires the key to exist")
}
