package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// comparison is one target: the bridge's figure against the minimal
// implementation's from the same run.
type comparison struct {
	Metric  string  `json:"metric"`
	Bridge  float64 `json:"bridge"`
	Minimal float64 `json:"minimal"`
	Ratio   float64 `json:"ratio"`  // bridge / minimal
	Target  string  `json:"target"` // the bound on Ratio, e.g. ">= 0.80"
	OK      bool    `json:"ok"`
}

// compare computes the targets: throughput at least targetShare of the
// minimal implementation's, end-to-end p99 at most targetP99Factor times its.
// A metric is left out when either side did not measure it.
func compare(b, m *serverResult) []comparison {
	if b == nil || m == nil {
		return nil
	}
	var out []comparison
	higher := func(metric string, bv, mv float64) {
		if bv > 0 && mv > 0 {
			r := bv / mv
			out = append(out, comparison{metric, bv, mv, r, fmt.Sprintf(">= %.2f", targetShare), r >= targetShare})
		}
	}
	if b.Publish != nil && m.Publish != nil {
		higher("publish req/s", b.Publish.ReqPerSec, m.Publish.ReqPerSec)
	}
	if b.E2E != nil && m.E2E != nil {
		higher("e2e msg/s", b.E2E.PushesPerSec, m.E2E.PushesPerSec)
	}
	if b.Drain != nil && m.Drain != nil {
		higher("drain pushes/s", b.Drain.PushesPerSec, m.Drain.PushesPerSec)
	}
	if b.E2E != nil && m.E2E != nil && b.E2E.P99 > 0 && m.E2E.P99 > 0 {
		bv, mv := durMS(b.E2E.P99), durMS(m.E2E.P99)
		r := bv / mv
		out = append(out, comparison{"e2e p99 ms", bv, mv, r, fmt.Sprintf("<= %.2f", targetP99Factor), r <= targetP99Factor})
	}
	if b.Paced != nil && m.Paced != nil && b.Paced.P99 > 0 && m.Paced.P99 > 0 {
		bv, mv := durMS(b.Paced.P99), durMS(m.Paced.P99)
		r := bv / mv
		out = append(out, comparison{"paced p99 ms", bv, mv, r, fmt.Sprintf("<= %.2f", targetPacedP99Factor), r <= targetPacedP99Factor})
	}
	return out
}

func durMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cell is one server's value for one table row. v feeds the ratio column:
// higher-is-better values (rates) show bridge/minimal as a percentage,
// lower-is-better ones (times, memory) as a factor.
type cell struct {
	text   string
	v      float64
	higher bool
}

// Table rows, in order; cells fills those a server measured.
var rowOrder = []string{
	"publish  req/s",
	"publish  accepted / errors",
	"publish  request p50",
	"publish  request p99",
	"publish  request max",
	"e2e      publish req/s while delivering",
	"e2e      msg/s (first publish->last push)",
	"e2e      pushed / accepted, duplicates",
	"e2e      publish-to-push p50",
	"e2e      publish-to-push p99",
	"e2e      publish-to-push max",
	"e2e      pickup (PUT->first push)",
	"paced    msg/s (publishers paced)",
	"paced    pushed / accepted, duplicates",
	"paced    publish-to-push p50",
	"paced    publish-to-push p99",
	"paced    publish-to-push max",
	"drain    publish req/s (paused)",
	"drain    pushes/s (first->last push)",
	"drain    pushed / accepted, duplicates",
	"drain    resume->first push",
	"drain    resume->last push",
	"cpu      publish  server/redis/bench",
	"cpu      e2e      server/redis/bench",
	"cpu      paced    server/redis/bench",
	"cpu      drain    server/redis/bench",
	"steal    publish  cores taken by the host",
	"steal    e2e      cores taken by the host",
	"steal    paced    cores taken by the host",
	"steal    drain    cores taken by the host",
	"process  peak RSS (VmHWM)",
	"process  start to /readyz 200",
	"process  SIGTERM shutdown",
}

