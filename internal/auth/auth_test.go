package auth

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func principal(t *testing.T, scopes ...string) *Principal {
	t.Helper()
	p := &Principal{Name: "test"}
	for _, s := range scopes {
		if !p.parseScope(s) {
			t.Fatalf("parseScope(%q) = false", s)
		}
	}
	return p
}

func TestAllows(t *testing.T) {
	tests := []struct {
		name     string
		scopes   []string
		action   Action
		resource string
		want     bool
	}{
		{"star suffix matches one level", []string{"publish:orders.*"}, ActionPublish, "orders.eu", true},
		{"star suffix matches dots", []string{"publish:orders.*"}, ActionPublish, "orders.eu.west", true},
		{"star suffix matches empty run", []string{"publish:orders.*"}, ActionPublish, "orders.", true},
		{"star suffix needs the dot", []string{"publish:orders.*"}, ActionPublish, "orders", false},
		{"star suffix is not a prefix match", []string{"publish:orders.*"}, ActionPublish, "ordersx", false},
		{"star suffix other subject", []string{"publish:orders.*"}, ActionPublish, "billing.eu", false},
		{"exact", []string{"publish:orders"}, ActionPublish, "orders", true},
		{"exact no prefix", []string{"publish:orders"}, ActionPublish, "orders.eu", false},
		{"exact is case-sensitive", []string{"publish:orders"}, ActionPublish, "Orders", false},
		{"star alone", []string{"publish:*"}, ActionPublish, "anything.at:all-1", true},
		{"star alone empty", []string{"publish:*"}, ActionPublish, "", true},
		{"star in the middle", []string{"publish:orders.*.created"}, ActionPublish, "orders.eu.west.created", true},
		{"star in the middle miss", []string{"publish:orders.*.created"}, ActionPublish, "orders.eu.updated", false},
		{"question one char", []string{"publish:orders.??"}, ActionPublish, "orders.eu", true},
		{"question too short", []string{"publish:orders.??"}, ActionPublish, "orders.e", false},
		{"question too long", []string{"publish:orders.??"}, ActionPublish, "orders.eur", false},
		{"question matches dot", []string{"publish:orders?eu"}, ActionPublish, "orders.eu", true},
		{"second glob matches", []string{"publish:billing", "publish:orders.*"}, ActionPublish, "orders.eu", true},
		{"publish does not give read", []string{"publish:*"}, ActionSubscriptionsRead, "", false},
		{"admin publishes", []string{"admin"}, ActionPublish, "orders.eu", true},
		{"admin reads", []string{"admin"}, ActionSubscriptionsRead, "", true},
		{"admin writes", []string{"admin"}, ActionSubscriptionsWrite, "", true},
		{"admin dead letters", []string{"admin"}, ActionDeadLettersWrite, "", true},
		{"admin unknown action", []string{"admin"}, Action("publsh"), "x", false},
		{"read reads", []string{"subscriptions:read"}, ActionSubscriptionsRead, "", true},
		{"read does not write", []string{"subscriptions:read"}, ActionSubscriptionsWrite, "", false},
		{"write writes", []string{"subscriptions:write"}, ActionSubscriptionsWrite, "", true},
		{"write does not read", []string{"subscriptions:write"}, ActionSubscriptionsRead, "", false},
		{"write is not dead letters", []string{"subscriptions:write"}, ActionDeadLettersWrite, "", false},
		{"dead letters", []string{"dead-letters:write"}, ActionDeadLettersWrite, "", true},
		{"dead letters do not publish", []string{"dead-letters:write"}, ActionPublish, "orders", false},
		{"resource ignored for read", []string{"subscriptions:read"}, ActionSubscriptionsRead, "whatever", true},
		{"admin reads schedules", []string{"admin"}, ActionSchedulesRead, "", true},
		{"admin writes schedules", []string{"admin"}, ActionSchedulesWrite, "", true},
		{"schedules read reads", []string{"schedules:read"}, ActionSchedulesRead, "", true},
		{"schedules read does not write", []string{"schedules:read"}, ActionSchedulesWrite, "", false},
		{"schedules write writes", []string{"schedules:write"}, ActionSchedulesWrite, "", true},
		{"schedules write does not read", []string{"schedules:write"}, ActionSchedulesRead, "", false},
		{"schedules write does not publish", []string{"schedules:write"}, ActionPublish, "orders", false},
		{"schedules write is not subscriptions", []string{"schedules:write"}, ActionSubscriptionsWrite, "", false},
		{"schedules read is not subscriptions", []string{"schedules:read"}, ActionSubscriptionsRead, "", false},
		{"subscriptions write is not schedules", []string{"subscriptions:write"}, ActionSchedulesWrite, "", false},
		{"subscriptions read is not schedules", []string{"subscriptions:read"}, ActionSchedulesRead, "", false},
		{"publish is not schedules", []string{"publish:*"}, ActionSchedulesWrite, "", false},
		{"no scopes", nil, ActionPublish, "orders", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := principal(t, tt.scopes...)
			if got := p.Allows(tt.action, tt.resource); got != tt.want {
				t.Errorf("Allows(%q, %q) with %q = %v, want %v", tt.action, tt.resource, tt.scopes, got, tt.want)
			}
		})
	}
}

