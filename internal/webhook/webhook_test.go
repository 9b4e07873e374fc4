package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

func secretOf(n int, fill byte) string {
	return SecretPrefix + base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(fill), n)))
}

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if err := ValidateSecret(s); err != nil {
			t.Fatalf("ValidateSecret(NewSecret()) = %v", err)
		}
		key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, SecretPrefix))
		if len(key) != 32 {
			t.Fatalf("key length %d, want 32", len(key))
		}
		if seen[s] {
			t.Fatal("NewSecret repeated a secret")
		}
		seen[s] = true
	}
}

func TestValidateSecret(t *testing.T) {
	good24 := secretOf(24, 'a')
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"24 bytes", good24, true},
		{"32 bytes", secretOf(32, 'b'), true},
		{"64 bytes", secretOf(64, 'c'), true},
		{"23 bytes", secretOf(23, 'a'), false},
		{"65 bytes", secretOf(65, 'a'), false},
		{"empty", "", false},
		{"prefix only", SecretPrefix, false},
		{"no prefix", strings.TrimPrefix(good24, SecretPrefix), false},
		{"wrong prefix case", "WHSEC_" + strings.TrimPrefix(good24, SecretPrefix), false},
		{"url base64", SecretPrefix + base64.URLEncoding.EncodeToString([]byte(strings.Repeat("\xfb", 30))), false},
		{"raw (unpadded) base64", SecretPrefix + base64.RawStdEncoding.EncodeToString([]byte(strings.Repeat("x", 25))), false},
		{"embedded newline", good24[:10] + "\n" + good24[10:], false},
		{"trailing space", good24 + " ", false},
		{"not base64", SecretPrefix + strings.Repeat("!", 32), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateSecret(tt.in)
			if tt.ok && err != nil {
				t.Fatalf("ValidateSecret = %v, want nil", err)
			}
			if !tt.ok {
				if !errors.Is(err, ErrInvalidSecret) {
					t.Fatalf("ValidateSecret = %v, want ErrInvalidSecret", err)
				}
				if len(tt.in) > len(SecretPrefix)+4 && strings.Contains(err.Error(), tt.in[len(SecretPrefix):]) {
					t.Fatalf("error leaks the secret: %v", err)
				}
			}
		})
	}
}

func TestNewSignerErrors(t *testing.T) {
	if _, err := NewSigner(); !errors.Is(err, ErrInvalidSecret) {
		t.Fatalf("NewSigner() = %v, want ErrInvalidSecret", err)
	}
	if _, err := NewSigner(secretOf(32, 'a'), "whsec_nope"); !errors.Is(err, ErrInvalidSecret) {
		t.Fatalf("NewSigner(good, bad) = %v, want ErrInvalidSecret", err)
	}
}

// verify checks header against secret with the official Standard Webhooks library.
func verify(t *testing.T, secret, id string, ts time.Time, body []byte, sig string) error {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set(standardwebhooks.HeaderWebhookID, id)
	h.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(standardwebhooks.HeaderWebhookSignature, sig)
	return wh.Verify(body, h)
}

