package subsfile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

const validFile = `
# two subscriptions
subscriptions:
  - name: orders-to-billing
    subject: orders
    url: https://billing.example.com/hooks/orders
    max_deliveries: 8
    retry: {min_backoff: 2s, max_backoff: 5m}
    timeout: 10s
    visibility_timeout: 45          # seconds
    rate_limit: 2.5
    headers: {Authorization: "Bearer abc"}
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  - name: audit
    subject: orders
    url: http://audit.internal/
    paused: true
`

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		data  string
		want  int    // entries, when no error
		err   string // substring of the error; empty for success
		index int    // EntryError.Index, when err is an *EntryError
		field string // EntryError.Field
	}{
		{name: "valid", data: validFile, want: 2},
		{name: "empty file", data: "", want: 0},
		{name: "only comments", data: "# nothing yet\n", want: 0},
		{name: "null list", data: "subscriptions:\n", want: 0},
		{name: "empty list", data: "subscriptions: []\n", want: 0},
		{name: "number of seconds", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', timeout: 90}\n", want: 1},
		{name: "anchors and merge keys", data: `
defaults: &d
  subject: s
  url: http://x/
subscriptions:
  - {<<: *d, name: a}
`, err: `unknown top-level key "defaults"`},
		{name: "merge keys inside the list", data: `
subscriptions:
  - &a {name: a, subject: s, url: "http://x/", timeout: 5s}
  - {<<: *a, name: b}
`, want: 2},
		{
			name: "unknown field", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', colour: red}\n",
			err: "unknown field", index: 0, field: "colour",
		},
		{
			name: "unknown nested field", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', retry: {min: 1s}}\n",
			err: "unknown field", index: 0, field: "retry.min",
		},
		{
			name: "bad duration", data: "subscriptions:\n- {name: ok, subject: s, url: 'http://x/'}\n- {name: a, subject: s, url: 'http://x/', timeout: soon}\n",
			err: `invalid duration "soon"`, index: 1, field: "timeout",
		},
		{
			name: "bad nested duration", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', retry: {min_backoff: 1s, max_backoff: later}}\n",
			err: `invalid duration "later"`, index: 0, field: "retry.max_backoff",
		},
		{
			name: "wrong type", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', max_deliveries: many}\n",
			err: "got a string, want a whole number", index: 0, field: "max_deliveries",
		},
		{
			name: "wrong header type", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', headers: {X-A: [1]}}\n",
			err: "got a list, want a string", index: 0, field: "headers",
		},
		{
			name: "duplicate name", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/'}\n- {name: a, subject: t, url: 'http://x/'}\n",
			err: "duplicate name, already used by subscriptions[0]", index: 1, field: "name",
		},
		{
			name: "missing name", data: "subscriptions:\n- {subject: s, url: 'http://x/'}\n",
			err: "required", index: 0, field: "name",
		},
		{
			name: "invalid name", data: "subscriptions:\n- {name: 'a b', subject: s, url: 'http://x/'}\n",
			err: "subjects and names match", index: 0, field: "name",
		},
		{
			name: "name not a string", data: "subscriptions:\n- {name: [a], subject: s, url: 'http://x/'}\n",
			err: "must be a string", index: 0, field: "name",
		},
		{
			name: "entry not a mapping", data: "subscriptions:\n- just-a-name\n",
			err: "must be a mapping", index: 0,
		},
		{
			name: "non-string key", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', headers: {1: x}}\n",
			err: "key 1 is not a string", index: 0, field: "headers",
		},
		{
			name: "not JSON-expressible", data: "subscriptions:\n- {name: a, subject: s, url: 'http://x/', rate_limit: .inf}\n",
			err: "cannot be expressed in JSON", index: 0, field: "rate_limit",
		},
		{name: "not YAML", data: "subscriptions: [a, b\n", err: "not valid YAML"},
		{name: "top level is a list", data: "- name: a\n", err: "top level must be a mapping"},
		{name: "top level is a scalar", data: "hello\n", err: "top level must be a mapping"},
		{name: "unknown top-level key", data: "subscription:\n- {name: a}\n", err: `unknown top-level key "subscription"`},
		{name: "subscriptions not a list", data: "subscriptions: {name: a}\n", err: "must be a list"},
		{name: "two documents", data: "subscriptions: []\n---\nsubscriptions: []\n", err: "only one YAML document"},
		{name: "duplicate key in entry", data: "subscriptions:\n- {name: a, name: b}\n", err: "already defined", index: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.data))
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if len(got) != tt.want {
					t.Fatalf("got %d entries, want %d", len(got), tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse succeeded with %d entries; want an error containing %q", len(got), tt.err)
			}
			if !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("error %q does not contain %q", err, tt.err)
			}
			var ee *EntryError
			if errors.As(err, &ee) {
				if ee.Index != tt.index || ee.Field != tt.field {
					t.Fatalf("EntryError index %d field %q, want %d %q (%v)", ee.Index, ee.Field, tt.index, tt.field, err)
				}
				if !strings.Contains(err.Error(), "subscriptions[") {
					t.Fatalf("error %q does not name the entry", err)
				}
			} else if tt.field != "" {
				t.Fatalf("error %v is not an *EntryError", err)
			}
		})
	}
}