func TestAllowsNilPrincipal(t *testing.T) {
	var p *Principal
	if p.Allows(ActionPublish, "orders") {
		t.Error("nil principal allowed")
	}
}

func TestScope(t *testing.T) {
	tests := []struct {
		action   Action
		resource string
		want     string
	}{
		{ActionPublish, "orders.eu", "publish:orders.eu"},
		{ActionSubscriptionsRead, "ignored", "subscriptions:read"},
		{ActionSubscriptionsWrite, "", "subscriptions:write"},
		{ActionDeadLettersWrite, "", "dead-letters:write"},
		{ActionSchedulesRead, "", "schedules:read"},
		{ActionSchedulesWrite, "", "schedules:write"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := Scope(tt.action, tt.resource); got != tt.want {
				t.Errorf("Scope(%q, %q) = %q, want %q", tt.action, tt.resource, got, tt.want)
			}
			// The scope a request needed is exactly what a token must hold to pass.
			p := principal(t, Scope(tt.action, tt.resource))
			if !p.Allows(tt.action, tt.resource) {
				t.Errorf("a token with scope %q is refused", tt.want)
			}
		})
	}
}

func TestMatchGlobPathological(t *testing.T) {
	// A backtracking matcher takes exponential time here; this one is quadratic.
	pattern := strings.Repeat("*a", 100) + "b"
	s := strings.Repeat("a", 200)
	if matchGlob(pattern, s) {
		t.Fatal("matched")
	}
}

// globRegexp is the reference semantics of a glob: * is .* and ? is . (one rune), with
// (?s) so both also match newlines.
func globRegexp(pattern string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString(`(?s)\A`)
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString(`\z`)
	return regexp.Compile(b.String())
}

func FuzzGlob(f *testing.F) {
	seeds := [][2]string{
		{"orders.*", "orders.eu"},
		{"orders.*", "orders.eu.west"},
		{"orders.*", "orders"},
		{"orders.*", "ordersx"},
		{"*", ""},
		{"*", "a.b.c"},
		{"orders.??", "orders.eu"},
		{"a*b*c", "aXXbYYc"},
		{"*a*a*a*b", "aaaaaaaaaaaa"},
		{"?", "é"},
		{"**", "x"},
		{"", ""},
		{"", "x"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		got := matchGlob(pattern, s) // must not panic
		if !matchGlob("*", s) {
			t.Fatalf("* does not match %q", s)
		}
		if !matchGlob(s, s) && !strings.ContainsAny(s, "*?") {
			t.Fatalf("%q does not match itself", s)
		}
		// Compare with the regexp semantics where those are well defined: regexp reads
		// invalid UTF-8 as U+FFFD, which a byte-wise literal comparison does not.
		if !utf8.ValidString(pattern) || !utf8.ValidString(s) {
			return
		}
		re, err := globRegexp(pattern)
		if err != nil {
			t.Fatalf("reference regexp for %q: %v", pattern, err)
		}
		if want := re.MatchString(s); got != want {
			t.Fatalf("matchGlob(%q, %q) = %v, regexp says %v", pattern, s, got, want)
		}
	})
}

// Scopes lists every scope a token was given, as the tokens file names them, so each can be
// parsed again into the same principal.
func TestScopesRoundTrip(t *testing.T) {
	all := []string{"admin", "subscriptions:read", "subscriptions:write", "dead-letters:write",
		"schedules:read", "schedules:write", "publish:orders.*"}
	p := principal(t, all...)
	got := p.Scopes()
	if strings.Join(got, " ") != strings.Join(all, " ") {
		t.Fatalf("Scopes() = %q, want %q", got, all)
	}
	for _, s := range all {
		if got := principal(t, s).Scopes(); len(got) != 1 || got[0] != s {
			t.Errorf("Scopes() of a token with only %q = %q", s, got)
		}
	}
}
