package core

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Transport says how a subscription's messages travel in Redis (SPEC §2).
type Transport string

// The transports.
const (
	TransportStream Transport = "stream"
	TransportList   Transport = "list"
	TransportPubSub Transport = "pubsub"
)

// ListMode says how a list subscription takes its messages.
type ListMode string

// The list modes: reliable is at-least-once (a processing list per consumer), simple is
// at-most-once (a pop).
const (
	ListReliable ListMode = "reliable"
	ListSimple   ListMode = "simple"
)

// PubSubMode says which Pub/Sub family a subscription uses.
type PubSubMode string

// The Pub/Sub modes: classic (PUBLISH/SUBSCRIBE, patterns allowed) and sharded (Redis 7+).
const (
	PubSubClassic PubSubMode = "classic"
	PubSubSharded PubSubMode = "sharded"
)

// Defaults of Subscription fields (SPEC §4).
const (
	DefaultTransport     = TransportStream
	DefaultStart         = "new"
	DefaultMaxDeliveries = 5
	DefaultMinBackoff    = time.Second
	DefaultMaxBackoff    = 10 * time.Minute
	DefaultTimeout       = 30 * time.Second
	DefaultMaxInFlight   = 16
	MaxMaxInFlight       = 1024
	MaxMaxDeliveries     = 1000
	MaxTimeout           = 15 * time.Minute
	MaxStaticHeaders     = 32
	MaxStaticHeaderValue = 4096
	MaxRetryAfter        = time.Hour
	// MaxURLLength bounds a webhook URL: longer ones are mistakes or abuse, and the URL is
	// stored, logged and sent on every push.
	MaxURLLength      = 2048
	DefaultListMode   = ListReliable
	DefaultPubSubMode = PubSubClassic
	// DefaultDLQRetention is the default of Subscription.DLQRetention (SPEC §8).
	DefaultDLQRetention = 14 * 24 * time.Hour
	// MaxDLQRetention bounds dlq_retention: dead letters are for inspection and replay.
	MaxDLQRetention       = 366 * 24 * time.Hour
	visibilityTimeoutMult = 2
)

// Duration is a time.Duration that reads and writes Go duration strings ("30s") in JSON.
// Whole numbers are accepted on input as seconds.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n float64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("a duration is a string such as \"30s\" or a number of seconds")
		}
		*d = Duration(n * float64(time.Second))
		return nil
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ParseDuration accepts a Go duration ("1m30s") or whole seconds ("90").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(100*365*24*time.Hour/time.Second) {
			return 0, fmt.Errorf("duration %q out of range", s)
		}
		return time.Duration(n) * time.Second, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: use a Go duration such as \"30s\" or whole seconds", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	return v, nil
}

// CircuitBreaker stops pushing to a failing webhook (SPEC §10): after Failures consecutive
// failed attempts (0 = off) no push goes and no attempt is used until a probe, one per
// Cooldown (doubling after each failed probe, up to MaxCircuitCooldown), succeeds.
type CircuitBreaker struct {
	Failures int      `json:"failures"`
	Cooldown Duration `json:"cooldown"`
}

// CircuitBreakerInput is the optional circuit_breaker object of a PUT body.
type CircuitBreakerInput struct {
	Failures *int      `json:"failures"`
	Cooldown *Duration `json:"cooldown"`
}

// Format is how a push presents a message.
type Format string

// The push formats (SPEC §11).
const (
	// FormatRaw is the push of SPEC §5: the body as published.
	FormatRaw Format = "raw"
	// FormatCloudEvents is CloudEvents 1.0 binary content mode (ce-* headers).
	FormatCloudEvents Format = "cloudevents"
	// FormatCloudEventsStructured is CloudEvents 1.0 structured mode (application/cloudevents+json).
	FormatCloudEventsStructured Format = "cloudevents-structured"
)

// Deferred acknowledgements (SPEC §10).
const (
	DefaultMaxDeferred = 1000
	MaxMaxDeferred     = 1_000_000
	// MaxAckDeadline bounds Bridge-Ack-Deadline and an extension.
	MaxAckDeadline = 12 * time.Hour
)

// Deferrable reports whether a push of s may be deferred by its webhook: the message must
// be kept somewhere to be settled later (not Pub/Sub, not a simple list), and an ordered
// subscription cannot leave a key's next message waiting on a handler.
func (s *Subscription) Deferrable() bool {
	return !s.Ordered && (s.Transport == TransportStream || (s.Transport == TransportList && s.ListMode == ListReliable))
}

// Circuit breaker bounds and defaults.
const (
	DefaultCircuitCooldown = 30 * time.Second
	MaxCircuitCooldown     = 10 * time.Minute
	MaxCircuitFailures     = 10000
)

// Retry is the backoff window of a subscription.
type Retry struct {
	MinBackoff Duration `json:"min_backoff"`
	MaxBackoff Duration `json:"max_backoff"`
}

