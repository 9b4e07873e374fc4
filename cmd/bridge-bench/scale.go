package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The scale phases measure what a subscription costs while it does nothing, and whether
// delivery keeps its pace across many subscriptions (bridge only; the thousands-of-
// subscriptions issue). Each phase starts a fresh bridge on a flushed Redis.
const (
	idleWarmMessages = 5                // per subscription, delivered before the idle window
	idleSettle       = 35 * time.Second // after the last push, before measuring: past the retention trimmer's two looks after traffic
	idleWindow       = 10 * time.Second // the measured idle window
	idleProbes       = 200              // first-push-after-idle latency samples
	fanoutMessages   = 2000             // published to the fan-out subject
	spreadSubs       = 1000             // subscriptions of the spread phase
	spreadPerSub     = 100              // messages per subscription in the spread phase
)

type idleResult struct {
	Subscriptions  int           `json:"subscriptions"`
	CreateTime     time.Duration `json:"create_ns"`
	RSS            uint64        `json:"rss_bytes"`
	RSSPerSub      float64       `json:"rss_per_subscription_bytes"`
	Connections    int64         `json:"redis_connections"`
	CommandsPerSec float64       `json:"redis_commands_per_sec"`
	CommandsPerSub float64       `json:"redis_commands_per_sec_per_subscription"`
	CPU            float64       `json:"bridge_cpu_cores"`
	Goroutines     int64         `json:"goroutines"`
	FirstPushP50   time.Duration `json:"first_push_p50_ns"`
	FirstPushP99   time.Duration `json:"first_push_p99_ns"`
	FirstPushMax   time.Duration `json:"first_push_max_ns"`
	// TopCommands are the commands Redis ran most during the idle window, "name=calls".
	TopCommands []string `json:"top_commands"`
}

type rateResult struct {
	Subscriptions int     `json:"subscriptions"`
	Pushes        uint64  `json:"pushes"`
	Duplicates    uint64  `json:"duplicates"`
	PushesPerSec  float64 `json:"pushes_per_sec"`
	// BeforeAllRunning were pushed before the last subscription was resumed (left out of
	// the rate).
	BeforeAllRunning int  `json:"before_all_running"`
	Complete         bool `json:"complete"`
}

type scaleResults struct {
	Idle   []idleResult `json:"idle,omitempty"`
	Fanout *rateResult  `json:"fanout,omitempty"`
	Spread *rateResult  `json:"spread,omitempty"`
	Single *rateResult  `json:"single,omitempty"`
}

// countingReceiver counts pushes per (subscription, message id) and remembers when each
// message id first arrived anywhere.
type countingReceiver struct {
	url  string
	srv  *http.Server
	done chan struct{}

	pushes atomic.Uint64
	first  atomic.Int64 // unix nanos of the first push
	last   atomic.Int64

	mu      sync.Mutex
	seen    map[string]struct{} // subscription + " " + id
	arrival map[string]time.Time
}

func startCountingReceiver(expect int) (*countingReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &countingReceiver{url: "http://" + ln.Addr().String() + "/", done: make(chan struct{}),
		seen: make(map[string]struct{}, expect), arrival: map[string]time.Time{}}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() {
		defer close(r.done)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Printf("receiver: %v\n", err)
		}
	}()
	return r, nil
}

func (r *countingReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	_, _ = io.Copy(io.Discard, req.Body)
	now := time.Now()
	id, sub := req.Header.Get("Webhook-Id"), req.Header.Get("Bridge-Subscription")
	r.mu.Lock()
	r.seen[sub+" "+id] = struct{}{}
	if _, ok := r.arrival[id]; !ok {
		r.arrival[id] = now
	}
	r.mu.Unlock()
	r.first.CompareAndSwap(0, now.UnixNano())
	r.last.Store(now.UnixNano())
	r.pushes.Add(1)
	w.WriteHeader(http.StatusNoContent)
}

func (r *countingReceiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *countingReceiver) arrived(id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.arrival[id]
	return t, ok
}

func (r *countingReceiver) reset() {
	r.mu.Lock()
	r.seen = map[string]struct{}{}
	r.arrival = map[string]time.Time{}
	r.mu.Unlock()
	r.pushes.Store(0)
	r.first.Store(0)
	r.last.Store(0)
}

func (r *countingReceiver) waitFor(ctx context.Context, n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if r.distinct() >= n {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r.distinct() >= n
}

func (r *countingReceiver) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.srv.Shutdown(ctx)
	<-r.done
}

// scaleBridge is a fresh bridge process for one scale phase.
type scaleBridge struct {
	proc *process
	api  *apiClient
}