func cells(s *serverResult) map[string]cell {
	c := map[string]cell{}
	if s == nil {
		return c
	}
	rate := func(row string, v float64) { c[row] = cell{num(v), v, true} }
	dur := func(row string, d time.Duration) { c[row] = cell{ms(d), float64(d), false} }
	text := func(row, t string) { c[row] = cell{text: t} }
	if p := s.Publish; p != nil {
		rate("publish  req/s", p.ReqPerSec)
		text("publish  accepted / errors", fmt.Sprintf("%s / %d", num(float64(p.Accepted)), p.Errors))
		dur("publish  request p50", p.P50)
		dur("publish  request p99", p.P99)
		dur("publish  request max", p.Max)
	}
	if e := s.E2E; e != nil {
		rate("e2e      publish req/s while delivering", e.Publish.ReqPerSec)
		rate("e2e      msg/s (first publish->last push)", e.PushesPerSec)
		text("e2e      pushed / accepted, duplicates", fmt.Sprintf("%s / %s, %d", num(float64(e.Received)), num(float64(e.Publish.Accepted)), e.Duplicates))
		dur("e2e      publish-to-push p50", e.P50)
		dur("e2e      publish-to-push p99", e.P99)
		dur("e2e      publish-to-push max", e.Max)
		dur("e2e      pickup (PUT->first push)", e.Pickup)
	}
	if e := s.Paced; e != nil {
		rate("paced    msg/s (publishers paced)", e.PushesPerSec)
		text("paced    pushed / accepted, duplicates", fmt.Sprintf("%s / %s, %d", num(float64(e.Received)), num(float64(e.Publish.Accepted)), e.Duplicates))
		dur("paced    publish-to-push p50", e.P50)
		dur("paced    publish-to-push p99", e.P99)
		dur("paced    publish-to-push max", e.Max)
	}
	if d := s.Drain; d != nil {
		rate("drain    publish req/s (paused)", d.Publish.ReqPerSec)
		rate("drain    pushes/s (first->last push)", d.PushesPerSec)
		text("drain    pushed / accepted, duplicates", fmt.Sprintf("%s / %s, %d", num(float64(d.Received)), num(float64(d.Publish.Accepted)), d.Duplicates))
		dur("drain    resume->first push", d.Pickup)
		dur("drain    resume->last push", d.ResumeToLast)
	}
	for _, ph := range [][2]string{{"publish", "publish"}, {"e2e    ", "end-to-end"}, {"paced  ", "paced"}, {"drain  ", "drain"}} {
		if u, ok := s.CPU[ph[1]]; ok && len(u) > 0 {
			text("cpu      "+ph[0]+"  server/redis/bench", fmt.Sprintf("%.2f / %.2f / %.2f", u["server"], u["redis"], u["bench"]))
			if st, ok := u["steal"]; ok {
				text("steal    "+ph[0]+"  cores taken by the host", fmt.Sprintf("%.2f", st))
			}
		}
	}
	if s.PeakRSS > 0 {
		c["process  peak RSS (VmHWM)"] = cell{fmt.Sprintf("%.1f MiB", mib(s.PeakRSS)), float64(s.PeakRSS), false}
	}
	if s.StartupTime > 0 {
		dur("process  start to /readyz 200", s.StartupTime)
	}
	if s.Shutdown > 0 {
		t := fmt.Sprintf("exit %d in %s", s.ExitCode, ms(s.Shutdown))
		if s.Killed {
			t += ", KILLED"
		}
		text("process  SIGTERM shutdown", t)
	}
	return c
}

// ratioText is the ratio column: bridge/minimal as a percentage for rates,
// as a factor for lower-is-better values; empty when it does not apply.
func ratioText(b, m cell, okB, okM bool) string {
	if !okB || !okM || b.v <= 0 || m.v <= 0 {
		return ""
	}
	if b.higher {
		return fmt.Sprintf("%.1f%%", 100*b.v/m.v)
	}
	return fmt.Sprintf("%.2fx", b.v/m.v)
}