// Subscription is a webhook registered for a subject. The JSON form is the REST body;
// Secret is only shown by the calls that are meant to reveal it.
type Subscription struct {
	Name              string            `json:"name"`
	Subject           string            `json:"subject"`
	URL               string            `json:"url"`
	Transport         Transport         `json:"transport"`
	Start             string            `json:"start,omitempty"`
	ListMode          ListMode          `json:"list_mode,omitempty"`
	PubSubMode        PubSubMode        `json:"pubsub_mode,omitempty"`
	Pattern           bool              `json:"pattern,omitempty"`
	MaxDeliveries     int               `json:"max_deliveries"`
	Retry             Retry             `json:"retry"`
	Timeout           Duration          `json:"timeout"`
	VisibilityTimeout Duration          `json:"visibility_timeout"`
	MaxInFlight       int               `json:"max_in_flight"`
	RateLimit         float64           `json:"rate_limit"`
	Ordered           bool              `json:"ordered"`
	Headers           map[string]string `json:"headers"`
	// DLQRetention is how long a dead letter is kept.
	DLQRetention Duration `json:"dlq_retention"`
	// CircuitBreaker is off unless Failures > 0.
	CircuitBreaker CircuitBreaker `json:"circuit_breaker"`
	// MaxDeferred bounds the messages a webhook holds deferred at once (SPEC §10).
	MaxDeferred int `json:"max_deferred"`
	// Filter is a CEL condition a message must meet to be pushed ("" = every message).
	Filter string `json:"filter,omitempty"`
	// Format is how a push presents the message (SPEC §11).
	Format Format `json:"format"`
	Secret string `json:"secret,omitempty"`
	// PreviousSecret keeps signing beside Secret until PreviousSecretUntil (after a rotation).
	PreviousSecret      string     `json:"previous_secret,omitempty"`
	PreviousSecretUntil *time.Time `json:"previous_secret_until,omitempty"`
	Paused              bool       `json:"paused"`
	PausedReason        string     `json:"paused_reason,omitempty"`
	CreatedAt           time.Time  `json:"created_at"`
	UpdatedAt           time.Time  `json:"updated_at"`
}

// SubscriptionInput is the PUT body: every field optional but subject and url, unknown fields refused.
type SubscriptionInput struct {
	Subject           string               `json:"subject"`
	URL               string               `json:"url"`
	Transport         Transport            `json:"transport"`
	Start             string               `json:"start"`
	ListMode          ListMode             `json:"list_mode"`
	PubSubMode        PubSubMode           `json:"pubsub_mode"`
	Pattern           bool                 `json:"pattern"`
	MaxDeliveries     *int                 `json:"max_deliveries"`
	Retry             *RetryInput          `json:"retry"`
	Timeout           *Duration            `json:"timeout"`
	VisibilityTimeout *Duration            `json:"visibility_timeout"`
	MaxInFlight       *int                 `json:"max_in_flight"`
	RateLimit         *float64             `json:"rate_limit"`
	Ordered           bool                 `json:"ordered"`
	Headers           map[string]string    `json:"headers"`
	DLQRetention      *Duration            `json:"dlq_retention"`
	CircuitBreaker    *CircuitBreakerInput `json:"circuit_breaker"`
	MaxDeferred       *int                 `json:"max_deferred"`
	Filter            string               `json:"filter"`
	Format            Format               `json:"format"`
	Secret            string               `json:"secret"`
	Paused            bool                 `json:"paused"`
}

// RetryInput is the optional retry object of a PUT body.
type RetryInput struct {
	MinBackoff *Duration `json:"min_backoff"`
	MaxBackoff *Duration `json:"max_backoff"`
}

// Incarnation tells this subscription apart from an earlier one of the same name: it stays
// the same when the subscription is replaced, and changes when it is deleted and created again.
func (s *Subscription) Incarnation() string { return strconv.FormatInt(s.CreatedAt.UnixNano(), 10) }

// Secrets returns the secrets that sign a push at now: the current one, and the previous one
// while its rotation overlap lasts.
func (s *Subscription) Secrets(now time.Time) []string {
	if s.PreviousSecret != "" && s.PreviousSecretUntil != nil && now.Before(*s.PreviousSecretUntil) {
		return []string{s.Secret, s.PreviousSecret}
	}
	return []string{s.Secret}
}

