package main

import (
	"fmt"
	"slices"
	"strings"
)

// A goal bounds one of roundMetrics over the rounds of a run: the bridge/minimal ratio,
// or with absolute the bridge's own figure. They are the CPU-per-message issue's "done
// when": a ratio goal is met when the ratio of medians and the paired ratio both meet it
// (either alone can be flattered by one quiet round), an absolute one when every round
// of the bridge does.
type goal struct {
	metric   string // a roundMetrics name
	atMost   bool   // the figure must be <= bound; otherwise >= bound
	bound    float64
	absolute bool
}

var goals = []goal{
	{metric: "e2e CPU µs/msg", atMost: true, bound: 1.2},
	{metric: "e2e msg/s", bound: 0.95},
	{metric: "publish req/s", bound: 0.95},
	{metric: "drain pushes/s", bound: 0.95},
	{metric: "paced p99 ms", atMost: true, bound: 1.2},
	{metric: "peak RSS MiB", atMost: true, bound: 48, absolute: true},
}

// goalResult is one goal's verdict. For a ratio goal, Median is the ratio of medians and
// Paired the median of the per-round ratios; for an absolute one, Median is the bridge's
// median and Worst its worst round.
type goalResult struct {
	Metric string  `json:"metric"`
	Bound  string  `json:"bound"`
	Median float64 `json:"median"`
	Paired float64 `json:"paired,omitempty"`
	Worst  float64 `json:"worst,omitempty"`
	Met    bool    `json:"met"`
}

// evaluateGoals judges the goals over the rounds; goals whose phase did not run are left
// out, and with only one server measured there is no verdict.
func evaluateGoals(bridge, minimal []*serverResult) []goalResult {
	if len(bridge) == 0 || len(minimal) == 0 {
		return nil
	}
	var out []goalResult
	for _, g := range goals {
		m, ok := roundMetricNamed(g.metric)
		if !ok {
			panic("goal on an unknown metric " + g.metric)
		}
		within := func(v float64) bool {
			if g.atMost {
				return v <= g.bound
			}
			return v >= g.bound
		}
		op := ">="
		if g.atMost {
			op = "<="
		}
		b := values(bridge, m)
		if len(b) == 0 {
			continue
		}
		if g.absolute {
			worst := slices.Min(b)
			if g.atMost {
				worst = slices.Max(b)
			}
			out = append(out, goalResult{Metric: g.metric, Bound: fmt.Sprintf("%s %g", op, g.bound),
				Median: median(b), Worst: worst, Met: within(median(b)) && within(worst)})
			continue
		}
		mn := values(minimal, m)
		pr := pairedRatios(bridge, minimal, m)
		if len(mn) == 0 || median(mn) <= 0 || len(pr) == 0 {
			continue
		}
		ratio, paired := median(b)/median(mn), median(pr)
		out = append(out, goalResult{Metric: g.metric, Bound: fmt.Sprintf("%s %.2fx", op, g.bound),
			Median: ratio, Paired: paired, Met: within(ratio) && within(paired)})
	}
	return out
}

func roundMetricNamed(name string) (roundMetric, bool) {
	for _, m := range roundMetrics {
		if m.name == name {
			return m, true
		}
	}
	return roundMetric{}, false
}

func printGoals(p func(string, ...any), gs []goalResult) {
	if len(gs) == 0 {
		return
	}
	p("")
	p("goals (CPU per message and tail latency): a ratio is met when the ratio of medians and")
	p("the paired ratio both are; peak RSS when the median and the worst round both are")
	var missed []string
	for _, g := range gs {
		verdict := "met"
		if !g.Met {
			verdict = "MISSED"
			missed = append(missed, g.Metric)
		}
		if strings.HasSuffix(g.Bound, "x") {
			p("  %-16s %-9s %6.2fx medians  %6.2fx paired      %s", g.Metric, g.Bound, g.Median, g.Paired, verdict)
		} else {
			p("  %-16s %-9s %6.1f  median   %6.1f  worst round %s", g.Metric, g.Bound, g.Median, g.Worst, verdict)
		}
	}
	if len(missed) == 0 {
		p("  all %d goals met", len(gs))
	} else {
		p("  %d of %d goals missed: %s", len(missed), len(gs), strings.Join(missed, ", "))
	}
}