func startScaleBridge(ctx context.Context, bridgeBin, dir, redisAddr, name string) (*scaleBridge, error) {
	if _, err := redisDo(redisAddr, "FLUSHALL"); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := startProcess("bridge", filepath.Join(dir, name+".log"), bridgeEnv(map[string]string{
		"BRIDGE_LISTEN": listen, "BRIDGE_REDIS_URL": "redis://" + redisAddr, "BRIDGE_TARGET_ALLOW_CIDRS": "127.0.0.1/32",
		"BRIDGE_LOG_LEVEL": "warn",
	}), bridgeBin)
	if err != nil {
		return nil, err
	}
	a := newAPIClient("http://" + listen)
	if err := a.waitReady(ctx, p); err != nil {
		p.kill()
		return nil, err
	}
	return &scaleBridge{proc: p, api: a}, nil
}

func (b *scaleBridge) stop() { b.proc.stop(syscall.SIGTERM, shutdownGrace+10*time.Second) }

// createSubs creates n subscriptions name<i> on subject(i), conns at a time.
func (b *scaleBridge) createSubs(ctx context.Context, n int, name, url string, subject func(int) string, extra map[string]any) error {
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(n, 16) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				body := map[string]any{"subject": subject(i), "url": url, "timeout": "10s"}
				for k, v := range extra {
					body[k] = v
				}
				if err := b.api.putSubscription(ctx, fmt.Sprintf("%s%d", name, i), body); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// publishEach publishes k messages to each of the subjects, conns at a time; it returns
// the ids in publish order.
func (b *scaleBridge) publishEach(ctx context.Context, subjects []string, k int) ([]string, error) {
	client := newLoadClient(16)
	defer client.CloseIdleConnections()
	ids := make([]string, len(subjects)*k)
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(ids) || ctx.Err() != nil {
					return
				}
				id, err := publishOne(ctx, client, b.api.base, subjects[i%len(subjects)])
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				ids[i] = id
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return ids, err
	}
	return ids, nil
}

func publishOne(ctx context.Context, c *http.Client, base, subject string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/subjects/"+subject+"/messages", bytes.NewReader([]byte(`{"n":1}`)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("publish to %s: %d %s", subject, resp.StatusCode, raw)
	}
	_, rest, _ := strings.Cut(string(raw), `"id":"`)
	id, _, _ := strings.Cut(rest, `"`)
	return id, nil
}

func redisInfoInt(addr, section, field string) (int64, error) {
	v, err := redisDo(addr, "INFO", section)
	if err != nil {
		return 0, err
	}
	s, _ := v.(string)
	for _, line := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in INFO %s", field, section)
}

// runIdle measures n idle subscriptions: each delivered a few messages, then nothing.
func runIdle(ctx context.Context, bridgeBin, dir, redisAddr string, n int, problem func(string, ...any)) (*idleResult, error) {
	br, err := startScaleBridge(ctx, bridgeBin, dir, redisAddr, fmt.Sprintf("idle-%d", n))
	if err != nil {
		return nil, err
	}
	defer br.proc.kill()
	rcv, err := startCountingReceiver(n * idleWarmMessages)
	if err != nil {
		return nil, err
	}
	defer rcv.close()
	subject := func(i int) string { return fmt.Sprintf("idle.%d", i) }
	r := &idleResult{Subscriptions: n}
	start := time.Now()
	if err := br.createSubs(ctx, n, "idle", rcv.url, subject, nil); err != nil {
		return nil, err
	}
	r.CreateTime = time.Since(start)
	subjects := make([]string, n)
	for i := range subjects {
		subjects[i] = subject(i)
	}
	if _, err := br.publishEach(ctx, subjects, idleWarmMessages); err != nil {
		return nil, err
	}
	if !rcv.waitFor(ctx, n*idleWarmMessages, 2*deliveryTimeout) {
		problem("idle %d: %d of %d warm-up messages pushed", n, rcv.distinct(), n*idleWarmMessages)
	}
	time.Sleep(idleSettle)
	pid := br.proc.pid()
	_, _ = redisDo(redisAddr, "CONFIG", "RESETSTAT") // so the window's commandstats are its own
	cmd0, err := redisInfoInt(redisAddr, "stats", "total_commands_processed")
	if err != nil {
		return nil, err
	}
	cpu0, _ := cpuSeconds(pid)
	t0 := time.Now()
	time.Sleep(idleWindow)
	cmd1, _ := redisInfoInt(redisAddr, "stats", "total_commands_processed")
	cpu1, _ := cpuSeconds(pid)
	elapsed := time.Since(t0).Seconds()
	// The two INFO calls of the bench itself are not the bridge's.
	r.CommandsPerSec = float64(cmd1-cmd0-1) / elapsed
	r.CommandsPerSub = r.CommandsPerSec / float64(n)
	r.CPU = (cpu1 - cpu0) / elapsed
	r.TopCommands = topCommands(redisAddr, 6)
	clients, _ := redisInfoInt(redisAddr, "clients", "connected_clients")
	r.Connections = clients - 1 // the INFO connection
	if _, cur, err := memStatus(pid); err == nil {
		r.RSS = cur
		r.RSSPerSub = float64(cur) / float64(n)
	}
	r.Goroutines = goroutines(br.api.base)

	// First push after idle: one message at a time to subscriptions that sat idle.
	rcv.reset()
	client := newLoadClient(1)
	defer client.CloseIdleConnections()
	var lat []time.Duration
	for k := range min(idleProbes, n) {
		i := (k * 7919) % n
		sent := time.Now()
		id, err := publishOne(ctx, client, br.api.base, subject(i))
		if err != nil {
			return r, err
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if at, ok := rcv.arrived(id); ok {
				lat = append(lat, at.Sub(sent))
				break
			}
			if time.Now().After(deadline) {
				problem("idle %d: message to an idle subscription not pushed within 10s", n)
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
		r.FirstPushP50, r.FirstPushP99, r.FirstPushMax = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)], lat[len(lat)-1]
	}
	br.stop()
	return r, nil
}

