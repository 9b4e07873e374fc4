package redistest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := redistest.StartSentinel(t)
	t.Logf("sentinel setup ready in %v", time.Since(start))
	if s.MasterName != "mymaster" || s.URL != "redis://"+s.SentinelAddr {
		t.Fatalf("MasterName %q, URL %q, SentinelAddr %q", s.MasterName, s.URL, s.SentinelAddr)
	}
	first, second := s.Nodes[0], s.Nodes[1]
	if got := s.MasterAddr(t); got != first.Addr {
		t.Fatalf("MasterAddr = %s, want %s", got, first.Addr)
	}

	c := s.Client(t)
	ctx := context.Background()
	if err := c.Do(ctx, c.B().Set().Key("k").Value("1").Build()).Error(); err != nil {
		t.Fatalf("SET through sentinel: %v", err)
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		v, err := second.Do(t, "GET", "k").ToString()
		return err == nil && v == "1"
	}, "write did not reach the replica")

	for i, want := range []string{second.Addr, first.Addr} {
		start := time.Now()
		if got := s.Failover(t); got != want {
			t.Fatalf("failover %d promoted %s, want %s", i+1, got, want)
		}
		t.Logf("failover %d took %v", i+1, time.Since(start))
		if got := s.MasterAddr(t); got != want {
			t.Fatalf("MasterAddr after failover %d = %s, want %s", i+1, got, want)
		}
		if s.Master(t).Addr != want {
			t.Fatalf("Master after failover %d is not %s", i+1, want)
		}
		// The sentinel client follows the new master.
		var setErr error
		redistest.Eventually(t, 15*time.Second, func() bool {
			setErr = c.Do(ctx, c.B().Set().Key("k").Value(want).Build()).Error()
			return setErr == nil
		}, "client could not write after failover %d: %v", i+1, lastError{&setErr})
		if v, err := s.Master(t).Do(t, "GET", "k").ToString(); err != nil || v != want {
			t.Fatalf("GET k on new master = %q, %v", v, err)
		}
	}
}

func TestSentinelMasterDown(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	old := s.MasterAddr(t)
	s.Nodes[0].Kill(t)
	// down-after-milliseconds is 1000: the sentinel promotes the replica on its own.
	redistest.Eventually(t, 30*time.Second, func() bool {
		return s.MasterAddr(t) == s.Nodes[1].Addr
	}, "sentinel did not fail over from the killed master %s", old)
	role, err := s.Nodes[1].Do(t, "ROLE").ToArray()
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := role[0].ToString(); r != "master" {
		t.Fatalf("promoted node has ROLE %q", r)
	}
	s.Kill(t)
}

// lastError prints the error its pointer holds when the failure message is
// formatted, not when the message's arguments are.
type lastError struct{ err *error }

func (e lastError) String() string { return fmt.Sprint(*e.err) }
