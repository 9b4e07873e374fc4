package delivery

import (
	"net/http"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/webhook"
)

// Outcome is what happens to a message after one push.
type Outcome uint8

const (
	// Ack: the webhook took it.
	Ack Outcome = iota
	// Requeue: try again after a backoff (or the webhook's Retry-After).
	Requeue
	// Drop: dead-letter it with reason "dropped".
	Drop
	// Gone: dead-letter it "dropped" and pause the subscription (410).
	Gone
)

func (o Outcome) String() string {
	switch o {
	case Ack:
		return "ack"
	case Requeue:
		return "retry"
	case Drop:
		return "dead-letter"
	case Gone:
		return "gone"
	}
	return "unknown"
}

// Verdict applies SPEC §5's table to a push result: status is 0 when no response arrived
// (timeout, connection or TLS error); a final 1xx counts as a failure like those.
func Verdict(status int) Outcome {
	switch {
	case status < 200:
		// No answer, or a final 1xx (e.g. 101), which acknowledges nothing.
		return Requeue
	case status >= 200 && status < 300:
		return Ack
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly,
		status == http.StatusTooManyRequests, status >= 500:
		return Requeue
	case status == http.StatusGone:
		return Gone
	}
	return Drop
}

// retryDelay is how long to wait before the next delivery after the given number of
// deliveries failed: the webhook's Retry-After when it sent one (capped at an hour),
// otherwise exponential backoff with jitter inside the subscription's window.
func retryDelay(s *core.Subscription, deliveries int, retryAfter string, now time.Time) time.Duration {
	if retryAfter != "" {
		if d, ok := webhook.ParseRetryAfter(retryAfter, now); ok {
			return min(d, core.MaxRetryAfter)
		}
	}
	return webhook.Backoff(time.Duration(s.Retry.MinBackoff), time.Duration(s.Retry.MaxBackoff), deliveries)
}
