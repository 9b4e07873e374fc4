package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	h1, h2 := digest("one"), digest("two")
	tests := []struct {
		name      string
		data      string
		wantNames []string // on success
		wantErr   []string // substrings of the error; empty means success
	}{
		{name: "empty file", data: "", wantNames: nil},
		{name: "only comments", data: "# nothing yet\n", wantNames: nil},
		{name: "null document", data: "~\n", wantNames: nil},
		{name: "null list", data: "tokens:\n", wantNames: nil},
		{name: "empty list", data: "tokens: []\n", wantNames: nil},
		{
			name: "valid",
			data: fmt.Sprintf(`
tokens:
  - name: billing-publisher
    token_sha256: %s
    scopes: ["publish:orders.*", "subscriptions:read"]
  - name: ops
    token_sha256: %s
    scopes:
      - admin
      - subscriptions:write
      - dead-letters:write
`, h1, strings.ToUpper(h2)),
			wantNames: []string{"billing-publisher", "ops"},
		},
		{
			// YAML reads an all-decimal digest as a number; the text must survive.
			name:      "digest of decimal digits",
			data:      "tokens: [{name: n, token_sha256: " + strings.Repeat("1", 64) + ", scopes: [admin]}]",
			wantNames: []string{"n"},
		},
		{
			name:      "anchors and aliases",
			data:      fmt.Sprintf("tokens:\n  - {name: a, token_sha256: %s, scopes: &s [admin]}\n  - {name: b, token_sha256: %s, scopes: *s}\n", h1, h2),
			wantNames: []string{"a", "b"},
		},
		{
			name:    "unknown scope",
			data:    fmt.Sprintf("tokens:\n  - name: billing\n    token_sha256: %s\n    scopes: [publish:orders, subscriptions:delete]\n", h1),
			wantErr: []string{`tokens[0]`, `name "billing"`, `line 2`, `"scopes"`, `unknown scope "subscriptions:delete"`},
		},
		{
			name:    "scope without glob",
			data:    fmt.Sprintf("tokens: [{name: b, token_sha256: %s, scopes: [\"publish:\"]}]", h1),
			wantErr: []string{`name "b"`, `unknown scope "publish:"`},
		},
		{
			name:    "bare publish",
			data:    fmt.Sprintf("tokens: [{name: b, token_sha256: %s, scopes: [publish]}]", h1),
			wantErr: []string{`unknown scope "publish"`},
		},
		{
			name:    "glob with brackets",
			data:    fmt.Sprintf("tokens: [{name: b, token_sha256: %s, scopes: [\"publish:orders.[ab]\"]}]", h1),
			wantErr: []string{`unknown scope "publish:orders.[ab]"`},
		},
		{
			name:    "scope case matters",
			data:    fmt.Sprintf("tokens: [{name: b, token_sha256: %s, scopes: [Admin]}]", h1),
			wantErr: []string{`unknown scope "Admin"`},
		},
		{
			name:    "empty scopes",
			data:    fmt.Sprintf("tokens: [{name: b, token_sha256: %s, scopes: []}]", h1),
			wantErr: []string{`"scopes"`, `must not be empty`},
		},
		{
			name:    "scopes not a list",
			data:    fmt.Sprintf("tokens: [{name: b, token_sha256: %s, scopes: admin}]", h1),
			wantErr: []string{`"scopes"`, `must be a list`},
		},
		{
			name:    "scopes missing",
			data:    fmt.Sprintf("tokens: [{name: b, token_sha256: %s}]", h1),
			wantErr: []string{`"scopes"`, `required`},
		},
		{
			name:    "bad hex",
			data:    "tokens: [{name: b, token_sha256: " + strings.Repeat("g", 64) + ", scopes: [admin]}]",
			wantErr: []string{`name "b"`, `"token_sha256"`, `64 hex digits`},
		},
		{
			name:    "short hex",
			data:    "tokens: [{name: b, token_sha256: " + h1[:63] + ", scopes: [admin]}]",
			wantErr: []string{`"token_sha256"`, `64 hex digits`},
		},
		{
			name:    "digest missing",
			data:    "tokens: [{name: b, scopes: [admin]}]",
			wantErr: []string{`"token_sha256"`, `required`},
		},
		{
			name:    "digest a list",
			data:    "tokens: [{name: b, token_sha256: [a], scopes: [admin]}]",
			wantErr: []string{`"token_sha256"`, `64 hex digits`},
		},
		{
			name:    "duplicate name",
			data:    fmt.Sprintf("tokens:\n  - {name: a, token_sha256: %s, scopes: [admin]}\n  - {name: a, token_sha256: %s, scopes: [admin]}\n", h1, h2),
			wantErr: []string{`tokens[1]`, `name "a"`, `line 3`, `duplicate name, already used by tokens[0]`},
		},
		{
			name:    "duplicate digest",
			data:    fmt.Sprintf("tokens:\n  - {name: a, token_sha256: %s, scopes: [admin]}\n  - {name: b, token_sha256: %s, scopes: [admin]}\n", h1, h1),
			wantErr: []string{`tokens[1]`, `name "b"`, `same token as tokens[0] (name "a")`},
		},
		{
			name:    "duplicate digest in other case",
			data:    fmt.Sprintf("tokens:\n  - {name: a, token_sha256: %s, scopes: [admin]}\n  - {name: b, token_sha256: %s, scopes: [admin]}\n", h1, strings.ToUpper(h1)),
			wantErr: []string{`same token as tokens[0]`},
		},
		{
			name:    "empty name",
			data:    fmt.Sprintf("tokens: [{name: '', token_sha256: %s, scopes: [admin]}]", h1),
			wantErr: []string{`"name"`, `must not be empty`},
		},
		{
			name:    "name missing",
			data:    fmt.Sprintf("tokens: [{token_sha256: %s, scopes: [admin]}]", h1),
			wantErr: []string{`"name"`, `required`},
		},
		{
			name:    "name with a newline",
			data:    fmt.Sprintf("tokens: [{name: \"a\\nb\", token_sha256: %s, scopes: [admin]}]", h1),
			wantErr: []string{`"name"`, `non-printable`},
		},
		{
			name:    "unknown field",
			data:    fmt.Sprintf("tokens: [{name: a, token_sha256: %s, scopes: [admin], expires: 2030-01-01}]", h1),
			wantErr: []string{`name "a"`, `field "expires"`, `unknown field`},
		},
		{
			name:    "field twice",
			data:    fmt.Sprintf("tokens:\n  - name: a\n    name: b\n    token_sha256: %s\n    scopes: [admin]\n", h1),
			wantErr: []string{`tokens[0]`},
		},
		{
			name:    "unknown top-level key",
			data:    "tokenz: []\n",
			wantErr: []string{`unknown top-level key "tokenz"`},
		},
		{
			name:    "top level a list",
			data:    "- a\n",
			wantErr: []string{`top level must be a mapping`},
		},
		{
			name:    "tokens not a list",
			data:    "tokens: {a: b}\n",
			wantErr: []string{`"tokens" must be a list`},
		},
		{
			name:    "entry not a mapping",
			data:    "tokens: [a]\n",
			wantErr: []string{`tokens[0]`, `must be a mapping`},
		},
		{
			name:    "two documents",
			data:    "tokens: []\n---\ntokens: []\n",
			wantErr: []string{`only one YAML document`},
		},
		{
			name:    "not YAML",
			data:    "tokens: [\n",
			wantErr: []string{`not valid YAML`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.data))
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Parse succeeded with %d tokens, want an error", s.Len())
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := s.Names(); !equal(got, tt.wantNames) {
				t.Fatalf("names = %q, want %q", got, tt.wantNames)
			}
		})
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestParseScopes(t *testing.T) {
	s := mustParse(t, fmt.Sprintf(`
tokens:
  - name: a
    token_sha256: %s
    scopes: ["publish:orders.*", "subscriptions:read"]
`, digest("a")))
	p, ok := s.Authenticate("a")
	if !ok {
		t.Fatal("not authenticated")
	}
	if !p.Allows(ActionPublish, "orders.eu") || !p.Allows(ActionSubscriptionsRead, "") {
		t.Error("a scope of the file is not granted")
	}
	if p.Allows(ActionPublish, "billing") || p.Allows(ActionSubscriptionsWrite, "") {
		t.Error("a scope not in the file is granted")
	}
}

