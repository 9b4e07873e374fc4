// Package auth authenticates REST API callers by bearer token (RFC 6750) and decides what
// each caller may do.
//
// Tokens come from BRIDGE_TOKEN (one token with every scope, see Static) and from the file
// named by BRIDGE_TOKENS_FILE (see Parse), which holds only the SHA-256 digest of each
// token, never the token itself, so the file can be stored and reviewed like any other
// configuration. A plain SHA-256 is enough, unlike for passwords, because bearer tokens are
// long random secrets that no dictionary holds, and it keeps every request cheap.
//
// A token carries scopes:
//
//	publish:<subject glob>   publish to matching subjects; * matches any run of
//	                         characters (dots included), ? exactly one, nothing else
//	                         is special: publish:* allows every subject
//	subscriptions:read       list and read subscriptions
//	subscriptions:write      create, replace, delete, pause, seek subscriptions
//	dead-letters:write       replay and purge dead letters
//	schedules:read           list and read schedules
//	schedules:write          create, replace, delete, pause, resume schedules
//	admin                    everything
//
// A scope grants exactly what it names: subscriptions:write does not imply
// subscriptions:read, and neither subscriptions scope grants anything on schedules.
package auth

import (
	"strings"
	"unicode/utf8"
)

// Action is something a caller asks to do; Principal.Allows decides whether it may.
type Action string

// The actions the REST API checks.
const (
	ActionPublish            Action = "publish"
	ActionSubscriptionsRead  Action = "subscriptions:read"
	ActionSubscriptionsWrite Action = "subscriptions:write"
	ActionDeadLettersWrite   Action = "dead-letters:write"
	ActionSchedulesRead      Action = "schedules:read"
	ActionSchedulesWrite     Action = "schedules:write"
)

// Scope names as they appear in the tokens file.
const (
	scopeAdmin         = "admin"
	scopePublishPrefix = "publish:"
)

// maxGlobLen bounds a publish glob. Subjects are at most 200 characters, so a longer glob
// is a mistake, and the bound keeps matching (at worst glob length x subject length) cheap.
const maxGlobLen = 512

// Principal is an authenticated caller. Its scopes are fixed when the token set is built;
// the value is safe for concurrent use.
type Principal struct {
	// Name is the token's name from the tokens file ("BRIDGE_TOKEN" for the static
	// token). It identifies the caller in logs; it is not a secret.
	Name string

	admin              bool
	subscriptionsRead  bool
	subscriptionsWrite bool
	deadLettersWrite   bool
	schedulesRead      bool
	schedulesWrite     bool
	publish            []string // subject globs
}

// Allows reports whether p may do action on resource. resource is the subject for
// ActionPublish and ignored otherwise. admin allows every action. A nil Principal and an
// action that is not one of the Action constants are never allowed, admin included, so a
// misspelt action fails closed instead of opening the API to admins only by accident.
func (p *Principal) Allows(action Action, resource string) bool {
	if p == nil {
		return false
	}
	switch action {
	case ActionPublish:
		if p.admin {
			return true
		}
		for _, g := range p.publish {
			if matchGlob(g, resource) {
				return true
			}
		}
		return false
	case ActionSubscriptionsRead:
		return p.admin || p.subscriptionsRead
	case ActionSubscriptionsWrite:
		return p.admin || p.subscriptionsWrite
	case ActionDeadLettersWrite:
		return p.admin || p.deadLettersWrite
	case ActionSchedulesRead:
		return p.admin || p.schedulesRead
	case ActionSchedulesWrite:
		return p.admin || p.schedulesWrite
	default:
		return false
	}
}

// Scopes lists p's scopes as the tokens file names them.
func (p *Principal) Scopes() []string {
	var out []string
	if p.admin {
		out = append(out, scopeAdmin)
	}
	if p.subscriptionsRead {
		out = append(out, string(ActionSubscriptionsRead))
	}
	if p.subscriptionsWrite {
		out = append(out, string(ActionSubscriptionsWrite))
	}
	if p.deadLettersWrite {
		out = append(out, string(ActionDeadLettersWrite))
	}
	if p.schedulesRead {
		out = append(out, string(ActionSchedulesRead))
	}
	if p.schedulesWrite {
		out = append(out, string(ActionSchedulesWrite))
	}
	for _, g := range p.publish {
		out = append(out, scopePublishPrefix+g)
	}
	return out
}

// MayPublish reports whether p may publish to some subject.
func (p *Principal) MayPublish() bool { return p != nil && (p.admin || len(p.publish) > 0) }

// Scope renders the scope a request needed, for the scope="..." attribute of a
// WWW-Authenticate header (RFC 6750 §3): "publish:<subject>" for ActionPublish, the action
// itself otherwise.
func Scope(action Action, resource string) string {
	if action == ActionPublish {
		return scopePublishPrefix + resource
	}
	return string(action)
}

// parseScope adds one scope of the tokens file to p. It reports false for a scope it does
// not know, so the caller can name the token and the scope.
func (p *Principal) parseScope(s string) bool {
	switch s {
	case scopeAdmin:
		p.admin = true
	case string(ActionSubscriptionsRead):
		p.subscriptionsRead = true
	case string(ActionSubscriptionsWrite):
		p.subscriptionsWrite = true
	case string(ActionDeadLettersWrite):
		p.deadLettersWrite = true
	case string(ActionSchedulesRead):
		p.schedulesRead = true
	case string(ActionSchedulesWrite):
		p.schedulesWrite = true
	default:
		g, ok := strings.CutPrefix(s, scopePublishPrefix)
		if !ok || !validGlob(g) {
			return false
		}
		p.publish = append(p.publish, g)
	}
	return true
}

// validGlob accepts the characters of a subject plus the two wildcards. Anything else
// (brackets, braces, spaces) could never match a valid subject, and refusing it at load
// tells whoever expected shell or Redis PSUBSCRIBE syntax that it is not supported here.
func validGlob(g string) bool {
	if g == "" || len(g) > maxGlobLen {
		return false
	}
	for i := 0; i < len(g); i++ {
		c := g[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_', c == '.', c == ':', c == '-', c == '*', c == '?':
		default:
			return false
		}
	}
	return true
}

// matchGlob reports whether s matches pattern, where '*' matches any run of characters
// (including none and including '.') and '?' exactly one character; every other byte
// matches itself. It never backtracks more than to the last '*' seen, which is enough for
// this syntax and keeps the cost at O(len(pattern) x len(s)) whatever the input: a
// recursive matcher would be exponential on patterns such as "*a*a*a*a*b".
func matchGlob(pattern, s string) bool {
	px, sx := 0, 0
	star, starS := -1, 0 // position of the last '*' in pattern, and where in s it resumes
	for px < len(pattern) || sx < len(s) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				star, starS = px, sx
				px++
				continue
			case '?':
				if sx < len(s) {
					// One character, not one byte: subjects are ASCII, but Allows may be
					// handed anything.
					_, n := utf8.DecodeRuneInString(s[sx:])
					px++
					sx += n
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		// Mismatch: let the last '*' swallow one more character and retry after it.
		if star >= 0 && starS < len(s) {
			_, n := utf8.DecodeRuneInString(s[starS:])
			starS += n
			px, sx = star+1, starS
			continue
		}
		return false
	}
	return true
}