func TestParseValues(t *testing.T) {
	got, err := Parse([]byte(validFile))
	if err != nil {
		t.Fatal(err)
	}
	e := got[0]
	if e.Name != "orders-to-billing" || e.Input.Subject != "orders" || e.Input.URL != "https://billing.example.com/hooks/orders" {
		t.Fatalf("entry 0: %+v", e)
	}
	in := e.Input
	if in.MaxDeliveries == nil || *in.MaxDeliveries != 8 {
		t.Fatalf("max_deliveries: %v", in.MaxDeliveries)
	}
	if in.Retry == nil || *in.Retry.MinBackoff != core.Duration(2*time.Second) || *in.Retry.MaxBackoff != core.Duration(5*time.Minute) {
		t.Fatalf("retry: %+v", in.Retry)
	}
	if *in.Timeout != core.Duration(10*time.Second) || *in.VisibilityTimeout != core.Duration(45*time.Second) {
		t.Fatalf("timeout %v visibility %v", *in.Timeout, *in.VisibilityTimeout)
	}
	if *in.RateLimit != 2.5 || in.Headers["Authorization"] != "Bearer abc" || in.Secret == "" {
		t.Fatalf("input: %+v", in)
	}
	if got[1].Name != "audit" || !got[1].Input.Paused || got[1].Input.Timeout != nil {
		t.Fatalf("entry 1: %+v", got[1])
	}
	// Every entry of the example must also pass the API's own validation.
	for _, e := range got {
		if _, err := e.Input.Build(e.Name); err != nil {
			t.Fatalf("%s: Build: %v", e.Name, err)
		}
	}
}

func TestParseLimits(t *testing.T) {
	t.Run("file too large", func(t *testing.T) {
		data := "# " + strings.Repeat("x", MaxFileSize) + "\n"
		if _, err := Parse([]byte(data)); err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("err = %v", err)
		}
		path := filepath.Join(t.TempDir(), "big.yaml")
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("Load err = %v", err)
		}
	})
	t.Run("too many entries", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("subscriptions:\n")
		for range MaxEntries + 1 {
			b.WriteString("- {}\n")
		}
		if _, err := Parse([]byte(b.String())); err == nil || !strings.Contains(err.Error(), "more than the limit") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}

// fakeApplier records calls and keeps the last input per name, as a store with PUT
// semantics would.
type fakeApplier struct {
	calls []string
	state map[string]core.SubscriptionInput
	fail  string // name whose apply fails
}

func (f *fakeApplier) ApplySubscription(_ context.Context, name string, in core.SubscriptionInput) (bool, error) {
	f.calls = append(f.calls, name)
	if name == f.fail {
		return false, &core.FieldError{Field: "url", Reason: "target not allowed"}
	}
	if _, err := in.Build(name); err != nil {
		return false, err
	}
	if f.state == nil {
		f.state = map[string]core.SubscriptionInput{}
	}
	old, ok := f.state[name]
	f.state[name] = in
	return !ok || old.Subject != in.Subject || old.URL != in.URL || old.Paused != in.Paused, nil
}

