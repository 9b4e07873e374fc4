package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// histogram is a lock-free log-linear latency histogram (nanoseconds).
// Publishers and the receiver record from hundreds of goroutines at tens of
// thousands of events per second, so a mutex-guarded slice would itself show
// up in the numbers; fixed buckets also keep memory constant however long a
// phase runs. Each power of two is split into 2^histSubBits buckets, so a
// reported quantile is within ~1.6% of the true value.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	max    atomic.Int64
}

const (
	histSubBits = 6
	histBuckets = (64 - histSubBits + 1) << histSubBits
)

func histBucket(v uint64) int {
	if v < 1<<histSubBits {
		return int(v) // exact below 64 ns
	}
	shift := bits.Len64(v) - histSubBits - 1
	return shift<<histSubBits + int(v>>shift)
}

// histBounds returns the smallest and largest value that land in bucket b.
func histBounds(b int) (lo, hi uint64) {
	if b < 1<<histSubBits {
		return uint64(b), uint64(b)
	}
	shift := b>>histSubBits - 1
	m := uint64(b - shift<<histSubBits)
	return m << shift, (m+1)<<shift - 1
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0 // wall clock stepped backwards; count it as "instant"
	}
	h.counts[histBucket(uint64(d))].Add(1)
	h.total.Add(1)
	for {
		cur := h.max.Load()
		if int64(d) <= cur || h.max.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (h *histogram) reset() {
	for b := range h.counts {
		h.counts[b].Store(0)
	}
	h.total.Store(0)
	h.max.Store(0)
}

func (h *histogram) maxValue() time.Duration { return time.Duration(h.max.Load()) }

// quantile returns the q-quantile (0 < q ≤ 1), the midpoint of its bucket
// capped at the observed maximum; 0 if nothing was recorded.
func (h *histogram) quantile(q float64) time.Duration {
	total := h.total.Load()
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for b := range h.counts {
		seen += h.counts[b].Load()
		if seen >= rank {
			lo, hi := histBounds(b)
			v := time.Duration(lo + (hi-lo)/2)
			return min(v, h.maxValue())
		}
	}
	return h.maxValue()
}

// bodyHeader is the part of every published body the receiver reads back:
// the send time (unix nanos, big-endian) and a sequence number. The rest of
// the body is padding byte so corruption anywhere in it is detectable.
const (
	bodyHeader  = 16
	paddingByte = 'x'
)

func makeBody(size int, seq uint64) []byte {
	b := bytes.Repeat([]byte{paddingByte}, size)
	binary.BigEndian.PutUint64(b[8:16], seq)
	// Stamped last, right before the request is handed to the transport.
	binary.BigEndian.PutUint64(b[0:8], uint64(time.Now().UnixNano()))
	return b
}

// publishPlan says how much one publish phase sends. Whichever of until and
// total is reached first ends it; hardStop bounds count-limited phases so a
// stalled bridge cannot hang the benchmark.
type publishPlan struct {
	url      string
	conns    int
	size     int
	until    time.Time // zero: no time limit, only total
	total    uint64    // 0: no count limit, only until
	hardStop time.Time
	// rate, when positive, paces the publishers to this many requests per
	// second in total: request n is not sent before start + n/rate, so the
	// latency figures are those of a steady load, not of a saturated server.
	rate float64
}

// publishResult is what one publish phase observed.
type publishResult struct {
	Sent      uint64        `json:"sent"`
	Accepted  uint64        `json:"accepted"`
	Errors    uint64        `json:"errors"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	ReqPerSec float64       `json:"accepted_per_sec"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
	Max       time.Duration `json:"max_ns"`
	// ErrorSamples holds the first few distinct failures, for the report.
	ErrorSamples []string  `json:"error_samples,omitempty"`
	Start        time.Time `json:"-"`
}

// newLoadClient returns the client all publishers of one phase share: one
// transport whose pool holds exactly one keep-alive connection per worker, so
// the bridge sees `conns` long-lived connections and no reconnect churn.
func newLoadClient(conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil, // loopback only; never route through a proxy from the environment
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		// A request stuck longer than this counts as an error instead of
		// stretching the phase.
		Timeout: 10 * time.Second,
	}
}

// runPublish drives plan.conns concurrent publishers and measures each
// request. A request already sent when the phase ends is allowed to finish
// (unless ctx is cancelled): cancelling it could leave a message written to
// Redis but not counted as accepted, and the delivery phases compare pushes
// with accepted publishes.
func runPublish(ctx context.Context, plan publishPlan) publishResult {
	client := newLoadClient(plan.conns)
	defer client.CloseIdleConnections()

	var (
		lat              histogram
		seq, ok, errs    atomic.Uint64
		samplesMu        sync.Mutex
		samples          []string
		wg               sync.WaitGroup
		start            = time.Now()
		maxErrorSamples  = 5
		errorBackoff     = 10 * time.Millisecond
		maxResponseBytes = int64(4096)
	)
	noteError := func(s string) {
		errs.Add(1)
		samplesMu.Lock()
		defer samplesMu.Unlock()
		if len(samples) < maxErrorSamples && !slices.Contains(samples, s) {
			samples = append(samples, s)
		}
	}
	worker := func() {
		defer wg.Done()
		for ctx.Err() == nil {
			now := time.Now()
			if (!plan.until.IsZero() && !now.Before(plan.until)) || (!plan.hardStop.IsZero() && !now.Before(plan.hardStop)) {
				return
			}
			n := seq.Add(1)
			if plan.total > 0 && n > plan.total {
				return
			}
			if plan.rate > 0 {
				due := start.Add(time.Duration(float64(n-1) / plan.rate * float64(time.Second)))
				if (!plan.until.IsZero() && !due.Before(plan.until)) || (!plan.hardStop.IsZero() && !due.Before(plan.hardStop)) {
					return
				}
				if wait := time.Until(due); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						return
					}
				}
			}
			// A fresh body per request: the transport may still hold the
			// previous one after Do returns (it closes bodies asynchronously).
			body := makeBody(plan.size, n)
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, plan.url, bytes.NewReader(body))
			if err != nil {
				noteError(err.Error())
				return
			}
			req.Header.Set("Content-Type", "application/octet-stream")
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				noteError(err.Error())
				time.Sleep(errorBackoff) // don't spin on a refused connection
				continue
			}
			// Drain so the connection goes back to the pool for reuse.
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
			resp.Body.Close()
			lat.record(time.Since(t0))
			if resp.StatusCode == http.StatusAccepted {
				ok.Add(1)
				continue
			}
			noteError(fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(msg)))
			if resp.StatusCode == http.StatusServiceUnavailable {
				time.Sleep(errorBackoff)
			}
		}
	}
	wg.Add(plan.conns)
	for range plan.conns {
		go worker()
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := publishResult{
		Sent:         ok.Load() + errs.Load(),
		Accepted:     ok.Load(),
		Errors:       errs.Load(),
		Elapsed:      elapsed,
		P50:          lat.quantile(0.50),
		P99:          lat.quantile(0.99),
		Max:          lat.maxValue(),
		ErrorSamples: samples,
		Start:        start,
	}
	if elapsed > 0 {
		res.ReqPerSec = float64(res.Accepted) / elapsed.Seconds()
	}
	return res
}
