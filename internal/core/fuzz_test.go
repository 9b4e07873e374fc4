package core

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Valid subjects are short, brace/glob/space free, and map to message ids without dots.
func FuzzValidSubject(f *testing.F) {
	for _, s := range []string{
		"orders", "orders.eu", "a", "A9_.:-", "orders.{eu}", "orders*", "ord?rs", "orders eu",
		".orders", "-x", "", "ä", "orders\n", "orders\x00", strings.Repeat("a", 200), strings.Repeat("a", 201),
		"orders.eu:1-0", "x..y", "bridge:sub:orders", "a~b",
	} {
		f.Add(s)
	}
	subjectRE := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$`) // SubjectRule, as written
	f.Fuzz(func(t *testing.T, s string) {
		if want := subjectRE.MatchString(s) && !strings.HasPrefix(s, ReservedPrefix); ValidSubject(s) != want {
			t.Fatalf("ValidSubject(%q) = %v, SubjectRule says %v", s, !want, want)
		}
		if ValidSubject(s) != ValidName(s) {
			t.Fatalf("ValidSubject and ValidName disagree on %q", s)
		}
		if !ValidSubject(s) {
			return
		}
		if len(s) > 200 {
			t.Fatalf("valid subject of %d bytes", len(s))
		}
		if strings.ContainsAny(s, "{}*? \t\r\n\x00[]") {
			t.Fatalf("valid subject %q holds a forbidden character", s)
		}
		if strings.Contains(s, "~") {
			t.Fatalf("valid subject %q holds '~', which MessageID uses for dots", s)
		}
		id := MessageID(s, "1-0")
		if strings.Contains(id, ".") {
			t.Fatalf("MessageID(%q) = %q holds a dot", s, id)
		}
		if !strings.HasSuffix(id, ":1-0") {
			t.Fatalf("MessageID(%q) = %q", s, id)
		}
		// The mapping is reversible, so ids stay unique across subjects.
		subj := id[:strings.LastIndexByte(id, ':')]
		if strings.ReplaceAll(subj, "~", ".") != s {
			t.Fatalf("MessageID(%q) = %q does not map back", s, id)
		}
	})
}

// ParseDuration never panics; what it accepts is within its documented range.
//
// KNOWN DEVIATION (reported, not fixed here): the Go-duration branch accepts negative
// durations ("-1s" → -1s, nil) while the whole-seconds branch refuses "-1" as out of
// range. Every caller today re-checks d < 0 (httpapi.notBefore, the batch "delay",
// SubscriptionInput.Build's lower bounds), so it is not exploitable, but ParseDuration
// alone does not guarantee "valid ⇒ non-negative". The seeds "-1s" and "-0.5h" keep
// that case exercised: it is asserted to come only from a leading '-' in the input.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{
		"30s", "1m30s", "90", "0", " 5 ", "", "-1", "-1s", "-0.5h", "1.5h", "3153600000", "3153600001",
		"9223372036854775807", "9223372036854775808s", "1e3", "+5", "+5s", "1µs", "1us", "0x10",
		"2562047h", "2562048h", "0s", "-0", "-0s", "10ms", "abc", "1d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			if d != 0 {
				t.Fatalf("ParseDuration(%q) = %v with error %v", s, d, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error for %q", s)
			}
			return
		}
		if d < 0 {
			// The known deviation above: only a Go duration with a leading minus gets here.
			if !strings.HasPrefix(strings.TrimSpace(s), "-") {
				t.Fatalf("ParseDuration(%q) = %v: negative without a minus sign", s, d)
			}
			return
		}
		if d > 0 && d < time.Second && isAllDigits(strings.TrimSpace(s)) {
			t.Fatalf("ParseDuration(%q) = %v: whole seconds below a second", s, d)
		}
		if isAllDigits(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), "+"))) && d > 100*365*24*time.Hour {
			t.Fatalf("ParseDuration(%q) = %v: whole seconds above 100 years", s, d)
		}
	})
}

func isAllDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Any PUT body either fails to decode, is refused with a FieldError, or builds a
// subscription that keeps the engine's invariants.
func FuzzSubscriptionInput(f *testing.F) {
	for _, s := range []string{
		`{"subject":"orders","url":"https://example.com/hook"}`,
		`{"subject":"orders.eu","url":"http://x/","timeout":"2s","retry":{"min_backoff":"100ms","max_backoff":"400ms"},"max_deliveries":1}`,
		`{"subject":"o","url":"http://x","timeout":"10s","visibility_timeout":"10s"}`,
		`{"subject":"o","url":"http://x","timeout":"10s","visibility_timeout":"10.4s"}`,
		`{"subject":"o","url":"http://x","timeout":"10s","visibility_timeout":"10.5s"}`,
		`{"subject":"o","url":"http://x","timeout":1e300}`,
		`{"subject":"o","url":"http://x","timeout":-1e300,"visibility_timeout":1}`,
		`{"subject":"o","url":"http://x","timeout":"-5s"}`,
		`{"subject":"o","url":"http://x","visibility_timeout":-1}`,
		`{"subject":"o","url":"http://x","max_in_flight":0}`,
		`{"subject":"o","url":"http://x","max_in_flight":1025}`,
		`{"subject":"o","url":"http://x","max_in_flight":1024,"rate_limit":1e6}`,
		`{"subject":"o","url":"http://x","max_deliveries":9223372036854775807}`,
		`{"subject":"o","url":"http://x","headers":{"Authorization":"Bearer fn"}}`,
		`{"subject":"o","url":"http://x","headers":{"Host":"evil"}}`,
		`{"subject":"o","url":"http://x","headers":{"webhook-signature":"v1,x"}}`,
		`{"subject":"o","url":"http://x","headers":{"X-A":"a\r\nX-B: b"}}`,
		`{"subject":"o","url":"http://x","headers":{"X A":"v"}}`,
		`{"subject":"o","url":"http://x","headers":{"x-a":"1","X-A":"2"}}`,
		`{"subject":"o","url":"http://x","headers":{"Content-Type":"text/plain"}}`,
		`{"subject":"o","url":"http://x","transport":"list"}`,
		`{"subject":"o","url":"http://x","transport":"list","list_mode":"simple"}`,
		`{"subject":"o","url":"http://x","transport":"pubsub","pattern":true}`,
		`{"subject":"o.*","url":"http://x","transport":"pubsub","pattern":true}`,
		`{"subject":"o.{x}","url":"http://x","transport":"pubsub","pattern":true}`,
		`{"subject":"o","url":"http://x","transport":"pubsub","pubsub_mode":"sharded","pattern":true}`,
		`{"subject":"o","url":"http://x","transport":"stream","pattern":true}`,
		`{"subject":"o","url":"http://x","start":"1700000000000-0"}`,
		`{"subject":"o","url":"http://x","start":"1700000000000"}`,
		`{"subject":"o","url":"http://x","retry":{"min_backoff":"1ms"}}`,
		`{"subject":"o","url":"http://x","retry":{"min_backoff":"1h","max_backoff":"25h"}}`,
		`{"subject":"o*","url":"http://x"}`,
		`{"subject":"o","url":"http://x","ordered":true}`,
		`{"subject":"o","url":"http://x","timeout":"15m","visibility_timeout":"24h"}`,
		`{"subject":"o","url":"http://x","timeout":"15m"}`,
		`null`, `{}`, `[]`, `"x"`, `{"subject":null,"url":null,"headers":null,"retry":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var in SubscriptionInput
		if err := json.Unmarshal(raw, &in); err != nil {
			return
		}
		s, err := in.Build("n")
		if err != nil {
			if _, ok := err.(*FieldError); !ok {
				t.Fatalf("Build error %T %v is not a *FieldError", err, err)
			}
			if s != nil {
				t.Fatalf("Build returned a subscription with an error")
			}
			return
		}
		if s == nil {
			t.Fatal("Build returned neither a subscription nor an error")
		}
		if s.Name != "n" || s.URL == "" {
			t.Fatalf("built %+v", s)
		}
		switch s.Transport {
		case "stream", "list", "pubsub":
		default:
			t.Fatalf("built transport %q", s.Transport)
		}
		if s.Pattern {
			// A Pub/Sub pattern is a glob, but still short and free of braces and spaces.
			if s.Transport != "pubsub" || len(s.Subject) == 0 || len(s.Subject) > 200 || strings.ContainsAny(s.Subject, "{} \t\r\n\x00") {
				t.Fatalf("built pattern subscription %q on %s", s.Subject, s.Transport)
			}
		} else if !ValidSubject(s.Subject) {
			t.Fatalf("built subject %q", s.Subject)
		}
		if s.Timeout <= 0 || s.VisibilityTimeout <= s.Timeout {
			t.Fatalf("visibility_timeout %v must exceed timeout %v", time.Duration(s.VisibilityTimeout), time.Duration(s.Timeout))
		}
		if s.Timeout > Duration(MaxTimeout) || s.VisibilityTimeout > Duration(24*time.Hour) {
			t.Fatalf("timeouts out of range: %v / %v", time.Duration(s.Timeout), time.Duration(s.VisibilityTimeout))
		}
		if s.MaxInFlight < 1 || s.MaxInFlight > MaxMaxInFlight {
			t.Fatalf("max_in_flight %d", s.MaxInFlight)
		}
		if s.MaxDeliveries < 1 || s.MaxDeliveries > MaxMaxDeliveries {
			t.Fatalf("max_deliveries %d", s.MaxDeliveries)
		}
		if s.Retry.MinBackoff <= 0 || s.Retry.MaxBackoff < s.Retry.MinBackoff {
			t.Fatalf("retry %+v", s.Retry)
		}
		if s.RateLimit < 0 || s.RateLimit > 1e6 {
			t.Fatalf("rate_limit %v", s.RateLimit)
		}
		if len(s.Headers) > MaxStaticHeaders {
			t.Fatalf("%d static headers", len(s.Headers))
		}
		for k, v := range s.Headers {
			if err := ValidateHeader(k, v); err != nil {
				t.Fatalf("built subscription keeps header %q: %v", k, err)
			}
		}
	})
}
