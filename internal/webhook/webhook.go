// Package webhook holds the pieces of a push that are pure functions of their
// input: Standard Webhooks v1 secrets and signatures, Retry-After parsing and
// the retry backoff.
package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"math"
	randv2 "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SecretPrefix starts every webhook secret (Standard Webhooks v1).
const SecretPrefix = "whsec_"

const (
	// minSecretBytes is the Standard Webhooks minimum key size.
	minSecretBytes = 24
	maxSecretBytes = 64
	// newSecretBytes is the key size NewSecret generates.
	newSecretBytes = 32

	sigVersion = "v1,"
	// sigLen is the length of one "v1,<base64 sha256>" entry.
	sigLen = len(sigVersion) + 44
)

// ErrInvalidSecret is returned (wrapped) by ValidateSecret and NewSigner for a
// secret that is not "whsec_" followed by the standard base64 of 24 to 64 bytes.
var ErrInvalidSecret = errors.New("webhook: invalid secret")

// NewSecret returns a fresh secret: "whsec_" + standard base64 of 32 random bytes.
func NewSecret() (string, error) {
	var b [newSecretBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("webhook: new secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(b[:]), nil
}

// ValidateSecret reports whether s is a usable secret. The error wraps
// ErrInvalidSecret and never contains the secret itself.
func ValidateSecret(s string) error {
	_, err := decodeSecret(s)
	return err
}

func decodeSecret(s string) ([]byte, error) {
	enc, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: missing %q prefix", ErrInvalidSecret, SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	// The decoder skips CR/LF and tolerates non-zero padding bits; requiring the
	// canonical encoding keeps one key from having several spellings.
	if err != nil || base64.StdEncoding.EncodeToString(key) != enc {
		return nil, fmt.Errorf("%w: not standard base64 after the prefix", ErrInvalidSecret)
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return nil, fmt.Errorf("%w: key is %d bytes, want %d to %d",
			ErrInvalidSecret, len(key), minSecretBytes, maxSecretBytes)
	}
	return key, nil
}

// Signer produces webhook-signature header values for one or more secrets
// (several while a rotated secret is still live). It is immutable and safe
// for concurrent use.
type Signer struct {
	keys [][]byte
	// pool holds *macs; hmac.New costs several allocations and Reset on a
	// used HMAC restores its keyed state cheaply.
	pool sync.Pool
}

type macs struct {
	h       []hash.Hash
	prefix  []byte // "{id}.{unix}." scratch
	sumBuf  [sha256.Size]byte
	encoded [44]byte
}

// NewSigner returns a Signer for the given secrets, signing in the order given.
// At least one secret is required and each must pass ValidateSecret.
func NewSigner(secrets ...string) (*Signer, error) {
	if len(secrets) == 0 {
		return nil, fmt.Errorf("%w: no secret given", ErrInvalidSecret)
	}
	s := &Signer{keys: make([][]byte, len(secrets))}
	for i, sec := range secrets {
		key, err := decodeSecret(sec)
		if err != nil {
			return nil, fmt.Errorf("secret %d: %w", i+1, err)
		}
		s.keys[i] = key
	}
	s.pool.New = func() any {
		m := &macs{h: make([]hash.Hash, len(s.keys)), prefix: make([]byte, 0, 64)}
		for i, k := range s.keys {
			m.h[i] = hmac.New(sha256.New, k)
		}
		return m
	}
	return s, nil
}

// Sign returns the webhook-signature header value for a message:
// "v1,<base64 HMAC-SHA256(key, id.unix.body)>" per secret, space-separated,
// in the order the secrets were given to NewSigner.
func (s *Signer) Sign(id string, ts time.Time, body []byte) string {
	m := s.pool.Get().(*macs)
	defer s.pool.Put(m)

	m.prefix = append(m.prefix[:0], id...)
	m.prefix = append(m.prefix, '.')
	m.prefix = strconv.AppendInt(m.prefix, ts.Unix(), 10)
	m.prefix = append(m.prefix, '.')

	var b strings.Builder
	b.Grow(len(m.h)*(sigLen+1) - 1)
	for i, h := range m.h {
		h.Reset()
		h.Write(m.prefix)
		h.Write(body)
		base64.StdEncoding.Encode(m.encoded[:], h.Sum(m.sumBuf[:0]))
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(sigVersion)
		b.Write(m.encoded[:])
	}
	return b.String()
}

// ParseRetryAfter parses a Retry-After header value: delta-seconds or an
// HTTP-date. It returns the wait from now (0 for a date in the past) and
// ok=false for an empty or unparseable value. A delta too large for a
// time.Duration saturates at the maximum; capping is the caller's job.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0, false
	}
	if isDigits(v) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(math.MaxInt64/int64(time.Second)) {
			// Only overflow gets here: the value is all digits.
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Backoff returns the delay before the next delivery after attempt failed
// deliveries (attempt >= 1; smaller values count as 1). The base delay is
// min*2^(attempt-1) capped at max, and the result is drawn with equal jitter
// from [base/2, base], then clamped to [min, max]. A max below min is treated
// as min; a non-positive min yields 0.
func Backoff(min, max time.Duration, attempt int) time.Duration {
	if min <= 0 {
		return 0
	}
	if max < min {
		max = min
	}
	if attempt < 1 {
		attempt = 1
	}
	d := max
	if shift := attempt - 1; shift < 63 && min <= max>>shift {
		d = min << shift
	}
	half := d / 2
	d = half + randv2.N(d-half+1)
	return clamp(d, min, max)
}

func clamp(d, lo, hi time.Duration) time.Duration {
	if d < lo {
		return lo
	}
	if d > hi {
		return hi
	}
	return d
}
