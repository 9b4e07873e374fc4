package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The soak runs the bridge with a short retention so that trimming works during the run:
// the retention issue's claim is that Redis memory after the soak is back within
// soakMemorySlack of what it was before, however many messages went through.
const (
	soakRetention   = "1s"
	soakInterval    = "1s"
	soakMemorySlack = 2 << 20
	soakTrimTimeout = 30 * time.Second
)

// soakResult is what the soak measured (bridge only).
type soakResult struct {
	Messages      uint64  `json:"messages"`
	PublishPerSec float64 `json:"publish_per_sec"`
	Delivered     uint64  `json:"delivered"`
	Duplicates    uint64  `json:"duplicates"`
	// Redis used_memory before the load, at its peak during it, and after.
	UsedBefore int64 `json:"used_memory_before"`
	UsedPeak   int64 `json:"used_memory_peak"`
	UsedAfter  int64 `json:"used_memory_after"`
	// StreamPeak is the longest the stream got; BytesPerEntry the memory it cost per entry.
	StreamPeak    int64         `json:"stream_peak"`
	BytesPerEntry float64       `json:"bytes_per_entry"`
	TrimmedAfter  time.Duration `json:"trimmed_after_ns"` // last push to an empty stream
	Complete      bool          `json:"complete"`
	// The attempt log is bounded by count (BRIDGE_ATTEMPT_LOG_MAX), not by the stream's
	// retention: its size after the load is reported, and left out of the growth check.
	AttemptLogBefore, AttemptLogAfter int64 // bytes (MEMORY USAGE)
	AttemptLogLen                     int64 // attempts kept after the load
}

// soakAttemptMax is the attempt log cap the soak runs with (the default).
const soakAttemptMax = 100000

// attemptLogUsage is the memory and length of the soak subscription's attempt log.
func attemptLogUsage(addr, subject, sub string) (bytes, length int64) {
	key := "bridge:{" + subject + "}:attempts:" + sub
	if v, err := redisDo(addr, "MEMORY", "USAGE", key, "SAMPLES", "0"); err == nil {
		bytes, _ = v.(int64)
	}
	if v, err := redisDo(addr, "XLEN", key); err == nil {
		length, _ = v.(int64)
	}
	return bytes, length
}

