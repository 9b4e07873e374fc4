package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
)

// StaticName is the Principal.Name of the token given by BRIDGE_TOKEN.
const StaticName = "BRIDGE_TOKEN"

// Set is an immutable set of tokens, each known only by its SHA-256 digest. A nil *Set is
// an empty set. Authenticate is safe for concurrent use.
type Set struct {
	// digests[i] is the digest of the token of principals[i]. Parallel slices rather than a
	// map: Authenticate must look at every digest anyway, and a map keyed by the digest
	// would make the lookup time depend on the secret.
	digests    [][sha256.Size]byte
	principals []*Principal
}

// Static returns a set with one token that has every scope (BRIDGE_TOKEN), named
// StaticName. Only the token's digest is kept. An empty token gives an empty set: an
// empty BRIDGE_TOKEN means no token, and Authenticate never accepts an empty token anyway.
func Static(token string) *Set {
	if token == "" {
		return &Set{}
	}
	return &Set{
		digests:    [][sha256.Size]byte{sha256.Sum256([]byte(token))},
		principals: []*Principal{{Name: StaticName, admin: true}},
	}
}

// Merge returns a set holding the tokens of both; a nil set counts as empty. A token in
// both sets is an error, and so is a name used in both: the name is how logs tell callers
// apart, so two tokens must not share it.
func Merge(a, b *Set) (*Set, error) {
	if a == nil {
		a = &Set{}
	}
	if b == nil {
		b = &Set{}
	}
	out := &Set{
		digests:    make([][sha256.Size]byte, 0, a.Len()+b.Len()),
		principals: make([]*Principal, 0, a.Len()+b.Len()),
	}
	names := make(map[string]bool, a.Len()+b.Len())
	// Digests are not secret (the tokens file holds them), so a map keyed by them here,
	// while building the set, reveals nothing about a token presented later.
	digests := make(map[[sha256.Size]byte]string, a.Len()+b.Len())
	for _, s := range []*Set{a, b} {
		for i, d := range s.digests {
			name := s.principals[i].Name
			if other, dup := digests[d]; dup {
				return nil, fmt.Errorf("tokens %q and %q are the same token", other, name)
			}
			digests[d] = name
			if names[name] {
				return nil, fmt.Errorf("two tokens are named %q", name)
			}
			names[name] = true
			out.digests = append(out.digests, d)
			out.principals = append(out.principals, s.principals[i])
		}
	}
	return out, nil
}

// Authenticate finds the Principal of token. It hashes the presented token and compares
// the digest with every known digest in constant time, with no early exit, so the time it
// takes reveals neither which token matched nor whether one did (beyond the answer). It
// returns nil, false for an unknown or empty token. The Principal returned is the
// caller's own copy.
func (s *Set) Authenticate(token string) (*Principal, bool) {
	// The caller already knows whether it sent an empty token, so returning early here
	// reveals nothing.
	if s == nil || token == "" {
		return nil, false
	}
	d := sha256.Sum256([]byte(token))
	found := -1
	for i := range s.digests {
		eq := subtle.ConstantTimeCompare(d[:], s.digests[i][:])
		// Select without a branch on the comparison. Digests are unique within a set,
		// so at most one index matches.
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return nil, false
	}
	p := *s.principals[found] // a copy, so a caller changing Name affects nobody else
	return &p, true
}

// Len returns the number of tokens in s.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.digests)
}

// Names returns the names of the tokens in s, in order (the file's order, then the
// merged set's).
func (s *Set) Names() []string {
	if s == nil {
		return nil
	}
	out := make([]string, len(s.principals))
	for i, p := range s.principals {
		out[i] = p.Name
	}
	return out
}

// String describes s by its size only, so a set printed by accident (%v in a log line)
// shows no digest.
func (s *Set) String() string {
	return fmt.Sprintf("auth.Set(%d tokens)", s.Len())
}
