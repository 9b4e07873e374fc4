package redistest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

const (
	// clusterSlots is the number of hash slots in a Redis Cluster.
	clusterSlots = 16384
	// clusterTimeout bounds creating a cluster and waiting for it to be ok.
	clusterTimeout = 60 * time.Second
)

// Cluster is a Redis Cluster of masters only (no replicas), each node a
// Server started with cluster-enabled on 127.0.0.1. Its nodes are stopped when
// the test that started it ends.
type Cluster struct {
	Addrs []string // "127.0.0.1:port" of each master, in Nodes order
	// URL is the comma-separated list of redis:// URLs of all nodes, the form
	// the bridge takes to seed a cluster client.
	URL   string
	Nodes []*Server // one per master; Kill or Restart them one by one
}

// StartCluster starts masters redis-server processes in cluster mode (each on
// a free port whose bus port, port+10000, is free too), joins them with
// "redis-cli --cluster create" (from the directory of redis-server, or PATH),
// slots split evenly, and waits until every node reports cluster_state:ok and
// knows all the others. With fewer than 3 masters, which redis-cli refuses,
// the slots are assigned with CLUSTER ADDSLOTSRANGE and CLUSTER MEET instead.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < 1 {
		t.Fatalf("redistest: StartCluster needs at least 1 master, got %d", masters)
	}
	c := &Cluster{}
	urls := make([]string, 0, masters)
	for range masters {
		s := start(t, Options{}, mode{cluster: true})
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
		urls = append(urls, s.URL)
	}
	c.URL = strings.Join(urls, ",")
	if masters >= 3 {
		c.createWithCLI(t)
	} else {
		c.createByHand(t)
	}
	c.waitOK(t)
	return c
}

func (c *Cluster) createWithCLI(t testing.TB) {
	t.Helper()
	cli, err := cliBinary()
	if err != nil {
		t.Fatalf("redistest: redis-cli not found (it comes with redis-server; Debian: apt-get install redis-tools): %v", err)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.SysProcAttr = sysProcAttr()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
}

func (c *Cluster) createByHand(t testing.TB) {
	t.Helper()
	n := len(c.Nodes)
	for i, s := range c.Nodes {
		first, last := i*clusterSlots/n, (i+1)*clusterSlots/n-1
		if err := s.Do(t, "CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(first), strconv.Itoa(last)).Error(); err != nil {
			t.Fatalf("redistest: CLUSTER ADDSLOTSRANGE on %s: %v", s.Addr, err)
		}
		// Distinct epochs, as redis-cli sets them, so no collision must be resolved.
		if err := s.Do(t, "CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1)).Error(); err != nil {
			t.Fatalf("redistest: CLUSTER SET-CONFIG-EPOCH on %s: %v", s.Addr, err)
		}
	}
	for _, s := range c.Nodes[1:] {
		if err := s.Do(t, "CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(c.Nodes[0].port)).Error(); err != nil {
			t.Fatalf("redistest: CLUSTER MEET from %s: %v", s.Addr, err)
		}
	}
}

// waitOK waits until every node reports cluster_state:ok, all slots ok and
// every master known.
func (c *Cluster) waitOK(t testing.TB) {
	t.Helper()
	want := []string{
		"cluster_state:ok",
		"cluster_slots_ok:" + strconv.Itoa(clusterSlots),
		"cluster_known_nodes:" + strconv.Itoa(len(c.Nodes)),
	}
	waitUntil(t, clusterTimeout, "cluster not ok", func() (bool, string) {
		for _, s := range c.Nodes {
			info, err := s.Do(t, "CLUSTER", "INFO").ToString()
			if err != nil {
				return false, s.Addr + ": " + err.Error()
			}
			for _, w := range want {
				if !strings.Contains(info, w+"\r\n") {
					return false, "CLUSTER INFO from " + s.Addr + ":\n" + info
				}
			}
		}
		return true, ""
	})
}

// Client returns a new cluster client seeded with every node, with
// client-side caching disabled. It is closed when t ends.
func (c *Cluster) Client(t testing.TB) rueidis.Client {
	t.Helper()
	cl, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  c.Addrs,
		DisableCache: true,
	})
	if err != nil {
		t.Fatalf("redistest: connect to cluster %s: %v", c.URL, err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// NodeForKey returns the address of the master that owns key's hash slot,
// as the first running node sees it (CLUSTER KEYSLOT, CLUSTER SLOTS).
func (c *Cluster) NodeForKey(t testing.TB, key string) string {
	t.Helper()
	s := c.running(t)
	slot, err := s.Do(t, "CLUSTER", "KEYSLOT", key).AsInt64()
	if err != nil {
		t.Fatalf("redistest: CLUSTER KEYSLOT on %s: %v", s.Addr, err)
	}
	ranges, err := s.Do(t, "CLUSTER", "SLOTS").ToArray()
	if err != nil {
		t.Fatalf("redistest: CLUSTER SLOTS on %s: %v", s.Addr, err)
	}
	for _, r := range ranges {
		entry, err := r.ToArray()
		if err != nil || len(entry) < 3 {
			t.Fatalf("redistest: CLUSTER SLOTS on %s: bad entry %v (%v)", s.Addr, r, err)
		}
		first, err1 := entry[0].AsInt64()
		last, err2 := entry[1].AsInt64()
		master, err3 := entry[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(master) < 2 {
			t.Fatalf("redistest: CLUSTER SLOTS on %s: bad entry %v", s.Addr, r)
		}
		if slot < first || slot > last {
			continue
		}
		ip, err1 := master[0].ToString()
		port, err2 := master[1].AsInt64()
		if err1 != nil || err2 != nil {
			t.Fatalf("redistest: CLUSTER SLOTS on %s: bad master %v", s.Addr, entry[2])
		}
		if ip == "" {
			ip = "127.0.0.1" // an unknown endpoint means "the node you asked"
		}
		return net.JoinHostPort(ip, strconv.FormatInt(port, 10))
	}
	t.Fatalf("redistest: slot %d of %q is not served according to %s", slot, key, s.Addr)
	return ""
}

// KeysOnNode returns the number of keys stored on the node at addr (DBSIZE).
func (c *Cluster) KeysOnNode(t testing.TB, addr string) int64 {
	t.Helper()
	return c.Node(t, addr).DBSize(t)
}

// Node returns the node listening on addr.
func (c *Cluster) Node(t testing.TB, addr string) *Server {
	t.Helper()
	for _, s := range c.Nodes {
		if s.Addr == addr {
			return s
		}
	}
	t.Fatalf("redistest: no cluster node at %s (nodes: %s)", addr, strings.Join(c.Addrs, ", "))
	return nil
}

// Kill stops every node with SIGKILL. Nodes can be started again with their
// own Restart; they keep nodes.conf and rejoin the cluster.
func (c *Cluster) Kill(t testing.TB) {
	t.Helper()
	for _, s := range c.Nodes {
		s.Kill(t)
	}
}

// running returns the first node that is running.
func (c *Cluster) running(t testing.TB) *Server {
	t.Helper()
	for _, s := range c.Nodes {
		s.mu.Lock()
		up := s.proc != nil
		s.mu.Unlock()
		if up {
			return s
		}
	}
	t.Fatal("redistest: no cluster node is running")
	return nil
}

// cliBinary returns redis-cli from the directory of redis-server, else PATH.
func cliBinary() (string, error) {
	if bin, err := Binary(); err == nil {
		cli := filepath.Join(filepath.Dir(bin), "redis-cli")
		if fi, err := os.Stat(cli); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return cli, nil
		}
	}
	return exec.LookPath("redis-cli")
}