func TestSignAgainstStandardWebhooks(t *testing.T) {
	secA, _ := NewSecret()
	secB, _ := NewSecret()
	secOther, _ := NewSecret()
	now := time.Now()
	tests := []struct {
		name string
		id   string
		ts   time.Time
		body []byte
	}{
		{"json", "1700000000000-0", now, []byte(`{"hello":"world"}`)},
		{"empty body", "msg_1", now, nil},
		{"binary body", "1-1", now.Add(-time.Minute), []byte{0, 1, 2, 0xff, '.', '\n'}},
		{"id with dots", "a.b.c", now.Add(time.Minute), []byte("x")},
		{"large body", "big", now, []byte(strings.Repeat("z", 1<<16))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			single, err := NewSigner(secA)
			if err != nil {
				t.Fatal(err)
			}
			sig := single.Sign(tt.id, tt.ts, tt.body)
			if !strings.HasPrefix(sig, "v1,") || strings.Contains(sig, " ") {
				t.Fatalf("single-secret header %q", sig)
			}
			if err := verify(t, secA, tt.id, tt.ts, tt.body, sig); err != nil {
				t.Fatalf("official verify: %v", err)
			}
			if err := verify(t, secOther, tt.id, tt.ts, tt.body, sig); err == nil {
				t.Fatal("signature verified under an unrelated secret")
			}
			if err := verify(t, secA, tt.id, tt.ts, append([]byte("tamper"), tt.body...), sig); err == nil {
				t.Fatal("signature verified a different body")
			}

			// Rotation: the header carries one entry per secret, in order,
			// and either secret alone verifies it.
			rot, err := NewSigner(secA, secB)
			if err != nil {
				t.Fatal(err)
			}
			both := rot.Sign(tt.id, tt.ts, tt.body)
			parts := strings.Split(both, " ")
			if len(parts) != 2 || parts[0] != sig {
				t.Fatalf("rotation header %q, want first entry %q", both, sig)
			}
			for _, sec := range []string{secA, secB} {
				if err := verify(t, sec, tt.id, tt.ts, tt.body, both); err != nil {
					t.Fatalf("official verify of rotation header: %v", err)
				}
			}
			if err := verify(t, secOther, tt.id, tt.ts, tt.body, both); err == nil {
				t.Fatal("rotation header verified under an unrelated secret")
			}
		})
	}
}

// TestSignKnownVector pins the exact bytes, independent of any library.
func TestSignKnownVector(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	secret := SecretPrefix + base64.StdEncoding.EncodeToString(key)
	s, err := NewSigner(secret)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1614265330, 0)
	m := hmac.New(sha256.New, key)
	m.Write([]byte("msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}"))
	want := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
	if got := s.Sign("msg_p5jXN8AQM9LWM0D4loKWxJek", ts, []byte(`{"test": 2432232314}`)); got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
}

func TestSignConcurrent(t *testing.T) {
	secA, _ := NewSecret()
	secB, _ := NewSecret()
	s, _ := NewSigner(secA, secB)
	ts := time.Unix(1700000000, 0)
	want := s.Sign("id", ts, []byte("body"))
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 8 {
		wg.Go(func() {
			for range 500 {
				if got := s.Sign("id", ts, []byte("body")); got != want {
					errs <- got
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for got := range errs {
		t.Fatalf("concurrent Sign = %q, want %q", got, want)
	}
}

func BenchmarkSign(b *testing.B) {
	for _, n := range []int{1, 2} {
		for _, size := range []int{256, 4096} {
			b.Run(strconv.Itoa(n)+"secrets/"+strconv.Itoa(size)+"B", func(b *testing.B) {
				secrets := make([]string, n)
				for i := range secrets {
					secrets[i], _ = NewSecret()
				}
				s, _ := NewSigner(secrets...)
				body := []byte(strings.Repeat("x", size))
				ts := time.Now()
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						s.Sign("1700000000000-0", ts, body)
					}
				})
			})
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2015, 10, 21, 7, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"2", 2 * time.Second, true},
		{"120", 2 * time.Minute, true},
		{" 120 ", 2 * time.Minute, true},
		{"007", 7 * time.Second, true},
		{"99999999999999999999999", time.Duration(math.MaxInt64), true},
		{"9223372036", 9223372036 * time.Second, true},
		{"9223372037", time.Duration(math.MaxInt64), true},
		{"Wed, 21 Oct 2015 07:28:00 GMT", 28 * time.Minute, true},
		{"Wednesday, 21-Oct-15 07:28:00 GMT", 28 * time.Minute, true}, // RFC 850
		{"Wed Oct 21 07:28:00 2015", 28 * time.Minute, true},          // ANSI C
		{"Wed, 21 Oct 2015 06:00:00 GMT", 0, true},                    // past
		{"", 0, false},
		{"   ", 0, false},
		{"-1", 0, false},
		{"+5", 0, false},
		{"1.5", 0, false},
		{"1e3", 0, false},
		{"0x10", 0, false},
		{"5s", 0, false},
		{"soon", 0, false},
		{"Wed, 21 Oct 2015 07:28:00 PST", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := ParseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"2", "120", "Wed, 21 Oct 2015 07:28:00 GMT", "", "-1", "1.5"} {
		f.Add(s)
	}
	now := time.Date(2015, 10, 21, 7, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ParseRetryAfter(v, now)
		if d < 0 {
			t.Fatalf("negative wait %v for %q", d, v)
		}
		if !ok && d != 0 {
			t.Fatalf("ok=false with wait %v for %q", d, v)
		}
		if strings.Trim(v, " \t") == "" && ok {
			t.Fatalf("ok=true for blank %q", v)
		}
	})
}

func TestBackoffTable(t *testing.T) {
	const lo, hi = time.Second, time.Minute
	tests := []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, lo, lo}, // equal jitter of min is clamped up to min
		{2, lo, 2 * lo},
		{3, 2 * lo, 4 * lo},
		{6, 16 * lo, 32 * lo},
		{7, hi / 2, hi}, // base 64s is capped at max
		{8, hi / 2, hi},
		{100, hi / 2, hi},
		{math.MaxInt, hi / 2, hi},
		{0, lo, lo},
		{-5, lo, lo},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.attempt), func(t *testing.T) {
			for range 200 {
				d := Backoff(lo, hi, tt.attempt)
				if d < tt.min || d > tt.max {
					t.Fatalf("Backoff(%v, %v, %d) = %v, want in [%v, %v]", lo, hi, tt.attempt, d, tt.min, tt.max)
				}
			}
		})
	}
}

