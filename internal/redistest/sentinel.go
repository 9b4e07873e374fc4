package redistest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

const (
	// sentinelMaster is the name the sentinel monitors the master under.
	sentinelMaster = "mymaster"
	// sentinelTimeout bounds each wait for replication, discovery or failover.
	sentinelTimeout = 30 * time.Second
)

// Sentinel is a master, one replica and one sentinel monitoring them (quorum
// 1), all on 127.0.0.1. They are stopped when the test that started them ends.
type Sentinel struct {
	MasterName   string // "mymaster"
	SentinelAddr string // "127.0.0.1:port" of the sentinel
	// URL is "redis://" + SentinelAddr: what the bridge takes as
	// BRIDGE_REDIS_URL, with BRIDGE_REDIS_SENTINEL_MASTER=MasterName.
	URL string
	// Nodes are the data servers: Nodes[0] starts as the master, Nodes[1] as
	// its replica. Failover swaps the roles, not the slice; use MasterAddr or
	// Master. Restarting a node started as replica makes it a replica of
	// Nodes[0] again (--replicaof is on its command line).
	Nodes []*Server
	// Sentinel is the sentinel process (redis-server --sentinel).
	Sentinel *Server
}

// StartSentinel starts a master, a replica of it, and a sentinel whose
// generated sentinel.conf monitors the master with quorum 1,
// down-after-milliseconds 1000 and failover-timeout 5000. It returns once the
// replica's link to the master is up and the sentinel has discovered the
// replica as a healthy candidate for failover.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	// Without the default 5 s delay before a diskless full sync, a replica
	// (and a demoted master after Failover) is in sync in milliseconds.
	noDelay := []string{"--repl-diskless-sync-delay", "0"}
	master := Start(t, Options{Args: noDelay})
	replica := Start(t, Options{Args: append(noDelay, "--replicaof", "127.0.0.1", strconv.Itoa(master.port))})
	waitReplicating(t, replica, master)

	conf := fmt.Sprintf(`sentinel resolve-hostnames no
sentinel monitor %[1]s 127.0.0.1 %[2]d 1
sentinel down-after-milliseconds %[1]s 1000
sentinel failover-timeout %[1]s 5000
`, sentinelMaster, master.port)
	sent := start(t, Options{}, mode{sentinelConf: conf})
	s := &Sentinel{
		MasterName:   sentinelMaster,
		SentinelAddr: sent.Addr,
		URL:          sent.URL,
		Nodes:        []*Server{master, replica},
		Sentinel:     sent,
	}
	s.waitHealthy(t, master.Addr)
	return s
}

// waitReplicating waits until replica reports master_link_status:up with
// master as its master.
func waitReplicating(t testing.TB, replica, master *Server) {
	t.Helper()
	waitUntil(t, sentinelTimeout, "replica "+replica.Addr+" not replicating from "+master.Addr, func() (bool, string) {
		info, err := replica.Do(t, "INFO", "replication").ToString()
		if err != nil {
			return false, err.Error()
		}
		ok := strings.Contains(info, "master_port:"+strconv.Itoa(master.port)+"\r\n") &&
			strings.Contains(info, "master_link_status:up\r\n")
		return ok, info
	})
}

// waitHealthy waits until the sentinel reports master as the master and knows
// a replica that is connected and linked to it, i.e. one it can promote.
func (s *Sentinel) waitHealthy(t testing.TB, master string) {
	t.Helper()
	waitUntil(t, sentinelTimeout, "sentinel not ready for failover", func() (bool, string) {
		addr, err := s.masterAddr(t)
		if err != nil || addr != master {
			return false, fmt.Sprintf("master is %q (%v), want %s", addr, err, master)
		}
		m, err := s.Sentinel.Do(t, "SENTINEL", "MASTER", s.MasterName).AsStrMap()
		if err != nil || m["flags"] != "master" {
			return false, fmt.Sprintf("SENTINEL MASTER: %v, %v", m, err)
		}
		replicas, err := s.Sentinel.Do(t, "SENTINEL", "REPLICAS", s.MasterName).ToArray()
		if err != nil {
			return false, "SENTINEL REPLICAS: " + err.Error()
		}
		var seen []string
		for _, r := range replicas {
			info, err := r.AsStrMap()
			if err != nil {
				return false, "SENTINEL REPLICAS: " + err.Error()
			}
			if info["flags"] == "slave" && info["master-link-status"] == "ok" &&
				net.JoinHostPort(info["master-host"], info["master-port"]) == master {
				return true, ""
			}
			seen = append(seen, fmt.Sprintf("%s:%s flags=%s link=%s", info["ip"], info["port"], info["flags"], info["master-link-status"]))
		}
		return false, "no healthy replica; replicas: " + strings.Join(seen, "; ")
	})
}

