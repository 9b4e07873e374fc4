package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func digest(token string) string {
	d := sha256.Sum256([]byte(token))
	return hex.EncodeToString(d[:])
}

func mustParse(t *testing.T, data string) *Set {
	t.Helper()
	s, err := Parse([]byte(data))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s
}

func TestAuthenticate(t *testing.T) {
	file := mustParse(t, fmt.Sprintf(`
tokens:
  - name: billing
    token_sha256: %s
    scopes: ["publish:orders.*"]
  - name: ops
    token_sha256: %s
    scopes: [admin]
`, digest("billing-secret"), digest("ops-secret")))
	set, err := Merge(file, Static("static-secret"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		token    string
		wantName string // empty: refused
	}{
		{"first", "billing-secret", "billing"},
		{"second", "ops-secret", "ops"},
		{"static", "static-secret", StaticName},
		{"wrong", "nope", ""},
		{"prefix of a token", "billing-secre", ""},
		{"token plus a byte", "billing-secret ", ""},
		{"the digest itself", digest("billing-secret"), ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := set.Authenticate(tt.token)
			if tt.wantName == "" {
				if ok || p != nil {
					t.Fatalf("Authenticate(%q) = %v, %v; want nil, false", tt.token, p, ok)
				}
				return
			}
			if !ok || p == nil || p.Name != tt.wantName {
				t.Fatalf("Authenticate(%q) = %+v, %v; want %q", tt.token, p, ok, tt.wantName)
			}
		})
	}

	t.Run("static has every scope", func(t *testing.T) {
		p, _ := set.Authenticate("static-secret")
		for _, a := range []Action{ActionPublish, ActionSubscriptionsRead, ActionSubscriptionsWrite, ActionDeadLettersWrite} {
			if !p.Allows(a, "any.subject") {
				t.Errorf("static token refused %q", a)
			}
		}
	})
	t.Run("principal is a copy", func(t *testing.T) {
		p, _ := set.Authenticate("billing-secret")
		p.Name = "changed"
		if q, _ := set.Authenticate("billing-secret"); q.Name != "billing" {
			t.Fatalf("name changed to %q through another principal", q.Name)
		}
	})
}

func TestEmptySets(t *testing.T) {
	var nilSet *Set
	for name, s := range map[string]*Set{"nil": nilSet, "static empty": Static(""), "parsed empty": mustParse(t, "")} {
		t.Run(name, func(t *testing.T) {
			if s.Len() != 0 {
				t.Fatalf("Len = %d", s.Len())
			}
			if p, ok := s.Authenticate(""); ok || p != nil {
				t.Fatal("empty token accepted")
			}
			if _, ok := s.Authenticate("x"); ok {
				t.Fatal("token accepted")
			}
		})
	}
}

func TestMerge(t *testing.T) {
	a := mustParse(t, fmt.Sprintf("tokens: [{name: a, token_sha256: %s, scopes: [admin]}]", digest("ta")))
	b := mustParse(t, fmt.Sprintf("tokens: [{name: b, token_sha256: %s, scopes: [admin]}]", digest("tb")))
	sameToken := mustParse(t, fmt.Sprintf("tokens: [{name: c, token_sha256: %s, scopes: [admin]}]", digest("ta")))
	sameName := mustParse(t, fmt.Sprintf("tokens: [{name: a, token_sha256: %s, scopes: [admin]}]", digest("tc")))
	staticName := mustParse(t, fmt.Sprintf("tokens: [{name: BRIDGE_TOKEN, token_sha256: %s, scopes: [admin]}]", digest("td")))

	tests := []struct {
		name    string
		a, b    *Set
		wantLen int
		wantErr string
	}{
		{"disjoint", a, b, 2, ""},
		{"nil left", nil, b, 1, ""},
		{"nil right", a, nil, 1, ""},
		{"both nil", nil, nil, 0, ""},
		{"static", a, Static("tz"), 2, ""},
		{"same token", a, sameToken, 0, `tokens "a" and "c" are the same token`},
		{"static is a file token", a, Static("ta"), 0, `tokens "a" and "BRIDGE_TOKEN" are the same token`},
		{"same name", a, sameName, 0, `two tokens are named "a"`},
		{"file uses the static name", staticName, Static("tz"), 0, `two tokens are named "BRIDGE_TOKEN"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Merge(tt.a, tt.b)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Len() != tt.wantLen {
				t.Fatalf("Len = %d, want %d", m.Len(), tt.wantLen)
			}
		})
	}
	if _, ok := must(Merge(a, b)).Authenticate("tb"); !ok {
		t.Error("merged set lost b's token")
	}
}

func must(s *Set, err error) *Set {
	if err != nil {
		panic(err)
	}
	return s
}

func TestNoSecretInOutput(t *testing.T) {
	const token = "s3cr3t-t0ken-value"
	s := Static(token)
	for _, out := range []string{s.String(), fmt.Sprintf("%v", s), fmt.Sprintf("%+v", s), fmt.Sprintf("%v", *s)} {
		if strings.Contains(out, token) || strings.Contains(out, digest(token)) {
			t.Errorf("output reveals the token: %s", out)
		}
	}
	p, _ := s.Authenticate(token)
	if out := fmt.Sprintf("%+v", p); strings.Contains(out, token) {
		t.Errorf("principal reveals the token: %s", out)
	}
}

func ExampleSet_Authenticate() {
	tokens, err := Parse([]byte(`
tokens:
  - name: billing-publisher
    # echo -n 'test' | sha256sum
    token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    scopes: ["publish:orders.*", "subscriptions:read"]
`))
	if err != nil {
		panic(err)
	}
	p, ok := tokens.Authenticate("test")
	fmt.Println(p.Name, ok)
	fmt.Println(p.Allows(ActionPublish, "orders.eu"), p.Allows(ActionPublish, "billing"))
	fmt.Println(Scope(ActionPublish, "billing"))
	// Output:
	// billing-publisher true
	// true false
	// publish:billing
}