// FieldError names the field of a subscription that is invalid.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Build turns a PUT body into a subscription with defaults applied, or returns a *FieldError.
// It does not check the URL's target (the caller's SSRF guard does) nor the secret format.
func (in *SubscriptionInput) Build(name string) (*Subscription, error) {
	s := &Subscription{
		Name:           name,
		Subject:        in.Subject,
		URL:            in.URL,
		Transport:      in.Transport,
		Start:          in.Start,
		MaxDeliveries:  DefaultMaxDeliveries,
		Retry:          Retry{MinBackoff: Duration(DefaultMinBackoff), MaxBackoff: Duration(DefaultMaxBackoff)},
		Timeout:        Duration(DefaultTimeout),
		MaxInFlight:    DefaultMaxInFlight,
		Ordered:        in.Ordered,
		Headers:        in.Headers,
		DLQRetention:   Duration(DefaultDLQRetention),
		CircuitBreaker: CircuitBreaker{Cooldown: Duration(DefaultCircuitCooldown)},
		MaxDeferred:    DefaultMaxDeferred,
		Filter:         in.Filter,
		Format:         in.Format,
		Secret:         in.Secret,
		Paused:         in.Paused,
	}
	if s.Subject == "" {
		return nil, &FieldError{"subject", "required"}
	}
	if s.URL == "" {
		return nil, &FieldError{"url", "required"}
	}
	if len(s.URL) > MaxURLLength {
		return nil, &FieldError{"url", fmt.Sprintf("at most %d bytes", MaxURLLength)}
	}
	if s.Transport == "" {
		s.Transport = DefaultTransport
	}
	switch s.Transport {
	case TransportStream:
		if in.ListMode != "" || in.PubSubMode != "" || in.Pattern {
			return nil, &FieldError{"transport", "list_mode, pubsub_mode and pattern need transport list or pubsub"}
		}
		if s.Start == "" {
			s.Start = DefaultStart
		}
		if s.Start != "new" && s.Start != "beginning" && !ValidEntryID(s.Start) {
			return nil, &FieldError{"start", "must be \"new\", \"beginning\" or a stream entry id such as 1700000000000-0"}
		}
	case TransportList:
		if in.PubSubMode != "" || in.Pattern || in.Start != "" {
			return nil, &FieldError{"transport", "start, pubsub_mode and pattern do not apply to lists"}
		}
		s.ListMode = in.ListMode
		if s.ListMode == "" {
			s.ListMode = DefaultListMode
		}
		if s.ListMode != ListSimple && s.ListMode != ListReliable {
			return nil, &FieldError{"list_mode", "must be \"simple\" or \"reliable\""}
		}
	case TransportPubSub:
		if in.ListMode != "" || in.Start != "" {
			return nil, &FieldError{"transport", "start and list_mode do not apply to Pub/Sub"}
		}
		s.PubSubMode, s.Pattern = in.PubSubMode, in.Pattern
		if s.PubSubMode == "" {
			s.PubSubMode = DefaultPubSubMode
		}
		if s.PubSubMode != PubSubClassic && s.PubSubMode != PubSubSharded {
			return nil, &FieldError{"pubsub_mode", "must be \"classic\" or \"sharded\""}
		}
		if s.Pattern && s.PubSubMode == PubSubSharded {
			return nil, &FieldError{"pattern", "sharded Pub/Sub takes no patterns"}
		}
	default:
		return nil, &FieldError{"transport", "must be \"stream\", \"list\" or \"pubsub\""}
	}
	if s.Pattern {
		if !patternRE.MatchString(s.Subject) || strings.HasPrefix(s.Subject, ReservedPrefix) {
			return nil, &FieldError{"subject", "a pattern is 1 to 200 of A-Z a-z 0-9 _ . : - and the glob characters * ? [ ] ^, not beginning with \"bridge:\""}
		}
	} else if !ValidSubject(s.Subject) {
		return nil, &FieldError{"subject", SubjectRule}
	}
	if s.Ordered && s.Transport != TransportStream {
		return nil, &FieldError{"ordered", "ordered delivery needs the stream transport"}
	}
	if in.MaxDeliveries != nil {
		s.MaxDeliveries = *in.MaxDeliveries
	}
	if s.MaxDeliveries < 1 || s.MaxDeliveries > MaxMaxDeliveries {
		return nil, &FieldError{"max_deliveries", fmt.Sprintf("must be between 1 and %d", MaxMaxDeliveries)}
	}
	if in.Retry != nil {
		if in.Retry.MinBackoff != nil {
			s.Retry.MinBackoff = *in.Retry.MinBackoff
		}
		if in.Retry.MaxBackoff != nil {
			s.Retry.MaxBackoff = *in.Retry.MaxBackoff
		}
	}
	if s.Retry.MinBackoff < Duration(10*time.Millisecond) {
		return nil, &FieldError{"retry.min_backoff", "must be at least 10ms"}
	}
	if s.Retry.MaxBackoff < s.Retry.MinBackoff || s.Retry.MaxBackoff > Duration(24*time.Hour) {
		return nil, &FieldError{"retry.max_backoff", "must be between min_backoff and 24h"}
	}
	if in.Timeout != nil {
		s.Timeout = *in.Timeout
	}
	if s.Timeout < Duration(100*time.Millisecond) || s.Timeout > Duration(MaxTimeout) {
		return nil, &FieldError{"timeout", "must be between 100ms and 15m"}
	}
	s.VisibilityTimeout = visibilityTimeoutMult * s.Timeout
	if in.VisibilityTimeout != nil {
		s.VisibilityTimeout = *in.VisibilityTimeout
	}
	// A reclaim must never take a message that is still being pushed: the visibility
	// timeout has to cover the request timeout plus the time to settle it.
	if s.VisibilityTimeout < s.Timeout+Duration(500*time.Millisecond) {
		return nil, &FieldError{"visibility_timeout", "must exceed timeout by at least 500ms"}
	}
	if s.VisibilityTimeout > Duration(24*time.Hour) {
		return nil, &FieldError{"visibility_timeout", "must be at most 24h"}
	}
	if in.MaxInFlight != nil {
		s.MaxInFlight = *in.MaxInFlight
	}
	if s.MaxInFlight < 1 || s.MaxInFlight > MaxMaxInFlight {
		return nil, &FieldError{"max_in_flight", fmt.Sprintf("must be between 1 and %d", MaxMaxInFlight)}
	}
	if in.RateLimit != nil {
		s.RateLimit = *in.RateLimit
	}
	if s.RateLimit < 0 || s.RateLimit > 1e6 {
		return nil, &FieldError{"rate_limit", "must be between 0 (no limit) and 1000000"}
	}
	if in.DLQRetention != nil {
		s.DLQRetention = *in.DLQRetention
	}
	if s.DLQRetention < Duration(time.Second) || s.DLQRetention > Duration(MaxDLQRetention) {
		return nil, &FieldError{"dlq_retention", "must be between 1s and 8784h (366 days)"}
	}
	if cb := in.CircuitBreaker; cb != nil {
		if cb.Failures != nil {
			s.CircuitBreaker.Failures = *cb.Failures
		}
		if cb.Cooldown != nil {
			s.CircuitBreaker.Cooldown = *cb.Cooldown
		}
	}
	if s.CircuitBreaker.Failures < 0 || s.CircuitBreaker.Failures > MaxCircuitFailures {
		return nil, &FieldError{"circuit_breaker.failures", fmt.Sprintf("must be between 0 (off) and %d", MaxCircuitFailures)}
	}
	if s.CircuitBreaker.Cooldown < Duration(time.Second) || s.CircuitBreaker.Cooldown > Duration(MaxCircuitCooldown) {
		return nil, &FieldError{"circuit_breaker.cooldown", "must be between 1s and 10m"}
	}
	if s.CircuitBreaker.Failures > 0 && s.Transport == TransportPubSub {
		return nil, &FieldError{"circuit_breaker", "Pub/Sub messages cannot wait for a circuit to close: at most once, they are not kept"}
	}
	if in.MaxDeferred != nil {
		s.MaxDeferred = *in.MaxDeferred
	}
	if s.MaxDeferred < 1 || s.MaxDeferred > MaxMaxDeferred {
		return nil, &FieldError{"max_deferred", fmt.Sprintf("must be between 1 and %d", MaxMaxDeferred)}
	}
	switch s.Format {
	case "":
		s.Format = FormatRaw
	case FormatRaw, FormatCloudEvents, FormatCloudEventsStructured:
	default:
		return nil, &FieldError{"format", `must be "raw", "cloudevents" or "cloudevents-structured"`}
	}
	if len(s.Headers) > MaxStaticHeaders {
		return nil, &FieldError{"headers", fmt.Sprintf("at most %d headers", MaxStaticHeaders)}
	}
	norm := make(map[string]string, len(s.Headers))
	for k, v := range s.Headers {
		if err := ValidateHeader(k, v); err != nil {
			return nil, &FieldError{"headers", err.Error()}
		}
		norm[http.CanonicalHeaderKey(k)] = v
	}
	s.Headers = norm
	return s, nil
}

var patternRE = regexp.MustCompile(`^[A-Za-z0-9_.:*?\[\]^-]{1,200}$`)

// ValidateHeader checks a header that a user asks the bridge to send on pushes.
func ValidateHeader(name, value string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("header name %q is not a valid HTTP field name", name)
	}
	if ForbiddenPushHeader(strings.ToLower(name)) || strings.EqualFold(name, HeaderContentType) {
		return fmt.Errorf("header %q is set by the bridge and cannot be overridden", name)
	}
	if len(value) > MaxStaticHeaderValue || !httpguts.ValidHeaderFieldValue(value) {
		return fmt.Errorf("value of header %q is not a valid HTTP field value (or longer than %d bytes)", name, MaxStaticHeaderValue)
	}
	return nil
}

// ValidEntryID reports whether s looks like a full stream entry id ("<ms>-<seq>").
func ValidEntryID(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}