// topCommands lists the n commands Redis ran most since its last CONFIG RESETSTAT.
func topCommands(addr string, n int) []string {
	v, err := redisDo(addr, "INFO", "commandstats")
	if err != nil {
		return nil
	}
	raw, _ := v.(string)
	type stat struct {
		name  string
		calls int64
	}
	var stats []stat
	for _, line := range strings.Split(raw, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, fields, _ := strings.Cut(rest, ":")
		calls, _, _ := strings.Cut(strings.TrimPrefix(fields, "calls="), ",")
		c, _ := strconv.ParseInt(calls, 10, 64)
		stats = append(stats, stat{name, c})
	}
	sort.Slice(stats, func(i, j int) bool { return stats[i].calls > stats[j].calls })
	var out []string
	for _, st := range stats[:min(n, len(stats))] {
		out = append(out, fmt.Sprintf("%s=%d", st.name, st.calls))
	}
	return out
}

// goroutines reads go_goroutines from the bridge's /metrics (after the idle window: a
// scrape reads every subscription's figures from Redis).
func goroutines(base string) int64 {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f)
		}
	}
	return -1
}

// runRate measures the total push rate of subs subscriptions on the given subjects, with
// perSubject messages published to each subject while every subscription is paused, then
// all resumed at once.
func runRate(ctx context.Context, bridgeBin, dir, redisAddr, name string, subs int, subjectOf func(int) string, subjects []string, perSubject int, problem func(string, ...any)) (*rateResult, error) {
	br, err := startScaleBridge(ctx, bridgeBin, dir, redisAddr, name)
	if err != nil {
		return nil, err
	}
	defer br.proc.kill()
	fanout := subs / len(subjects)
	want := len(subjects) * perSubject * fanout
	rcv, err := startCountingReceiver(want)
	if err != nil {
		return nil, err
	}
	defer rcv.close()
	if err := br.createSubs(ctx, subs, name, rcv.url, subjectOf, map[string]any{"paused": true, "start": "beginning", "max_in_flight": 64}); err != nil {
		return nil, err
	}
	if _, err := br.publishEach(ctx, subjects, perSubject); err != nil {
		return nil, err
	}
	r := &rateResult{Subscriptions: subs}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < subs && ctx.Err() == nil; i = int(next.Add(1)) - 1 {
				_, _, _ = br.api.do(ctx, http.MethodPost, fmt.Sprintf("/v1/subscriptions/%s%d/resume", name, i), nil)
			}
		})
	}
	wg.Wait()
	// The rate counts from when every subscription runs: resuming a thousand of them takes
	// a while, and their first pushes overlap it.
	allRunning, atAll := time.Now(), rcv.distinct()
	r.Complete = rcv.waitFor(ctx, want, 3*deliveryTimeout)
	time.Sleep(settleTime)
	r.Pushes = rcv.pushes.Load()
	r.Duplicates = r.Pushes - uint64(rcv.distinct())
	if span := time.Unix(0, rcv.last.Load()).Sub(allRunning); span > 0 && rcv.distinct() > atAll {
		r.PushesPerSec = float64(rcv.distinct()-atAll) / span.Seconds()
	}
	r.BeforeAllRunning = atAll
	if !r.Complete {
		problem("%s: %d of %d pushes arrived", name, rcv.distinct(), want)
	}
	br.stop()
	return r, nil
}