func printTable(w io.Writer, r *results) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("bridge-bench  duration=%s conns=%d size=%dB max_in_flight=%d drain=%d cpus=%d only=%s",
		r.Options.Duration, r.Options.Conns, r.Options.Size, r.Options.MaxInFlight, r.Options.DrainN, r.Options.CPUs, r.Options.Only)
	if benchFilter != "" {
		p("bridge subscriptions filtered by: %s", benchFilter)
	}
	if benchOTLP {
		p("bridge exports traces (OTLP/HTTP to a local sink)")
	}
	if r.LoadAvg.Start != "" {
		p("load average at start: %s", r.LoadAvg.Start)
	}

	p("")
	switch {
	case r.Baseline.Note != "":
		p("baseline  redis-benchmark XADD: %s", r.Baseline.Note)
	case r.Baseline.XAddPerSec > 0:
		p("baseline  redis-benchmark XADD: %s/s unpipelined, %s/s pipelined (-P %d)",
			num(r.Baseline.XAddPerSec), num(r.Baseline.XAddPipelinedPerSec), baselinePipeline)
	}

	bc, mc := cells(r.Bridge), cells(r.Minimal)
	rows := [][4]string{{"metric", "bridge", "minimal", "bridge/minimal"}}
	for _, name := range rowOrder {
		b, okB := bc[name]
		m, okM := mc[name]
		if !okB && !okM {
			continue
		}
		bt, mt := b.text, m.text
		if !okB {
			bt = "-"
		}
		if !okM {
			mt = "-"
		}
		rows = append(rows, [4]string{name, bt, mt, ratioText(b, m, okB, okM)})
	}
	var width [4]int
	for _, row := range rows {
		for i, s := range row {
			width[i] = max(width[i], len(s))
		}
	}
	for i, row := range rows {
		p("%-*s  %*s  %*s  %*s", width[0], row[0], width[1], row[1], width[2], row[2], width[3], row[3])
		if i == 0 {
			p("%s", strings.Repeat("-", width[0]+width[1]+width[2]+width[3]+6))
		}
	}

	p("")
	p("targets (same run, same load client): bridge >= %.0f%% of minimal; e2e p99 <= %.2fx minimal's", targetShare*100, targetP99Factor)
	switch {
	case len(r.Comparison) > 0:
		for _, c := range r.Comparison {
			verdict := "ok"
			if !c.OK {
				verdict = "BELOW TARGET"
				if strings.HasPrefix(c.Target, "<=") {
					verdict = "ABOVE TARGET"
				}
			}
			if strings.HasPrefix(c.Target, "<=") {
				p("  %-16s %10.2f vs %10.2f  %6.2fx  (target %sx)  %s", c.Metric, c.Bridge, c.Minimal, c.Ratio, c.Target, verdict)
			} else {
				p("  %-16s %10s vs %10s  %6.1f%%  (target %s%%)  %s", c.Metric, num(c.Bridge), num(c.Minimal), 100*c.Ratio, fmt.Sprintf(">= %.0f", targetShare*100), verdict)
			}
		}
	case r.Bridge == nil || r.Minimal == nil:
		p("  not evaluated: only one server was measured (-only %s)", r.Options.Only)
	default:
		p("  not evaluated: a phase is missing on one side (see problems)")
	}

	printRounds(p, r)
	printGoals(p, r.Goals)

	if r.Baseline.XAddPerSec > 0 {
		p("")
		p("publish / raw XADD ceiling (unpipelined, pipelined -P %d)", baselinePipeline)
		for _, s := range []struct {
			name string
			r    *serverResult
		}{{"bridge", r.Bridge}, {"minimal", r.Minimal}} {
			if s.r != nil && s.r.Publish != nil {
				p("  %-8s %5.1f%%  %5.1f%%", s.name, 100*s.r.Publish.ReqPerSec/r.Baseline.XAddPerSec, safePct(s.r.Publish.ReqPerSec, r.Baseline.XAddPipelinedPerSec))
			}
		}
	}
	p("")
	p("note: the issue's minimal figures from another machine and day (publish %s req/s, drain %s pushes/s, e2e %s msg/s, p99 %s) are informational only; the targets use this run's minimal column.",
		num(issuePublishRPS), num(issueDrainRPS), num(issueE2ERPS), ms(issueE2EP99))

	printSoak(p, r.Soak)
	printScale(p, r.Scale)
	for _, s := range []struct {
		name string
		r    *serverResult
	}{{"bridge", r.Bridge}, {"minimal", r.Minimal}} {
		if s.r != nil && s.r.LogLines > 0 {
			p("")
			p("%s log: %d line(s); most frequent:", s.name, s.r.LogLines)
			for _, l := range s.r.LogSummary {
				p("  %s", l)
			}
		}
	}
	if r.LoadAvg.End != "" {
		p("")
		p("load average: start %s, end %s  (%d cpus; rounds alternate which server goes first, best round of each shown)", r.LoadAvg.Start, r.LoadAvg.End, r.Options.CPUs)
	}
	p("")
	if len(r.Problems) == 0 {
		p("problems: none")
	} else {
		p("problems:")
		for _, s := range r.Problems {
			p("  - %s", s)
		}
	}
}

func safePct(a, b float64) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return 100 * a / b
}
