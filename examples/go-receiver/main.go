// Command go-receiver is a minimal webhook receiver for the bridge, using only
// the standard library. It verifies Standard Webhooks v1 signatures, drops
// duplicate deliveries by webhook-id, prints each message and answers 204.
//
//	WEBHOOK_SECRET=whsec_... go run ./examples/go-receiver -addr 127.0.0.1:9000
//
// Answers matter: the bridge acks on 2xx, retries on 408/425/429/5xx and
// dead-letters any other 4xx as "dropped". This receiver answers 401 on a bad
// signature (a forged or misconfigured request should not be retried), so a
// wrong WEBHOOK_SECRET sends real messages to the subscription's dead-letter
// queue: fix the secret, then replay them.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	tolerance = 5 * time.Minute // Standard Webhooks timestamp tolerance
	maxBody   = 10 << 20
	maxSeen   = 10000 // webhook-ids remembered for deduplication
)

type receiver struct {
	key []byte
	now func() time.Time
	out io.Writer

	mu   sync.Mutex
	seen map[string]struct{}
	ring []string // insertion order, oldest evicted first
	next int
}

func newReceiver(secret string, out io.Writer) (*receiver, error) {
	enc, ok := strings.CutPrefix(secret, "whsec_")
	if !ok {
		return nil, errors.New("WEBHOOK_SECRET must start with whsec_")
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil || len(key) == 0 {
		return nil, errors.New("WEBHOOK_SECRET: not base64 after whsec_")
	}
	return &receiver{key: key, now: time.Now, out: out, seen: map[string]struct{}{}, ring: make([]string, maxSeen)}, nil
}

// verify checks webhook-timestamp and webhook-signature for id and body.
func (r *receiver) verify(id, ts, sigs string, body []byte) error {
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("bad webhook-timestamp")
	}
	if d := r.now().Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("webhook-timestamp outside the 5 minute tolerance")
	}
	mac := hmac.New(sha256.New, r.key)
	fmt.Fprintf(mac, "%s.%s.", id, ts)
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		b64, ok := strings.CutPrefix(s, "v1,")
		if !ok {
			continue // another signature scheme
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) { // constant-time
			return nil
		}
	}
	return errors.New("no matching v1 signature")
}

// firstTime records id and reports whether it had not been seen before.
func (r *receiver) firstTime(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.seen[id]; dup {
		return false
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.seen, old)
	}
	r.ring[r.next] = id
	r.next = (r.next + 1) % len(r.ring)
	r.seen[id] = struct{}{}
	return true
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
	if err != nil {
		http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	id := req.Header.Get("webhook-id")
	if id == "" {
		http.Error(w, "missing webhook-id", http.StatusUnauthorized)
		return
	}
	if err := r.verify(id, req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature"), body); err != nil {
		log.Printf("rejected %s: %v", id, err)
		http.Error(w, "invalid signature", http.StatusUnauthorized)
		return
	}
	// A real receiver would record the id together with the effect of the
	// message (in the same transaction) rather than before handling it.
	if !r.firstTime(id) {
		log.Printf("duplicate %s ignored", id)
		w.WriteHeader(http.StatusNoContent) // already handled: ack again
		return
	}
	fmt.Fprintf(r.out, "message %s subject=%s subscription=%s delivery=%s content-type=%q\n%s\n",
		id, req.Header.Get("bridge-subject"), req.Header.Get("bridge-subscription"),
		req.Header.Get("redis-delivery-count"), req.Header.Get("content-type"), body)
	w.WriteHeader(http.StatusNoContent)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "listen address")
	flag.Parse()
	rcv, err := newReceiver(os.Getenv("WEBHOOK_SECRET"), os.Stdout)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: *addr, Handler: rcv, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("listening on http://%s/", *addr)
	log.Fatal(srv.ListenAndServe())
}