// MasterAddr returns the master's address as the sentinel reports it
// (SENTINEL GET-MASTER-ADDR-BY-NAME).
func (s *Sentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	addr, err := s.masterAddr(t)
	if err != nil {
		t.Fatalf("redistest: SENTINEL GET-MASTER-ADDR-BY-NAME on %s: %v", s.SentinelAddr, err)
	}
	return addr
}

func (s *Sentinel) masterAddr(t testing.TB) (string, error) {
	t.Helper()
	parts, err := s.Sentinel.Do(t, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.MasterName).AsStrSlice()
	if err != nil {
		return "", err
	}
	if len(parts) != 2 {
		return "", fmt.Errorf("reply %q is not [host port]", parts)
	}
	return net.JoinHostPort(parts[0], parts[1]), nil
}

// Master returns the node the sentinel reports as master.
func (s *Sentinel) Master(t testing.TB) *Server {
	t.Helper()
	return s.node(t, s.MasterAddr(t))
}

func (s *Sentinel) node(t testing.TB, addr string) *Server {
	t.Helper()
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	t.Fatalf("redistest: no node at %s", addr)
	return nil
}

// Failover makes the sentinel promote the replica (SENTINEL FAILOVER),
// retrying while the sentinel has no promotable replica yet or a failover is
// still in progress, then waits until the sentinel reports a new master
// address and that server answers ROLE as master, and returns that address.
// If the old master is running, Failover then makes it a replica of the new
// one (REPLICAOF, as the sentinel itself would 10-20 s later) and waits until
// it is in sync, so a following Failover can switch back. It takes about 1 s.
func (s *Sentinel) Failover(t testing.TB) string {
	t.Helper()
	old := s.MasterAddr(t)
	deadline := time.Now().Add(sentinelTimeout)
	for {
		err := s.Sentinel.Do(t, "SENTINEL", "FAILOVER", s.MasterName).Error()
		if err == nil {
			break
		}
		busy := strings.Contains(err.Error(), "NOGOODSLAVE") || strings.Contains(err.Error(), "INPROG")
		if !busy || time.Now().After(deadline) {
			t.Fatalf("redistest: SENTINEL FAILOVER %s on %s: %v", s.MasterName, s.SentinelAddr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var promoted string
	waitUntil(t, sentinelTimeout, "failover away from "+old+" not done", func() (bool, string) {
		addr, err := s.masterAddr(t)
		if err != nil {
			return false, err.Error()
		}
		if addr == old {
			return false, "sentinel still reports " + old
		}
		role, err := s.node(t, addr).Do(t, "ROLE").ToArray()
		if err != nil || len(role) == 0 {
			return false, fmt.Sprintf("ROLE on %s: %v", addr, err)
		}
		if r, _ := role[0].ToString(); r != "master" {
			return false, addr + " has ROLE " + r
		}
		promoted = addr
		return true, ""
	})
	// The sentinel demotes a running old master only some 10-20 s later
	// (it waits for its config to settle); do what it will do right away, so
	// that the old master is a replica in sync with the new one on return.
	oldNode := s.node(t, old)
	oldNode.mu.Lock()
	running := oldNode.proc != nil
	oldNode.mu.Unlock()
	if running {
		newNode := s.node(t, promoted)
		if err := oldNode.Do(t, "REPLICAOF", "127.0.0.1", strconv.Itoa(newNode.port)).Error(); err != nil {
			t.Fatalf("redistest: REPLICAOF on the old master %s: %v", old, err)
		}
		waitReplicating(t, oldNode, newNode)
	}
	return promoted
}

// Client returns a new sentinel-aware client for the master set, with
// client-side caching disabled. It is closed when t ends.
//
// Like the bridge's own client, it also asks the sentinel for the master
// every second: rueidis otherwise follows a failover only on the
// +switch-master event, and a client that misses it stays on the demoted
// master, whose every write fails with READONLY.
func (s *Sentinel) Client(t testing.TB) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{s.SentinelAddr},
		DisableCache: true,
		Sentinel: rueidis.SentinelOption{
			MasterSet:               s.MasterName,
			TopologyRefreshInterval: time.Second,
		},
	})
	if err != nil {
		t.Fatalf("redistest: connect through sentinel %s: %v", s.SentinelAddr, err)
	}
	t.Cleanup(c.Close)
	return c
}

// Kill stops the sentinel and both data nodes with SIGKILL.
func (s *Sentinel) Kill(t testing.TB) {
	t.Helper()
	s.Sentinel.Kill(t)
	for _, n := range s.Nodes {
		n.Kill(t)
	}
}
