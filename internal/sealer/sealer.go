// Package sealer encrypts the secrets the bridge stores in Redis (subscription signing
// secrets and static headers) with AES-256-GCM under BRIDGE_SECRET_KEY.
package sealer

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// prefix marks a sealed value; the version lets the format change later.
const prefix = "enc:v1:"

// ErrNoKey is returned when a sealed value is read without a key.
var ErrNoKey = errors.New("value is encrypted and BRIDGE_SECRET_KEY is not set")

// Sealer is safe for concurrent use. A nil *Sealer stores values in plain text.
type Sealer struct {
	aead cipher.AEAD
}

// New parses a key given as standard base64 of 32 random bytes (openssl rand -base64 32).
func New(key string) (*Sealer, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(key))
	if err != nil || len(raw) != 32 {
		return nil, errors.New("must be the base64 of 32 random bytes (openssl rand -base64 32)")
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Sealed reports whether v was produced by Seal.
func Sealed(v string) bool { return strings.HasPrefix(v, prefix) }

// Seal encrypts v, bound to context (for example "subscription/orders/secret") so a sealed
// value copied to another place does not open there. Empty values stay empty.
func (s *Sealer) Seal(v, context string) string {
	if s == nil || v == "" {
		return v
	}
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	out := s.aead.Seal(nonce, nonce, []byte(v), []byte(context))
	return prefix + base64.StdEncoding.EncodeToString(out)
}

// Open decrypts a sealed value; a plain value is returned as it is (stored before a key
// was configured; the next write seals it).
func (s *Sealer) Open(v, context string) (string, error) {
	if !Sealed(v) {
		return v, nil
	}
	if s == nil {
		return "", ErrNoKey
	}
	raw, err := base64.StdEncoding.DecodeString(v[len(prefix):])
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", errors.New("sealed value is malformed")
	}
	pt, err := s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], []byte(context))
	if err != nil {
		return "", fmt.Errorf("sealed value does not open with BRIDGE_SECRET_KEY (wrong key?)")
	}
	return string(pt), nil
}
