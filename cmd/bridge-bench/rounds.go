package main

import (
	"fmt"
	"slices"
	"strings"
)

// A metric of one round of one server, for the medians over rounds.
type roundMetric struct {
	name string
	// noRatio: a figure about the machine, not the server, so no bridge/minimal ratio.
	noRatio bool
	// value reads it from a round; ok is false when the phase is missing.
	value func(sr *serverResult) (float64, bool)
}

func cpuPerMessage(phase string, rate func(sr *serverResult) (float64, bool)) func(sr *serverResult) (float64, bool) {
	return func(sr *serverResult) (float64, bool) {
		r, ok := rate(sr)
		cores := sr.CPU[phase]["server"]
		if !ok || r <= 0 || cores <= 0 {
			return 0, false
		}
		return cores / r * 1e6, true // µs of the server's CPU per message
	}
}

var (
	e2eMsgs = func(sr *serverResult) (float64, bool) {
		if sr.E2E == nil {
			return 0, false
		}
		return sr.E2E.PushesPerSec, true
	}
	drainMsgs = func(sr *serverResult) (float64, bool) {
		if sr.Drain == nil {
			return 0, false
		}
		return sr.Drain.PushesPerSec, true
	}
	publishReqs = func(sr *serverResult) (float64, bool) {
		if sr.Publish == nil {
			return 0, false
		}
		return sr.Publish.ReqPerSec, true
	}
)

var roundMetrics = []roundMetric{
	{name: "e2e msg/s", value: e2eMsgs},
	{name: "publish req/s", value: publishReqs},
	{name: "drain pushes/s", value: drainMsgs},
	{name: "e2e p99 ms", value: func(sr *serverResult) (float64, bool) {
		if sr.E2E == nil {
			return 0, false
		}
		return float64(sr.E2E.P99.Microseconds()) / 1000, true
	}},
	{name: "paced p50 ms", value: func(sr *serverResult) (float64, bool) {
		if sr.Paced == nil {
			return 0, false
		}
		return float64(sr.Paced.P50.Microseconds()) / 1000, true
	}},
	{name: "paced p99 ms", value: func(sr *serverResult) (float64, bool) {
		if sr.Paced == nil {
			return 0, false
		}
		return float64(sr.Paced.P99.Microseconds()) / 1000, true
	}},
	{name: "paced CPU µs/msg", value: cpuPerMessage("paced", func(sr *serverResult) (float64, bool) {
		if sr.Paced == nil {
			return 0, false
		}
		return sr.Paced.PushesPerSec, true
	})},
	{name: "e2e CPU µs/msg", value: cpuPerMessage("end-to-end", e2eMsgs)},
	{name: "drain CPU µs/msg", value: cpuPerMessage("drain", drainMsgs)},
	{name: "publish CPU µs/req", value: cpuPerMessage("publish", publishReqs)},
	// Not the server's doing: how much of the machine the host took during the busiest
	// phases. Rounds with steal are the ones to distrust.
	{name: "steal cores e2e/drain", noRatio: true, value: func(sr *serverResult) (float64, bool) {
		e, ok1 := sr.CPU["end-to-end"]["steal"]
		d, ok2 := sr.CPU["drain"]["steal"]
		return e + d, ok1 || ok2
	}},
	{name: "peak RSS MiB", value: func(sr *serverResult) (float64, bool) {
		return float64(sr.PeakRSS) / (1 << 20), sr.PeakRSS > 0
	}},
}

// median of the values (the mean of the middle two for an even count).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread is (max - min) / median: how much the rounds disagree.
func spread(v []float64) float64 {
	m := median(v)
	if len(v) < 2 || m == 0 {
		return 0
	}
	return (slices.Max(v) - slices.Min(v)) / m
}

func values(rounds []*serverResult, m roundMetric) []float64 {
	var out []float64
	for _, sr := range rounds {
		if v, ok := m.value(sr); ok {
			out = append(out, v)
		}
	}
	return out
}

// printRounds prints every round of both servers with the medians, the spread and the
// ratio of the medians: the figures to compare across runs (the best round alone favours
// whichever server had the quietest moment).
func printRounds(p func(string, ...any), r *results) {
	if len(r.BridgeRounds) == 0 || len(r.MinimalRounds) == 0 {
		return
	}
	p("")
	p("rounds (%d each, alternating which server goes first): medians, spread = (max-min)/median", len(r.BridgeRounds))
	p("%-20s %-34s %-34s %-15s %s", "metric", "bridge rounds -> median (spread)", "minimal rounds -> median (spread)", "bridge/minimal", "paired")
	for _, m := range roundMetrics {
		b, mn := values(r.BridgeRounds, m), values(r.MinimalRounds, m)
		if len(b) == 0 || len(mn) == 0 {
			continue
		}
		ratio, paired := "-", "-"
		if m.noRatio {
			p("%-20s %-34s %-34s %-15s %s", m.name, roundCell(b), roundCell(mn), ratio, paired)
			continue
		}
		if median(mn) > 0 {
			ratio = fmt.Sprintf("%.2fx", median(b)/median(mn))
		}
		if pr := pairedRatios(r.BridgeRounds, r.MinimalRounds, m); len(pr) > 0 {
			paired = fmt.Sprintf("%.2fx", median(pr))
		}
		p("%-20s %-34s %-34s %-15s %s", m.name, roundCell(b), roundCell(mn), ratio, paired)
	}
	p("paired: the median of each round's bridge/minimal ratio. The two servers of a round run")
	p("back to back, so a slow stretch of the machine moves both; compare it with the ratio of")
	p("medians, which pairs the rounds only by rank.")
}

// pairedRatios is bridge/minimal of m for every round both servers measured.
func pairedRatios(bridge, minimal []*serverResult, m roundMetric) []float64 {
	var out []float64
	for i := range min(len(bridge), len(minimal)) {
		b, okB := m.value(bridge[i])
		mn, okM := m.value(minimal[i])
		if okB && okM && mn > 0 {
			out = append(out, b/mn)
		}
	}
	return out
}

func roundCell(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = short(x)
	}
	return fmt.Sprintf("%s -> %s (%.0f%%)", strings.Join(parts, " "), short(median(v)), 100*spread(v))
}

func short(x float64) string {
	switch {
	case x >= 10000:
		return fmt.Sprintf("%.1fk", x/1000)
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	default:
		return fmt.Sprintf("%.1f", x)
	}
}
