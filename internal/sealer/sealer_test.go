package sealer

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func key(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32)))
}

func TestSealOpen(t *testing.T) {
	s, err := New(key('k'))
	if err != nil {
		t.Fatal(err)
	}
	sealed := s.Seal("whsec_abc", "subscription/a/secret")
	if !Sealed(sealed) || strings.Contains(sealed, "whsec_abc") {
		t.Fatalf("sealed %q", sealed)
	}
	if again := s.Seal("whsec_abc", "subscription/a/secret"); again == sealed {
		t.Fatal("two seals of one value are equal: the nonce is not random")
	}
	if got, err := s.Open(sealed, "subscription/a/secret"); err != nil || got != "whsec_abc" {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := s.Open(sealed, "subscription/b/secret"); err == nil {
		t.Fatal("a value opened in another context")
	}
	other, _ := New(key('o'))
	if _, err := other.Open(sealed, "subscription/a/secret"); err == nil {
		t.Fatal("a value opened with another key")
	}
	var none *Sealer
	if _, err := none.Open(sealed, "subscription/a/secret"); !errors.Is(err, ErrNoKey) {
		t.Fatalf("no key: %v", err)
	}
	if got, err := none.Open("plain", "x"); err != nil || got != "plain" || none.Seal("plain", "x") != "plain" {
		t.Fatal("a nil sealer must pass plain values through")
	}
	if got, _ := s.Open("plain", "x"); got != "plain" {
		t.Fatal("plain values stored before the key must still read")
	}
	for _, bad := range []string{"", "short", base64.StdEncoding.EncodeToString([]byte("16-bytes-exactly")), "!!!"} {
		if _, err := New(bad); err == nil {
			t.Fatalf("key %q accepted", bad)
		}
	}
	if _, err := s.Open("enc:v1:!!", "x"); err == nil {
		t.Fatal("malformed sealed value opened")
	}
}
