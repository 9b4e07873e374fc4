package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Standard Webhooks reference test vector.
const (
	testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	testID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	testTS     = 1614265330
	testBody   = `{"test": 2432232314}`
	testSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func newTestReceiver(t *testing.T, now int64) (*receiver, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	r, err := newReceiver(testSecret, &out)
	if err != nil {
		t.Fatal(err)
	}
	r.now = func() time.Time { return time.Unix(now, 0) }
	return r, &out
}

func sign(secret, id string, ts int64, body string) string {
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + strconv.FormatInt(ts, 10) + "." + body))
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func post(r http.Handler, id string, ts int64, sig, body string) int {
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	req.Header.Set("content-type", "application/json")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", sig)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	return rec.Code
}

func TestSignMatchesReferenceVector(t *testing.T) {
	if got := sign(testSecret, testID, testTS, testBody); got != testSig {
		t.Fatalf("sign = %s, want %s", got, testSig)
	}
}

func TestValidSignature(t *testing.T) {
	r, out := newTestReceiver(t, testTS+60)
	if code := post(r, testID, testTS, testSig, testBody); code != http.StatusNoContent {
		t.Fatalf("status %d, want 204", code)
	}
	if !strings.Contains(out.String(), testBody) || !strings.Contains(out.String(), testID) {
		t.Fatalf("message not printed: %q", out.String())
	}
}

func TestTampered(t *testing.T) {
	r, out := newTestReceiver(t, testTS)
	cases := map[string]func() int{
		"body":      func() int { return post(r, testID, testTS, testSig, `{"test": 2432232315}`) },
		"id":        func() int { return post(r, "msg_other", testTS, testSig, testBody) },
		"timestamp": func() int { return post(r, testID, testTS+1, testSig, testBody) },
		"signature": func() int { return post(r, testID, testTS, "v1,"+strings.Repeat("A", 43)+"=", testBody) },
		"scheme":    func() int { return post(r, testID, testTS, "v1a,"+testSig[3:], testBody) },
		"none":      func() int { return post(r, testID, testTS, "", testBody) },
		"no id":     func() int { return post(r, "", testTS, testSig, testBody) },
		"other key": func() int {
			return post(r, testID, testTS, sign("whsec_"+base64.StdEncoding.EncodeToString(make([]byte, 32)), testID, testTS, testBody), testBody)
		},
	}
	for name, f := range cases {
		if code := f(); code != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", name, code)
		}
	}
	if out.Len() != 0 {
		t.Errorf("rejected messages were printed: %q", out.String())
	}
}

func TestTimestampTolerance(t *testing.T) {
	for _, skew := range []int64{-301, 301} {
		r, _ := newTestReceiver(t, testTS+skew)
		if code := post(r, testID, testTS, testSig, testBody); code != http.StatusUnauthorized {
			t.Errorf("clock skew %ds: status %d, want 401", skew, code)
		}
	}
	r, _ := newTestReceiver(t, testTS-299)
	if code := post(r, testID, testTS, testSig, testBody); code != http.StatusNoContent {
		t.Errorf("skew 299s: status %d, want 204", code)
	}
}

func TestAnyOfSeveralSignatures(t *testing.T) {
	r, _ := newTestReceiver(t, testTS)
	other := sign("whsec_"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)), testID, testTS, testBody)
	if code := post(r, testID, testTS, other+" "+testSig, testBody); code != http.StatusNoContent {
		t.Fatalf("status %d, want 204", code)
	}
}

func TestDuplicateIsAckedOnce(t *testing.T) {
	r, out := newTestReceiver(t, testTS)
	for i := 0; i < 2; i++ {
		// A retry keeps the id and carries a new timestamp and signature.
		ts := int64(testTS + i)
		if code := post(r, testID, ts, sign(testSecret, testID, ts, testBody), testBody); code != http.StatusNoContent {
			t.Fatalf("delivery %d: status %d, want 204", i+1, code)
		}
	}
	if n := strings.Count(out.String(), testID); n != 1 {
		t.Fatalf("printed %d times, want 1", n)
	}
}

func TestDedupeIsBounded(t *testing.T) {
	r, _ := newTestReceiver(t, testTS)
	for i := 0; i < maxSeen+10; i++ {
		r.firstTime("id-" + strconv.Itoa(i))
	}
	if len(r.seen) != maxSeen {
		t.Fatalf("remembered %d ids, want %d", len(r.seen), maxSeen)
	}
	if !r.firstTime("id-0") {
		t.Fatal("oldest id was not evicted")
	}
}

func TestBadSecret(t *testing.T) {
	for _, s := range []string{"", "abc", "whsec_not base64!"} {
		if _, err := newReceiver(s, nil); err == nil {
			t.Errorf("newReceiver(%q) succeeded", s)
		}
	}
}
