package delivery_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/broker"
	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/delivery"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/bridge-dev/bridge/internal/webhook"
	"go.uber.org/goleak"
)

var _ delivery.Broker = (*broker.Broker)(nil)

func TestVerdictTable(t *testing.T) {
	cases := map[int]delivery.Outcome{
		0: delivery.Requeue, 200: delivery.Ack, 201: delivery.Ack, 204: delivery.Ack, 299: delivery.Ack,
		301: delivery.Drop, 302: delivery.Drop, 304: delivery.Drop, 307: delivery.Drop,
		400: delivery.Drop, 401: delivery.Drop, 403: delivery.Drop, 404: delivery.Drop, 409: delivery.Drop, 422: delivery.Drop,
		408: delivery.Requeue, 425: delivery.Requeue, 429: delivery.Requeue,
		410: delivery.Gone,
		500: delivery.Requeue, 502: delivery.Requeue, 503: delivery.Requeue, 504: delivery.Requeue, 599: delivery.Requeue,
		100: delivery.Requeue, 101: delivery.Requeue, 103: delivery.Requeue,
	}
	for status, want := range cases {
		if got := delivery.Verdict(status); got != want {
			t.Errorf("Verdict(%d) = %s, want %s", status, got, want)
		}
	}
}

// The engine starts, delivers on every kind of subscription (stream, ordered stream,
// reliable and simple list, Pub/Sub), and after Shutdown leaves no goroutine behind: lease
// keepers, heartbeats and Pub/Sub receivers included.
func TestEngineDeliversAndStopsCleanly(t *testing.T) {
	// Registered first, so it runs after every other cleanup (the Redis server's included).
	// fasthttp's pool cleaners are the exception: they sleep, and end by themselves once
	// the client has had no connection for its idle period (at most 100 s).
	t.Cleanup(func() {
		goleak.VerifyNone(t, goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*Client).mCleaner"),
			goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"))
	})
	rs := redistest.Start(t, redistest.Options{})
	client := rs.Client(t)
	b := broker.New(client)
	var got atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		got.Add(1)
		w.WriteHeader(204)
	}))
	defer recv.Close()
	ctx := context.Background()
	kinds := map[string]core.SubscriptionInput{
		"stream":  {Subject: "leak", URL: recv.URL},
		"ordered": {Subject: "leak-ordered", URL: recv.URL, Ordered: true},
		"list":    {Subject: "leak-list", URL: recv.URL, Transport: "list"},
		"simple":  {Subject: "leak-simple", URL: recv.URL, Transport: "list", ListMode: "simple"},
		"pubsub":  {Subject: "leak-pubsub", URL: recv.URL, Transport: "pubsub"},
	}
	for name, in := range kinds {
		register(t, b, name, in)
	}
	e := delivery.New(b, delivery.Options{RegistryPoll: 50 * time.Millisecond, PollInterval: 100 * time.Millisecond})
	e.Start()
	time.Sleep(300 * time.Millisecond) // Pub/Sub subscribed
	for range 20 {
		for _, subject := range []string{"leak", "leak-ordered"} {
			if _, err := b.Publish(ctx, subject, []byte("x"), map[string]string{"redis-partition-key": "k"}); err != nil {
				t.Fatal(err)
			}
		}
		for _, subject := range []string{"leak-list", "leak-simple"} {
			if _, err := b.PublishList(ctx, subject, []byte("x"), nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := b.PublishPubSub(ctx, "leak-pubsub", []byte("x"), nil, false); err != nil {
			t.Fatal(err)
		}
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return got.Load() == 100 }, "delivered %d of 100", got.Load())
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Shutdown(sctx); err != nil {
		t.Fatal("second Shutdown:", err)
	}
	for name := range kinds {
		if st := e.LocalStats(name); st.Delivered != 20 || st.InFlight != 0 {
			t.Fatalf("%s: stats %+v", name, st)
		}
	}
	client.Close()
	recv.Close()
}

// A worker times its pushes with one context and timer while none runs out of time. A push
// that does must fail as a timeout (not as a canceled request), and the same worker's next
// pushes must get a fresh clock rather than the expired one.
func TestPushTimeoutKeepsWorkerUsable(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	b := broker.New(rs.Client(t), broker.WithAttemptLog(100))
	var calls, ok atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			select { // outlive the 200ms timeout once
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
			return
		}
		ok.Add(1)
		w.WriteHeader(204)
	}))
	defer recv.Close()
	ctx := context.Background()
	timeout, vis, one := core.Duration(200*time.Millisecond), core.Duration(2*time.Second), 1
	backoff := core.Duration(10 * time.Millisecond)
	in := core.SubscriptionInput{Subject: "slow", URL: recv.URL, Timeout: &timeout, VisibilityTimeout: &vis, MaxInFlight: &one,
		Retry: &core.RetryInput{MinBackoff: &backoff, MaxBackoff: &backoff}}
	s := register(t, b, "slow", in)
	e := delivery.New(b, delivery.Options{RegistryPoll: 50 * time.Millisecond, PollInterval: 50 * time.Millisecond, AttemptLog: true})
	e.Start()
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = e.Shutdown(sctx)
	}()
	var ids []string
	for range 5 {
		id, err := b.Publish(ctx, s.Subject, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return ok.Load() == 5 }, "delivered %d of 5", ok.Load())
	var timeouts int
	for _, id := range ids {
		atts, err := b.MessageAttempts(ctx, s, id, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range atts {
			if a.Outcome != core.OutcomeAck {
				if a.Error != "timeout after 200ms" {
					t.Errorf("failed attempt of %s: %q, want a timeout", id, a.Error)
				}
				timeouts++
			}
		}
	}
	if timeouts != 1 || calls.Load() != 6 {
		t.Fatalf("%d timed-out attempts in %d calls; want 1 in 6", timeouts, calls.Load())
	}
}

// register stores subscription name as the API would: with a secret, its consumer group
// (stream transport), its live marker and its registry entry.
func register(t *testing.T, b *broker.Broker, name string, in core.SubscriptionInput) *core.Subscription {
	t.Helper()
	ctx := context.Background()
	in.Secret, _ = webhook.NewSecret()
	s, err := in.Build(name)
	if err != nil {
		t.Fatal(err)
	}
	if s.Transport == core.TransportStream {
		if _, err := b.EnsureGroup(ctx, s.Subject, s.Name, s.Start); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.MarkLive(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.PutSubscription(ctx, s); err != nil {
		t.Fatal(err)
	}
	return s
}
