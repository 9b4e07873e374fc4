package broker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/redis/rueidis"
)

// changes subscribes to ChangesChannel on a connection of its own and returns the messages
// received so far, once the subscription is in place (PUBSUB NUMSUB).
func (e *scriptEnv) changes(t *testing.T) func() []string {
	t.Helper()
	c := e.rs.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Receive(ctx, c.B().Subscribe().Channel(ChangesChannel).Build(), func(m rueidis.PubSubMessage) {
			mu.Lock()
			got = append(got, m.Message)
			mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	redistest.Eventually(t, 5*time.Second, func() bool {
		arr, err := e.rs.Do(t, "PUBSUB", "NUMSUB", ChangesChannel).ToArray()
		if err != nil || len(arr) != 2 {
			return false
		}
		n, _ := arr[1].AsInt64()
		return n == 1
	}, "the changes subscriber did not subscribe")
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

func TestRegistryScripts(t *testing.T) {
	e := newScriptEnv(t)
	received := e.changes(t)
	sub := func(name, url string) *core.Subscription {
		s := testSub(name, "orders")
		s.URL = url
		return s
	}
	var announced []string // versions that must have been published, in order
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a new subscription: not replaced, version 1", func(t *testing.T) {
			replaced, v, err := e.b.PutSubscription(e.ctx, sub("a", "https://one.example/"))
			if err != nil || replaced || v != 1 {
				t.Fatalf("put: replaced %v version %d %v", replaced, v, err)
			}
			announced = append(announced, "1:a")
		}},
		{"the same name again: replaced, version 2, the new record stored", func(t *testing.T) {
			replaced, v, err := e.b.PutSubscription(e.ctx, sub("a", "https://two.example/"))
			if err != nil || !replaced || v != 2 {
				t.Fatalf("put: replaced %v version %d %v", replaced, v, err)
			}
			announced = append(announced, "2:a")
			got, err := e.b.GetSubscription(e.ctx, "a")
			if err != nil || got.URL != "https://two.example/" {
				t.Fatalf("stored %+v %v", got, err)
			}
		}},
		{"another name: version 3", func(t *testing.T) {
			replaced, v, err := e.b.PutSubscription(e.ctx, sub("b", "https://b.example/"))
			if err != nil || replaced || v != 3 {
				t.Fatalf("put: replaced %v version %d %v", replaced, v, err)
			}
			announced = append(announced, "3:b")
		}},
		{"delete: version 4, gone", func(t *testing.T) {
			v, err := e.b.DeleteSubscription(e.ctx, "a")
			if err != nil || v != 4 {
				t.Fatalf("delete: version %d %v", v, err)
			}
			announced = append(announced, "4:a")
			if _, err := e.b.GetSubscription(e.ctx, "a"); !errors.Is(err, core.ErrNotFound) {
				t.Fatalf("get after delete: %v", err)
			}
			subs, v, err := e.b.ListSubscriptions(e.ctx)
			if err != nil || v != 4 || len(subs) != 1 || subs[0].Name != "b" {
				t.Fatalf("list: %v version %d %v", subs, v, err)
			}
		}},
		{"deleting it again: not found, no version bump, nothing announced", func(t *testing.T) {
			if _, err := e.b.DeleteSubscription(e.ctx, "a"); !errors.Is(err, core.ErrNotFound) {
				t.Fatalf("delete of a missing name: %v, want core.ErrNotFound", err)
			}
			if _, err := e.b.DeleteSubscription(e.ctx, "never"); !errors.Is(err, core.ErrNotFound) {
				t.Fatalf("delete of a name never stored: %v, want core.ErrNotFound", err)
			}
			if v, err := e.b.SubscriptionsVersion(e.ctx); err != nil || v != 4 {
				t.Fatalf("version %d %v, want 4", v, err)
			}
		}},
		{"created again: not replaced, version 5", func(t *testing.T) {
			replaced, v, err := e.b.PutSubscription(e.ctx, sub("a", "https://three.example/"))
			if err != nil || replaced || v != 5 {
				t.Fatalf("put: replaced %v version %d %v", replaced, v, err)
			}
			announced = append(announced, "5:a")
		}},
		{"every change was announced once, in order, with its version", func(t *testing.T) {
			redistest.Eventually(t, 5*time.Second, func() bool { return len(received()) >= len(announced) },
				"announced %v, received %v", announced, received())
			// Each announcement is "<version>:<name>". Pub/Sub keeps order on one connection: a message from a delete that changed
			// nothing would sit before the last one.
			if got := received(); fmt.Sprint(got) != fmt.Sprint(announced) {
				t.Fatalf("received %v, want %v", got, announced)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			return
		}
	}
}

func TestRegistryScriptsConcurrent(t *testing.T) {
	e := newScriptEnv(t)
	received := e.changes(t)
	const n = 20
	versions := make([]int64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, v, err := e.b.PutSubscription(e.ctx, testSub(fmt.Sprintf("s%02d", i), "orders"))
			if err != nil {
				t.Error(err)
			}
			versions[i] = v
		}()
	}
	wg.Wait()
	sort.Slice(versions, func(i, j int) bool { return versions[i] < versions[j] })
	for i, v := range versions {
		if v != int64(i+1) {
			t.Fatalf("versions %v: want each of 1..%d once", versions, n)
		}
	}
	if v, err := e.b.SubscriptionsVersion(e.ctx); err != nil || v != n {
		t.Fatalf("version %d %v", v, err)
	}
	redistest.Eventually(t, 5*time.Second, func() bool { return len(received()) == n }, "received %v", received())
}