func runScale(ctx context.Context, o options, bridgeBin, dir, redisAddr string, problem func(string, ...any)) *scaleResults {
	res := &scaleResults{}
	for _, n := range o.idleSubs {
		step(fmt.Sprintf("scale: %d idle subscriptions", n))
		r, err := runIdle(ctx, bridgeBin, dir, redisAddr, n, problem)
		if err != nil {
			problem("idle %d: %v", n, err)
			continue
		}
		res.Idle = append(res.Idle, *r)
	}
	if o.fanout > 0 {
		step("scale: one subscription, the same backlog (reference for fan-out)")
		one := func(int) string { return "rate.one" }
		if r, err := runRate(ctx, bridgeBin, dir, redisAddr, "single", 1, one, []string{"rate.one"}, fanoutMessages*o.fanout/10, problem); err != nil {
			problem("single: %v", err)
		} else {
			res.Single = r
		}
		step(fmt.Sprintf("scale: fan-out, one subject, %d subscriptions", o.fanout))
		fan := func(int) string { return "rate.fanout" }
		if r, err := runRate(ctx, bridgeBin, dir, redisAddr, "fanout", o.fanout, fan, []string{"rate.fanout"}, fanoutMessages, problem); err != nil {
			problem("fanout: %v", err)
		} else {
			res.Fanout = r
		}
		step(fmt.Sprintf("scale: spread, %d subscriptions on %d subjects", spreadSubs, spreadSubs))
		subjects := make([]string, spreadSubs)
		for i := range subjects {
			subjects[i] = fmt.Sprintf("rate.spread.%d", i)
		}
		spread := func(i int) string { return subjects[i] }
		if r, err := runRate(ctx, bridgeBin, dir, redisAddr, "spread", spreadSubs, spread, subjects, spreadPerSub, problem); err != nil {
			problem("spread: %v", err)
		} else {
			res.Spread = r
		}
	}
	return res
}

func printScale(p func(string, ...any), s *scaleResults) {
	if s == nil {
		return
	}
	if len(s.Idle) > 0 {
		p("")
		p("idle subscriptions (bridge; %d messages each, then %s idle)", idleWarmMessages, idleWindow)
		p("  %8s  %10s  %12s  %6s  %12s  %12s  %6s  %10s  %24s", "subs", "RSS", "RSS/sub", "conns", "cmds/s", "cmds/s/sub", "cpu", "goroutines", "first push p50/p99/max")
		for _, r := range s.Idle {
			p("  %8d  %7.1f MiB  %8.1f KiB  %6d  %12.1f  %12.4f  %5.1f%%  %10d  %8s/%7s/%7s", r.Subscriptions, mib(r.RSS), r.RSSPerSub/1024,
				r.Connections, r.CommandsPerSec, r.CommandsPerSub, 100*r.CPU, r.Goroutines, ms(r.FirstPushP50), ms(r.FirstPushP99), ms(r.FirstPushMax))
		}
		for _, r := range s.Idle {
			p("  %d subscriptions, commands in the %s window: %s", r.Subscriptions, idleWindow, strings.Join(r.TopCommands, " "))
		}
	}
	rate := func(name string, r *rateResult) {
		if r != nil {
			p("  %-28s %6d subs  %9s pushes  %9s pushes/s  %d duplicates  (%d pushed while resuming)", name, r.Subscriptions, num(float64(r.Pushes)), num(r.PushesPerSec), r.Duplicates, r.BeforeAllRunning)
		}
	}
	if s.Single != nil || s.Fanout != nil || s.Spread != nil {
		p("")
		p("push rate across subscriptions (backlog published while paused, then resumed)")
		rate("one subscription", s.Single)
		rate("fan-out (one subject)", s.Fanout)
		rate("spread (a subject each)", s.Spread)
		if s.Single != nil && s.Single.PushesPerSec > 0 {
			if s.Fanout != nil {
				p("  fan-out / one subscription: %.2fx (target >= 0.8)", s.Fanout.PushesPerSec/s.Single.PushesPerSec)
			}
			if s.Spread != nil {
				p("  spread  / one subscription: %.2fx (flat: about 1)", s.Spread.PushesPerSec/s.Single.PushesPerSec)
			}
		}
	}
}
