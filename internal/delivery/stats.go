package delivery

import (
	"sync/atomic"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

// Stats are one process's counters for one subscription. Fields are read with atomics.
type Stats struct {
	Delivered    atomic.Int64
	Retried      atomic.Int64
	DeadLettered atomic.Int64
	InFlight     atomic.Int64
	Lost         atomic.Int64
	Filtered     atomic.Int64
	LastStatus   atomic.Int64
	lastError    atomic.Pointer[string]
	// lastAt (unix ms) is when LastStatus and the last error were set.
	lastAt atomic.Int64
	// okAt (unix ms) is this process's latest acknowledged push (circuit breaker).
	okAt atomic.Int64

	// Owned by the engine's stats flusher: what it already added to the shared counters.
	sub     atomic.Pointer[core.Subscription]
	flushed core.StatsDelta
}

// idle reports whether d has nothing to add: no counts, no new status, and no in-flight
// report to make or to take back. Idle subscriptions then cost Redis nothing.
func (s *Stats) idle(d core.StatsDelta) bool {
	return d.Delivered == 0 && d.Retried == 0 && d.DeadLettered == 0 && d.Lost == 0 && d.Filtered == 0 &&
		d.LastAt.IsZero() && d.InFlight == 0 && s.flushed.InFlight == 0
}

// record notes the outcome of one push.
func (s *Stats) record(status int, errText string) {
	// Every push of the subscription, from every worker, lands here: write only what
	// changed, so successive pushes with the same answer do not keep taking the cache line
	// from each other (nor allocate the error text).
	if int64(status) != s.LastStatus.Load() {
		s.LastStatus.Store(int64(status))
	}
	if cur := s.lastError.Load(); cur == nil || *cur != errText {
		s.setLastError(errText)
	}
	if now := time.Now().UnixMilli(); now != s.lastAt.Load() {
		s.lastAt.Store(now)
	}
}

func (s *Stats) setLastError(e string) { s.lastError.Store(&e) }

// delta is what the shared counters have not seen yet.
func (s *Stats) delta() core.StatsDelta {
	d := core.StatsDelta{
		Delivered:    s.Delivered.Load() - s.flushed.Delivered,
		Retried:      s.Retried.Load() - s.flushed.Retried,
		DeadLettered: s.DeadLettered.Load() - s.flushed.DeadLettered,
		Lost:         s.Lost.Load() - s.flushed.Lost,
		Filtered:     s.Filtered.Load() - s.flushed.Filtered,
		InFlight:     s.InFlight.Load(),
	}
	if ok := s.okAt.Load(); ok > s.flushed.OkAt.UnixMilli() {
		d.OkAt = time.UnixMilli(ok)
	}
	if at := s.lastAt.Load(); at > s.flushed.LastAt.UnixMilli() {
		d.LastAt = time.UnixMilli(at)
		d.LastStatus = int(s.LastStatus.Load())
		d.LastError = s.LastError()
	}
	return d
}

// flushedDelta records that d reached the shared counters.
func (s *Stats) flushedDelta(d core.StatsDelta) {
	s.flushed.Delivered += d.Delivered
	s.flushed.Retried += d.Retried
	s.flushed.DeadLettered += d.DeadLettered
	s.flushed.Lost += d.Lost
	s.flushed.Filtered += d.Filtered
	if !d.LastAt.IsZero() {
		s.flushed.LastAt = d.LastAt
	}
	if !d.OkAt.IsZero() {
		s.flushed.OkAt = d.OkAt
	}
	s.flushed.InFlight = d.InFlight
}

// LastError is the most recent failure text, "" when none.
func (s *Stats) LastError() string {
	if p := s.lastError.Load(); p != nil {
		return *p
	}
	return ""
}
