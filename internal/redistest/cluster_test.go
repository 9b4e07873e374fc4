package redistest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func TestCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := redistest.StartCluster(t, 3)
	t.Logf("3-master cluster ready in %v", time.Since(start))
	if len(c.Addrs) != 3 || len(c.Nodes) != 3 {
		t.Fatalf("Addrs %v, %d nodes; want 3", c.Addrs, len(c.Nodes))
	}
	var urls []string
	for _, a := range c.Addrs {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Fatalf("addr %q not on 127.0.0.1", a)
		}
		urls = append(urls, "redis://"+a)
	}
	if c.URL != strings.Join(urls, ",") {
		t.Fatalf("URL = %q, want %q", c.URL, strings.Join(urls, ","))
	}

	cl := c.Client(t)
	ctx := context.Background()
	perNode := map[string]int64{}
	for i := range 50 {
		key := fmt.Sprintf("key:%d", i)
		if err := cl.Do(ctx, cl.B().Set().Key(key).Value("v").Build()).Error(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		perNode[c.NodeForKey(t, key)]++
	}
	if len(perNode) != 3 {
		t.Fatalf("50 keys landed on %d nodes (%v), want all 3", len(perNode), perNode)
	}
	var total int64
	for _, a := range c.Addrs {
		n := c.KeysOnNode(t, a)
		if n != perNode[a] {
			t.Errorf("KeysOnNode(%s) = %d, NodeForKey counted %d", a, n, perNode[a])
		}
		total += n
	}
	if total != 50 {
		t.Fatalf("%d keys in the cluster, want 50", total)
	}
	// The owning node has the key; another one redirects.
	owner := c.NodeForKey(t, "key:0")
	if got, err := c.Node(t, owner).Do(t, "GET", "key:0").ToString(); err != nil || got != "v" {
		t.Fatalf("GET key:0 on its owner %s = %q, %v", owner, got, err)
	}
	for _, a := range c.Addrs {
		if a != owner {
			if err := c.Node(t, a).Do(t, "GET", "key:0").Error(); err == nil || !strings.Contains(err.Error(), "MOVED") {
				t.Fatalf("GET key:0 on non-owner %s: %v, want MOVED", a, err)
			}
			break
		}
	}

	c.Kill(t)
	// rueidis retries a cluster command until its context ends.
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := cl.Do(short, cl.B().Get().Key("key:0").Build()).Error(); err == nil {
		t.Fatal("GET succeeded on a killed cluster")
	}
}

func TestClusterSmall(t *testing.T) {
	for _, masters := range []int{1, 2} {
		t.Run(fmt.Sprint(masters), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			c := redistest.StartCluster(t, masters)
			t.Logf("%d-master cluster ready in %v", masters, time.Since(start))
			cl := c.Client(t)
			ctx := context.Background()
			for i := range 20 {
				key := fmt.Sprintf("k%d", i)
				if err := cl.Do(ctx, cl.B().Set().Key(key).Value("v").Build()).Error(); err != nil {
					t.Fatalf("SET %s: %v", key, err)
				}
			}
			var total int64
			for _, a := range c.Addrs {
				total += c.KeysOnNode(t, a)
			}
			if total != 20 {
				t.Fatalf("%d keys, want 20", total)
			}
		})
	}
}

func TestClusterNodeRestartRejoins(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3)
	cl := c.Client(t)
	ctx := context.Background()
	n := c.Nodes[1]
	n.Kill(t)
	n.Restart(t) // keeps nodes.conf, so it comes back with its slots
	redistest.Eventually(t, 20*time.Second, func() bool {
		info, err := n.Do(t, "CLUSTER", "INFO").ToString()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	}, "restarted node did not rejoin")
	redistest.Eventually(t, 20*time.Second, func() bool {
		for i := range 20 {
			key := fmt.Sprintf("k%d", i)
			if cl.Do(ctx, cl.B().Set().Key(key).Value("v").Build()).Error() != nil {
				return false
			}
		}
		return true
	}, "cluster client did not recover after a node restart")
}
