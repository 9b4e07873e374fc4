package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// receiver is the webhook the server under test (the bridge, or the minimal
// implementation) pushes to in the delivery phases. It answers 204 at once so
// that what is measured is the server, not the receiver, and it checks every
// push on the way: a missing webhook-id, a body that is not byte-for-byte what
// was published, or a redelivery all point at bugs rather than at slowness.
type receiver struct {
	size int
	// bridgeHeaders: also require the headers only the bridge sends
	// (signature, delivery count); the minimal implementation sends neither.
	bridgeHeaders bool
	url           string
	srv           *http.Server
	done          chan struct{} // closed when Serve returned

	latency histogram // publish-to-push, from the send time in the body

	pushes     atomic.Uint64 // every request, duplicates included
	badBody    atomic.Uint64 // wrong length, or padding not as published
	noID       atomic.Uint64 // no webhook-id header
	noSig      atomic.Uint64 // no webhook-signature / webhook-timestamp header
	wrongCT    atomic.Uint64 // content-type not passed on as published
	redelivery atomic.Uint64 // redis-delivery-count other than 1
	firstNanos atomic.Int64  // receive time of the first push
	lastNanos  atomic.Int64  // receive time of the latest push

	mu   sync.Mutex
	seen map[string]struct{} // webhook-ids received so far
}

// startReceiver listens on a fresh loopback port. expect sizes the dedup set
// so that it does not rehash while the phase runs.
func startReceiver(size, expect int, bridgeHeaders bool) (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{
		size:          size,
		bridgeHeaders: bridgeHeaders,
		url:           fmt.Sprintf("http://%s/", ln.Addr()),
		done:          make(chan struct{}),
		seen:          make(map[string]struct{}, expect),
	}
	r.srv = &http.Server{
		Handler:           r,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	go func() {
		defer close(r.done)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Printf("receiver: %v\n", err)
		}
	}()
	return r, nil
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	// One extra byte tells an over-long body from an exact one.
	buf := make([]byte, r.size+1)
	n, err := io.ReadFull(req.Body, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		// The bridge hung up mid-body; it will see a failure and retry.
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	now := time.Now()
	w.WriteHeader(http.StatusNoContent)

	r.pushes.Add(1)
	r.firstNanos.CompareAndSwap(0, now.UnixNano())
	for {
		cur := r.lastNanos.Load()
		if now.UnixNano() <= cur || r.lastNanos.CompareAndSwap(cur, now.UnixNano()) {
			break
		}
	}

	body := buf[:n]
	if n != r.size || !paddingIntact(body) {
		r.badBody.Add(1)
	} else {
		sent := int64(binary.BigEndian.Uint64(body[0:8]))
		r.latency.record(time.Duration(now.UnixNano() - sent))
	}
	if req.Header.Get("Content-Type") != "application/octet-stream" {
		r.wrongCT.Add(1)
	}
	if r.bridgeHeaders {
		if req.Header.Get("Webhook-Signature") == "" || req.Header.Get("Webhook-Timestamp") == "" {
			r.noSig.Add(1)
		}
		if c := req.Header.Get("Redis-Delivery-Count"); c != "1" {
			r.redelivery.Add(1)
		}
	}
	id := req.Header.Get("Webhook-Id")
	if id == "" {
		r.noID.Add(1)
		return
	}
	r.mu.Lock()
	r.seen[id] = struct{}{}
	r.mu.Unlock()
}

func paddingIntact(b []byte) bool {
	for _, c := range b[bodyHeader:] {
		if c != paddingByte {
			return false
		}
	}
	return true
}

// distinct is the number of different webhook-ids received.
func (r *receiver) distinct() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return uint64(len(r.seen))
}

// waitFor polls until at least n distinct messages arrived, ctx ends or the
// timeout passes; it reports whether n was reached.
func (r *receiver) waitFor(ctx context.Context, n uint64, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if r.distinct() >= n {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return r.distinct() >= n
		case <-tick.C:
		}
	}
}

// reset forgets latencies and push times (not the webhook-ids seen, so
// duplicates are still counted over the whole phase). It is only called
// while no push is in flight: after the warm-up message arrived and before
// the measured publishing starts.
func (r *receiver) reset() {
	r.latency.reset()
	r.firstNanos.Store(0)
	r.lastNanos.Store(0)
}

func (r *receiver) first() time.Time { return time.Unix(0, r.firstNanos.Load()) }
func (r *receiver) last() time.Time  { return time.Unix(0, r.lastNanos.Load()) }

// anomalies lists what the receiver saw that a correct bridge never causes
// on an idle, healthy receiver.
func (r *receiver) anomalies() []string {
	var out []string
	add := func(n uint64, what string) {
		if n > 0 {
			out = append(out, fmt.Sprintf("%d %s", n, what))
		}
	}
	if dup := r.pushes.Load() - r.distinct() - r.noID.Load(); dup > 0 {
		add(dup, "duplicate pushes (same webhook-id)")
	}
	add(r.badBody.Load(), "bodies not as published")
	add(r.noID.Load(), "pushes without webhook-id")
	add(r.noSig.Load(), "pushes without webhook-signature/timestamp")
	add(r.wrongCT.Load(), "pushes with a content-type other than the published one")
	add(r.redelivery.Load(), "pushes with redis-delivery-count != 1")
	return out
}

func (r *receiver) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		r.srv.Close() // the bridge still holds requests open; cut them
	}
	<-r.done
}
