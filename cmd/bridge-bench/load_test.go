package main

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// The histogram's quantiles must stay within its bucket resolution of the
// exact ones, or the reported p99 is meaningless.
func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	vals := make([]time.Duration, 100000)
	for i := range vals {
		vals[i] = time.Duration(rand.ExpFloat64() * float64(2*time.Millisecond))
		h.record(vals[i])
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(q*float64(len(vals)))-1]
		got := h.quantile(q)
		if diff := float64(got-exact) / float64(exact); diff > 0.02 || diff < -0.02 {
			t.Errorf("q%.3f = %s, exact %s (%.1f%% off)", q, got, exact, 100*diff)
		}
	}
	if h.maxValue() != vals[len(vals)-1] {
		t.Errorf("max = %s, want %s", h.maxValue(), vals[len(vals)-1])
	}
}

func TestHistBucketsContiguous(t *testing.T) {
	prevHi := uint64(0)
	for b := 1; b < histBuckets; b++ {
		lo, hi := histBounds(b)
		if lo != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d = [%d, %d], previous ended at %d", b, lo, hi, prevHi)
		}
		if histBucket(lo) != b || histBucket(hi) != b {
			t.Fatalf("bucket %d bounds map to %d, %d", b, histBucket(lo), histBucket(hi))
		}
		prevHi = hi
		if hi == ^uint64(0) {
			break
		}
	}
}

func TestNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := num(in); got != want {
			t.Errorf("num(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestPairedRatios(t *testing.T) {
	e2e := func(v float64) *serverResult { return &serverResult{E2E: &e2eResult{PushesPerSec: v}} }
	// A machine that slows down from round to round: the ratio of medians pairs the
	// bridge's fast round with the minimal's slow one; paired ratios do not.
	bridge := []*serverResult{e2e(12000), e2e(7800), e2e(7600)}
	minimal := []*serverResult{e2e(11800), e2e(8400), e2e(7600), e2e(9000)}
	got := pairedRatios(bridge, minimal, roundMetrics[0])
	if len(got) != 3 {
		t.Fatalf("%d ratios, want 3 (rounds both measured)", len(got))
	}
	if m := median(got); m < 0.99 || m > 1.02 {
		t.Fatalf("median paired ratio %.3f, want 1.00 (rounds 1.02, 0.93, 1.00)", m)
	}
	if got := pairedRatios(bridge, []*serverResult{{}}, roundMetrics[0]); len(got) != 0 {
		t.Fatalf("a round the minimal did not measure gave ratios %v", got)
	}
}

// -phases takes any subset of the server phases, in any order and with spaces, and
// refuses a name it does not know or a list with none.
func TestParsePhases(t *testing.T) {
	got, err := parsePhases(" paced, drain ,")
	if err != nil || len(got) != 2 || !got["paced"] || !got["drain"] {
		t.Fatalf("parsePhases(paced, drain) = %v, %v", got, err)
	}
	all, err := parsePhases(strings.Join(serverPhases, ","))
	if err != nil || len(all) != len(serverPhases) {
		t.Fatalf("the default list = %v, %v; want every phase", all, err)
	}
	for _, bad := range []string{"", " , ", "paced,e2e", "Paced"} {
		if p, err := parsePhases(bad); err == nil {
			t.Errorf("parsePhases(%q) = %v, want an error", bad, p)
		}
	}
}
