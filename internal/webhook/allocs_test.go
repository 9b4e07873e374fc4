//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it.

package webhook

import (
	"testing"
	"time"
)

func TestSignAllocs(t *testing.T) {
	sec, _ := NewSecret()
	s, _ := NewSigner(sec)
	body := []byte(`{"hello":"world"}`)
	ts := time.Now()
	s.Sign("warm", ts, body)
	// One allocation: the returned string.
	if n := testing.AllocsPerRun(200, func() { s.Sign("1700000000000-0", ts, body) }); n > 1 {
		t.Fatalf("Sign allocates %v times per call, want <= 1", n)
	}
}