func TestBackoffEdges(t *testing.T) {
	if d := Backoff(0, time.Second, 3); d != 0 {
		t.Fatalf("zero min: %v", d)
	}
	if d := Backoff(time.Second, time.Millisecond, 3); d != time.Second {
		t.Fatalf("max < min: %v, want min", d)
	}
	huge := time.Duration(math.MaxInt64)
	for _, a := range []int{1, 2, 62, 63, 64, 1000, math.MaxInt} {
		if d := Backoff(time.Nanosecond, huge, a); d < time.Nanosecond || d > huge {
			t.Fatalf("Backoff(1ns, max, %d) = %v", a, d)
		}
		if d := Backoff(huge, huge, a); d != huge {
			t.Fatalf("Backoff(max, max, %d) = %v", a, d)
		}
	}
	// Jitter is real: many draws at a high attempt are not all equal.
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[Backoff(time.Second, time.Hour, 10)] = true
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct delays in 50 draws", len(seen))
	}
}

// FuzzBackoff is the property test: the result stays in [min, max] and,
// once the base has reached max, in [max/2, max].
func FuzzBackoff(f *testing.F) {
	f.Add(int64(time.Second), int64(time.Hour), 1)
	f.Add(int64(time.Millisecond), int64(time.Minute), 64)
	f.Add(int64(1), int64(math.MaxInt64), math.MaxInt)
	f.Add(int64(math.MaxInt64), int64(math.MaxInt64), 2)
	f.Fuzz(func(t *testing.T, lo, hi int64, attempt int) {
		if lo <= 0 || hi < lo {
			t.Skip()
		}
		minD, maxD := time.Duration(lo), time.Duration(hi)
		d := Backoff(minD, maxD, attempt)
		if d < minD || d > maxD {
			t.Fatalf("Backoff(%v, %v, %d) = %v out of bounds", minD, maxD, attempt, d)
		}
		if attempt >= 64 && d < maxD/2 {
			t.Fatalf("Backoff(%v, %v, %d) = %v, below max/2", minD, maxD, attempt, d)
		}
		if attempt == 1 && d != minD {
			t.Fatalf("first backoff %v, want min %v", d, minD)
		}
	})
}