func writeFile(t *testing.T, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "subscriptions.yaml")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	path := writeFile(t, validFile)
	a := &fakeApplier{}

	applied, changed, err := Apply(ctx, path, a, nil)
	if err != nil || applied != 2 || changed != 2 {
		t.Fatalf("first apply: applied %d changed %d err %v", applied, changed, err)
	}
	if strings.Join(a.calls, ",") != "orders-to-billing,audit" {
		t.Fatalf("calls in wrong order: %v", a.calls)
	}
	applied, changed, err = Apply(ctx, path, a, nil)
	if err != nil || applied != 2 || changed != 0 {
		t.Fatalf("second apply: applied %d changed %d err %v", applied, changed, err)
	}
}

func TestApplyStopsAtFirstError(t *testing.T) {
	path := writeFile(t, `
subscriptions:
  - {name: a, subject: s, url: "http://x/"}
  - {name: b, subject: s, url: "http://x/"}
  - {name: c, subject: s, url: "http://x/"}
`)
	a := &fakeApplier{fail: "b"}
	applied, changed, err := Apply(context.Background(), path, a, nil)
	if err == nil {
		t.Fatal("want an error")
	}
	if applied != 1 || changed != 1 || len(a.calls) != 2 {
		t.Fatalf("applied %d changed %d calls %v", applied, changed, a.calls)
	}
	var ee *EntryError
	if !errors.As(err, &ee) || ee.Index != 1 || ee.Name != "b" {
		t.Fatalf("err = %v, want an *EntryError for subscriptions[1] b", err)
	}
	var fe *core.FieldError
	if !errors.As(err, &fe) || fe.Field != "url" {
		t.Fatalf("err = %v does not wrap the applier's *core.FieldError", err)
	}
	for _, want := range []string{path, `subscriptions[1] (name "b")`, "url: target not allowed"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not contain %q", err, want)
		}
	}
}

func TestApplySemanticErrorFromBuild(t *testing.T) {
	path := writeFile(t, "subscriptions:\n- {name: a, subject: s, url: 'http://x/', timeout: 1h}\n")
	_, _, err := Apply(context.Background(), path, &fakeApplier{}, nil)
	var fe *core.FieldError
	if !errors.As(err, &fe) || fe.Field != "timeout" {
		t.Fatalf("err = %v, want the timeout *core.FieldError", err)
	}
}

func TestApplyBadFile(t *testing.T) {
	path := writeFile(t, "subscriptions: {}\n")
	a := &fakeApplier{}
	if _, _, err := Apply(context.Background(), path, a, nil); err == nil || len(a.calls) != 0 {
		t.Fatalf("err %v calls %v: a bad file must apply nothing", err, a.calls)
	}
}

func TestApplyCanceled(t *testing.T) {
	path := writeFile(t, validFile)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a := &fakeApplier{}
	if _, _, err := Apply(ctx, path, a, nil); !errors.Is(err, context.Canceled) || len(a.calls) != 0 {
		t.Fatalf("err %v calls %v", err, a.calls)
	}
}

// The example file shipped with the repository must parse and pass the API's validation.
func TestExampleConfig(t *testing.T) {
	entries, err := Load(filepath.Join("..", "..", "configs", "subscriptions.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("configs/subscriptions.yaml holds no subscription")
	}
	for _, e := range entries {
		if _, err := e.Input.Build(e.Name); err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(validFile)
	f.Add("")
	f.Add("subscriptions:\n- {name: a, subject: s, url: 'http://x/', retry: {min_backoff: 1s}}\n")
	f.Add("subscriptions:\n- &a {name: a, subject: s}\n- {<<: *a, name: b}\n")
	f.Add("subscriptions: [a, b\n")
	f.Fuzz(func(t *testing.T, data string) {
		entries, err := Parse([]byte(data))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, e := range entries {
			if !core.ValidName(e.Name) || seen[e.Name] {
				t.Fatalf("Parse accepted name %q", e.Name)
			}
			seen[e.Name] = true
		}
	})
}