// runSoak publishes n messages through a fresh bridge with one subscription and checks
// that the stream and Redis's memory come back down.
func runSoak(ctx context.Context, o options, bridgeBin, dir, redisAddr string, problem func(string, ...any)) (*soakResult, error) {
	const name, subject = "bench-soak", "bench.soak"
	if _, err := redisDo(redisAddr, "FLUSHALL"); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	srv, err := startProcess("bridge", filepath.Join(dir, "soak.log"), bridgeEnv(map[string]string{
		"BRIDGE_LISTEN": listen, "BRIDGE_REDIS_URL": "redis://" + redisAddr, "BRIDGE_TARGET_ALLOW_CIDRS": "127.0.0.1/32",
		"BRIDGE_LOG_LEVEL": "warn", "BRIDGE_RETENTION": soakRetention, "BRIDGE_TRIM_INTERVAL": soakInterval,
	}), bridgeBin)
	if err != nil {
		return nil, err
	}
	defer srv.kill()
	a := newAPIClient("http://" + listen)
	if err := a.waitReady(ctx, srv); err != nil {
		return nil, err
	}
	rcv, err := startReceiver(o.size, o.soakN, true)
	if err != nil {
		return nil, err
	}
	defer rcv.close()
	if err := a.putSubscription(ctx, name, map[string]any{
		"subject": subject, "url": rcv.url, "max_in_flight": o.maxInFlight, "timeout": "10s",
	}); err != nil {
		return nil, err
	}
	pubURL := a.base + "/v1/subjects/" + subject + "/messages"
	// Warm up, and let everything that exists once (the subscription, its group, counters,
	// trimming samples) settle before the "before" figure.
	if warm := runPublish(ctx, publishPlan{url: pubURL, conns: 1, size: o.size, total: 1, hardStop: time.Now().Add(pickupTimeout)}); warm.Accepted != 1 {
		return nil, fmt.Errorf("soak warm-up publish failed: %v", warm.ErrorSamples)
	}
	if !rcv.waitFor(ctx, 1, pickupTimeout) {
		return nil, fmt.Errorf("soak: no push of the warm-up message")
	}
	if err := waitStream(ctx, redisAddr, subject, soakTrimTimeout); err != nil {
		return nil, fmt.Errorf("soak warm-up: %w", err)
	}
	time.Sleep(2 * time.Second)
	r := &soakResult{}
	if r.UsedBefore, err = usedMemory(redisAddr); err != nil {
		return nil, err
	}
	r.AttemptLogBefore, _ = attemptLogUsage(redisAddr, subject, name)
	rcv.reset()

	// Sample memory and the stream's length while the load runs.
	var peakUsed, peakLen atomic.Int64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if u, err := usedMemory(redisAddr); err == nil && u > peakUsed.Load() {
				peakUsed.Store(u)
			}
			if v, err := redisDo(redisAddr, "XLEN", subject); err == nil {
				if n, ok := v.(int64); ok && n > peakLen.Load() {
					peakLen.Store(n)
				}
			}
			select {
			case <-stopSampling:
				return
			case <-t.C:
			}
		}
	}()
	pub := runPublish(ctx, publishPlan{url: pubURL, conns: o.conns, size: o.size, total: uint64(o.soakN),
		hardStop: time.Now().Add(max(5*time.Minute, 20*o.duration))})
	notePublishErrors(problem, "soak", pub)
	r.Messages, r.PublishPerSec = pub.Accepted, pub.ReqPerSec
	r.Complete = rcv.waitFor(ctx, pub.Accepted+1, 2*deliveryTimeout)
	close(stopSampling)
	sampler.Wait()
	if err := ctx.Err(); err != nil {
		return r, err
	}
	lastPush := rcv.last()
	r.Delivered = rcv.distinct() - 1 // the receiver keeps the warm-up message's id
	r.Duplicates = rcv.pushes.Load() - rcv.distinct() - rcv.noID.Load()
	if err := waitStream(ctx, redisAddr, subject, soakTrimTimeout); err != nil {
		problem("soak: %v", err)
	} else {
		r.TrimmedAfter = time.Since(lastPush)
	}
	time.Sleep(2 * time.Second) // the last trimming samples and counters settle
	if r.UsedAfter, err = usedMemory(redisAddr); err != nil {
		return r, err
	}
	r.AttemptLogAfter, r.AttemptLogLen = attemptLogUsage(redisAddr, subject, name)
	r.UsedPeak, r.StreamPeak = max(peakUsed.Load(), r.UsedAfter), peakLen.Load()
	if r.StreamPeak > 0 {
		r.BytesPerEntry = float64(r.UsedPeak-r.UsedBefore) / float64(r.StreamPeak)
	}
	if !r.Complete {
		problem("soak: %d of %d accepted messages pushed%s", r.Delivered, pub.Accepted, a.subscriptionStats(name))
	}
	for _, s := range rcv.anomalies() {
		problem("soak: %s", s)
	}
	if grew := r.UsedAfter - r.UsedBefore - (r.AttemptLogAfter - r.AttemptLogBefore); grew > soakMemorySlack {
		problem("soak: Redis used_memory grew by %.1f MiB over %d messages, not counting the attempt log (allowed %.0f MiB)", float64(grew)/(1<<20), r.Messages, float64(soakMemorySlack)/(1<<20))
	}
	// MAXLEN ~ trims whole stream nodes (100 entries each by default).
	if r.AttemptLogLen > soakAttemptMax+200 {
		problem("soak: the attempt log holds %d attempts, over BRIDGE_ATTEMPT_LOG_MAX=%d", r.AttemptLogLen, soakAttemptMax)
	}
	srv.stop(syscall.SIGTERM, shutdownGrace+10*time.Second)
	return r, nil
}

// waitStream waits until the subject's stream holds nothing.
func waitStream(ctx context.Context, addr, subject string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var n int64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		v, err := redisDo(addr, "XLEN", subject)
		if err != nil {
			return err
		}
		if n, _ = v.(int64); n == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("stream %s still holds %d entries %s after the last push", subject, n, timeout)
}

// usedMemory is Redis's INFO memory used_memory.
func usedMemory(addr string) (int64, error) {
	v, err := redisDo(addr, "INFO", "memory")
	if err != nil {
		return 0, err
	}
	s, _ := v.(string)
	for _, line := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(line, "used_memory:"); ok {
			return strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO memory")
}

func printSoak(p func(string, ...any), s *soakResult) {
	if s == nil {
		return
	}
	p("")
	p("soak (bridge, BRIDGE_RETENTION=%s, BRIDGE_TRIM_INTERVAL=%s): %s messages at %s/s, %s delivered, %d duplicates",
		soakRetention, soakInterval, num(float64(s.Messages)), num(s.PublishPerSec), num(float64(s.Delivered)), s.Duplicates)
	p("  redis used_memory  before %.2f MiB, peak %.2f MiB, after %.2f MiB (after - before %+.2f MiB, of which the attempt log %+.2f MiB; allowed %.0f MiB besides it)",
		mib(uint64(s.UsedBefore)), mib(uint64(s.UsedPeak)), mib(uint64(s.UsedAfter)), float64(s.UsedAfter-s.UsedBefore)/(1<<20),
		float64(s.AttemptLogAfter-s.AttemptLogBefore)/(1<<20), float64(soakMemorySlack)/(1<<20))
	p("  attempt log        %s attempts kept (BRIDGE_ATTEMPT_LOG_MAX=%d), %.2f MiB (%.0f bytes each)",
		num(float64(s.AttemptLogLen)), soakAttemptMax, mib(uint64(s.AttemptLogAfter)), float64(s.AttemptLogAfter)/float64(max(s.AttemptLogLen, 1)))
	p("  stream at most %s entries during the load (%.0f bytes of Redis memory each); empty %s after the last push",
		num(float64(s.StreamPeak)), s.BytesPerEntry, ms(s.TrimmedAfter))
}