func TestParseTokenError(t *testing.T) {
	_, err := Parse([]byte("tokens: [{name: a, scopes: [nope], token_sha256: " + digest("a") + "}]"))
	var te *TokenError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want a *TokenError", err)
	}
	if te.Index != 0 || te.Name != "a" || te.Field != "scopes" || te.Line != 1 {
		t.Errorf("TokenError = %+v", te)
	}
}

// A token pasted into token_sha256 by mistake must not show up in the error, which is
// logged.
func TestParseErrorHidesValue(t *testing.T) {
	secrets := []string{
		"br_live_0123456789abcdef0123456789abcdef", // wrong length
		"zz" + strings.Repeat("a", 62),             // right length, not hex
		strings.Repeat("s3cret", 11)[:64],          // right length, not hex
	}
	for _, secret := range secrets {
		_, err := Parse([]byte(fmt.Sprintf("tokens: [{name: a, token_sha256: %q, scopes: [admin]}]", secret)))
		if err == nil {
			t.Fatalf("accepted %q", secret)
		}
		for i := 0; i+8 <= len(secret); i++ {
			if strings.Contains(err.Error(), secret[i:i+8]) {
				t.Fatalf("error %q reveals part of the value", err)
			}
		}
	}
}

func TestParseLimits(t *testing.T) {
	t.Run("too large", func(t *testing.T) {
		data := make([]byte, MaxFileSize+1)
		for i := range data {
			data[i] = '#'
		}
		if _, err := Parse(data); err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("too many", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("tokens:\n")
		for i := 0; i <= MaxTokens; i++ {
			b.WriteString("- {}\n")
		}
		if _, err := Parse([]byte(b.String())); err == nil || !strings.Contains(err.Error(), "more than the limit") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("exactly the maximum", func(t *testing.T) {
		// Flow style and an alias: the block style of the example does not fit
		// MaxTokens entries into MaxFileSize.
		var b strings.Builder
		b.WriteString("tokens: [")
		for i := range MaxTokens {
			scopes := "*s"
			if i == 0 {
				scopes = "&s [admin]"
			}
			fmt.Fprintf(&b, "{name: t%d,token_sha256: %s,scopes: %s},", i, digest(fmt.Sprint(i)), scopes)
		}
		b.WriteString("]")
		if b.Len() > MaxFileSize {
			t.Fatalf("test file is %d bytes, over the limit", b.Len())
		}
		s := mustParse(t, b.String())
		if s.Len() != MaxTokens {
			t.Fatalf("Len = %d", s.Len())
		}
	})
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "tokens.yaml")
	writeFile(t, good, fmt.Sprintf("tokens: [{name: a, token_sha256: %s, scopes: [admin]}]", digest("a")))
	s, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Authenticate("a"); !ok {
		t.Error("token not loaded")
	}

	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "tokens: [{name: a}]")
	if _, err := Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+": ") {
		t.Errorf("err = %v, want it to start with the path", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want ErrNotExist", err)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("tokens: []\n"))
	f.Add([]byte(`
tokens:
  - name: billing-publisher
    token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    scopes: ["publish:orders.*", "subscriptions:read"]
`))
	f.Add([]byte("tokens:\n  - {name: a, token_sha256: " + strings.Repeat("0", 64) + ", scopes: &s [admin, \"publish:?*\"]}\n  - {name: b, token_sha256: " + strings.Repeat("1", 64) + ", scopes: *s}\n"))
	f.Add([]byte("tokens: [{name: a, token_sha256: x, scopes: [publish:]}]"))
	f.Add([]byte("a: &a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if s != nil {
				t.Fatal("a set and an error")
			}
			return
		}
		if s.Len() > MaxTokens {
			t.Fatalf("%d tokens", s.Len())
		}
		seen := map[string]bool{}
		for _, n := range s.Names() {
			if n == "" || seen[n] {
				t.Fatalf("bad or duplicate name %q", n)
			}
			seen[n] = true
		}
		// Whatever was parsed must be usable without panicking.
		p, _ := s.Authenticate("x")
		p.Allows(ActionPublish, "orders.eu")
		if _, err := Merge(s, s); s.Len() > 0 && err == nil {
			t.Fatal("merging a set with itself succeeded")
		}
	})
}
