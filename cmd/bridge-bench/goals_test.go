package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// round builds a round with the figures the goals read.
func round(e2e, publish, drain, e2eCores, pacedP99ms float64, rssMiB uint64) *serverResult {
	return &serverResult{
		E2E:     &e2eResult{PushesPerSec: e2e},
		Publish: &publishResult{ReqPerSec: publish},
		Drain:   &drainResult{PushesPerSec: drain},
		Paced:   &e2eResult{PushesPerSec: 2000, P99: time.Duration(pacedP99ms * float64(time.Millisecond))},
		CPU:     map[string]map[string]float64{"end-to-end": {"server": e2eCores}},
		PeakRSS: rssMiB << 20,
	}
}

func TestEvaluateGoals(t *testing.T) {
	// e2e 0.96 and CPU/msg 1.10, by both measures; publish 1.00 by medians but 0.90 paired
	// (the rounds pair badly, so the medians flatter it); drain 0.90; paced p99 1.5; RSS
	// 45 MiB by the median, but one round at 49.
	minimal := []*serverResult{
		round(1000, 2000, 3000, 0.10, 2.0, 33),
		round(1000, 2300, 3000, 0.10, 2.0, 33),
		round(1000, 1900, 3000, 0.10, 2.0, 33),
	}
	bridge := []*serverResult{
		round(960, 1800, 2700, 0.1056, 3.0, 45),
		round(960, 2000, 2700, 0.1056, 3.0, 45),
		round(960, 2300, 2700, 0.1056, 3.0, 49),
	}
	got := map[string]goalResult{}
	for _, g := range evaluateGoals(bridge, minimal) {
		got[g.Metric] = g
	}
	want := map[string]bool{
		"e2e CPU µs/msg": true, "e2e msg/s": true, "publish req/s": false,
		"drain pushes/s": false, "paced p99 ms": false, "peak RSS MiB": false,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d goals, want %d: %+v", len(got), len(want), got)
	}
	for metric, met := range want {
		if got[metric].Met != met {
			t.Errorf("%s: met = %v, want %v (%+v)", metric, got[metric].Met, met, got[metric])
		}
	}
	if g := got["publish req/s"]; g.Median < 0.99 || g.Paired > 0.91 {
		t.Errorf("publish: medians %.2f, paired %.2f; want 1.00 and 0.90", g.Median, g.Paired)
	}
	if g := got["peak RSS MiB"]; g.Median != 45 || g.Worst != 49 {
		t.Errorf("RSS: median %.1f, worst %.1f; want 45 and 49", g.Median, g.Worst)
	}

	var out strings.Builder
	printGoals(func(f string, a ...any) { out.WriteString(strings.TrimSpace(fmt.Sprintf(f, a...)) + "\n") }, evaluateGoals(bridge, minimal))
	if !strings.Contains(out.String(), "4 of 6 goals missed: publish req/s, drain pushes/s, paced p99 ms, peak RSS MiB") {
		t.Errorf("report:\n%s", out.String())
	}

	// One server only, or a phase that did not run: no verdict on what was not measured.
	if gs := evaluateGoals(bridge, nil); gs != nil {
		t.Errorf("goals with no minimal rounds: %+v", gs)
	}
	for _, r := range append(bridge, minimal...) {
		r.Drain = nil
	}
	for _, g := range evaluateGoals(bridge, minimal) {
		if g.Metric == "drain pushes/s" {
			t.Errorf("a goal on a phase that did not run: %+v", g)
		}
	}
}
