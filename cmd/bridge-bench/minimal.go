package main

// The minimal implementation the bridge is compared with in the same run
// (hidden mode `bridge-bench -serve-minimal -listen ADDR -redis ADDR`): what a
// competent engineer writes in an hour for the same API subset, with none of
// the bridge's features (no auth, validation, signing, retries, reclaim,
// metrics, logging). Publish is one XADD in the bridge's wire layout; each
// subscription is one XREADGROUP loop feeding max_in_flight push workers that
// XACK each 2xx. It sends the entry ID as webhook-id (the receiver counts
// distinct messages by it) and the published content-type.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/rueidis"
)

func minimalMain(args []string) {
	fs := flag.NewFlagSet("bridge-bench -serve-minimal", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "HTTP listen address")
	redisAddr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	pprofAddr := fs.String("pprof", "", "loopback address for /debug/pprof/ (empty: none)")
	_ = fs.Parse(args)
	if *pprofAddr != "" {
		if err := checkLoopback(*pprofAddr); err != nil {
			fmt.Fprintln(os.Stderr, "minimal:", err)
			os.Exit(2)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		go func() {
			ps := &http.Server{Addr: *pprofAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			if err := ps.ListenAndServe(); err != nil {
				fmt.Fprintln(os.Stderr, "minimal: pprof:", err)
			}
		}()
	}
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{*redisAddr}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "minimal:", err)
		os.Exit(1)
	}
	defer rdb.Close()
	m := newMinimal(rdb)
	srv := &http.Server{Addr: *listen, Handler: m.handler()}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	shutdown := make(chan struct{})
	go func() {
		defer close(shutdown)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		m.close()
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "minimal:", err)
		os.Exit(1)
	}
	<-shutdown
}

type minimal struct {
	rdb  rueidis.Client
	mu   sync.Mutex
	subs map[string]*minSub
}

type minSub struct {
	subject, url, group string
	n                   int
	paused              atomic.Bool
	wake                chan struct{}
	stop                context.CancelFunc
	done                chan struct{}
}

func newMinimal(rdb rueidis.Client) *minimal { return &minimal{rdb: rdb, subs: map[string]*minSub{}} }

func (m *minimal) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("POST /v1/subjects/{subject}/messages", m.publish)
	mux.HandleFunc("PUT /v1/subscriptions/{name}", m.put)
	mux.HandleFunc("POST /v1/subscriptions/{name}/pause", func(w http.ResponseWriter, r *http.Request) { m.setPaused(w, r, true) })
	mux.HandleFunc("POST /v1/subscriptions/{name}/resume", func(w http.ResponseWriter, r *http.Request) { m.setPaused(w, r, false) })
	mux.HandleFunc("DELETE /v1/subscriptions/{name}", m.delete)
	return mux
}

func (m *minimal) publish(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	subject := r.PathValue("subject")
	id, err := m.rdb.Do(r.Context(), m.rdb.B().Xadd().Key(subject).Id("*").FieldValue().
		FieldValue("_payload", rueidis.BinaryString(body)).FieldValue("h:content-type", r.Header.Get("Content-Type")).Build()).ToString()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "subject": subject})
}

func (m *minimal) put(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Subject     string `json:"subject"`
		URL         string `json:"url"`
		MaxInFlight int    `json:"max_in_flight"`
		Start       string `json:"start"`
		Paused      bool   `json:"paused"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Subject == "" || req.URL == "" {
		http.Error(w, "need subject and url", http.StatusBadRequest)
		return
	}
	name := r.PathValue("name")
	s := &minSub{subject: req.Subject, url: req.URL, group: "minimal:" + name, n: max(req.MaxInFlight, 1),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.paused.Store(req.Paused)
	m.mu.Lock()
	defer m.mu.Unlock()
	status := http.StatusCreated
	if old := m.subs[name]; old != nil {
		old.stop()
		<-old.done
		status = http.StatusOK
	}
	start := "$"
	if req.Start == "beginning" {
		start = "0"
	}
	err := m.rdb.Do(r.Context(), m.rdb.B().XgroupCreate().Key(s.subject).Group(s.group).Id(start).Mkstream().Build()).Error()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		delete(m.subs, name)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	m.subs[name] = s
	go m.run(ctx, s)
	w.WriteHeader(status)
}

func (m *minimal) setPaused(w http.ResponseWriter, r *http.Request, paused bool) {
	m.mu.Lock()
	s := m.subs[r.PathValue("name")]
	m.mu.Unlock()
	if s == nil {
		http.NotFound(w, r)
		return
	}
	s.paused.Store(paused)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	w.WriteHeader(http.StatusNoContent)
}

func (m *minimal) delete(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.subs[r.PathValue("name")]
	if s == nil {
		http.NotFound(w, r)
		return
	}
	delete(m.subs, r.PathValue("name"))
	s.stop()
	<-s.done
	_ = m.rdb.Do(r.Context(), m.rdb.B().XgroupDestroy().Key(s.subject).Group(s.group).Build()).Error()
	w.WriteHeader(http.StatusNoContent)
}

func (m *minimal) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.subs {
		s.stop()
		<-s.done
	}
}

// run is one subscription: a reader hands entries to s.n push workers.
func (m *minimal) run(ctx context.Context, s *minSub) {
	defer close(s.done)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: s.n}}
	defer client.CloseIdleConnections()
	jobs := make(chan rueidis.XRangeEntry, s.n)
	var wg sync.WaitGroup
	for range s.n {
		wg.Go(func() {
			for e := range jobs {
				if push(ctx, client, s.url, e) {
					_ = m.rdb.Do(ctx, m.rdb.B().Xack().Key(s.subject).Group(s.group).Id(e.ID).Build()).Error()
				}
			}
		})
	}
	defer wg.Wait()
	defer close(jobs)
	for ctx.Err() == nil {
		if s.paused.Load() {
			select {
			case <-ctx.Done():
			case <-s.wake:
			}
			continue
		}
		streams, err := m.rdb.Do(ctx, m.rdb.B().Xreadgroup().Group(s.group, "c").Count(int64(s.n)).Block(1000).
			Streams().Key(s.subject).Id(">").Build()).AsXRead()
		if err != nil {
			if !rueidis.IsRedisNil(err) && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		for _, e := range streams[s.subject] {
			select {
			case jobs <- e:
			case <-ctx.Done():
				return
			}
		}
	}
}

func push(ctx context.Context, c *http.Client, url string, e rueidis.XRangeEntry) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(e.FieldValues["_payload"]))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", e.FieldValues["h:content-type"])
	req.Header.Set("Webhook-Id", e.ID)
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode/100 == 2
}

// minimalPprof is -minimal-pprof: where the minimal reference serves its profiles.
var minimalPprof string

// checkLoopback refuses a listen address that is not on the loopback interface: the
// profiling listeners of the benchmark never face the network.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port on 127.0.0.1 or ::1: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: want a loopback address (127.0.0.1 or ::1)", addr)
	}
	return nil
}
