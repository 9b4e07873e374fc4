package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

// subjectsOnEveryNode picks one subject per master of the cluster.
func subjectsOnEveryNode(t *testing.T, c *redistest.Cluster, prefix string) []string {
	t.Helper()
	seen := map[string]string{}
	for i := 0; len(seen) < len(c.Addrs) && i < 1000; i++ {
		s := fmt.Sprintf("%s.%d", prefix, i)
		node := c.NodeForKey(t, s)
		if _, ok := seen[node]; !ok {
			seen[node] = s
		}
	}
	if len(seen) != len(c.Addrs) {
		t.Fatalf("subjects cover %d of %d masters", len(seen), len(c.Addrs))
	}
	out := make([]string, 0, len(seen))
	for _, s := range seen {
		out = append(out, s)
	}
	return out
}

// On a real 3-master Redis Cluster: streams with retries and dead letters, scheduled
// publish, a reliable list and sharded Pub/Sub, with subjects on all three masters.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	br := startBridge(t, "BRIDGE_REDIS_URL="+cl.URL)
	rc := newReceiver(t, func(w http.ResponseWriter, p push, nth int) {
		switch {
		case strings.HasPrefix(string(p.Body), "flaky") && nth == 0:
			w.WriteHeader(503)
		case strings.HasPrefix(string(p.Body), "bad"):
			w.WriteHeader(400)
		default:
			w.WriteHeader(204)
		}
	})
	subjects := subjectsOnEveryNode(t, cl, uniq("cl"))
	for i, subject := range subjects {
		name := "cl" + strconv.Itoa(i)
		rc.setSecret(br.subscribe(name, fastSub(rc.URL, subject, nil)))
		var ids []string
		for j := range 50 {
			_, id := br.publish(subject, []byte(fmt.Sprint("m", j)))
			ids = append(ids, id)
		}
		_, flaky := br.publish(subject, []byte("flaky"))
		br.publish(subject, []byte("bad"))
		code, later := br.publish(subject, []byte("later"), "Bridge-Delay", "1s")
		if code != 202 {
			t.Fatalf("scheduled publish on a cluster: %d", code)
		}
		code, dupID := br.publish(subject, []byte("idem"), "Idempotency-Key", "k1")
		code2, dupID2 := br.publish(subject, []byte("idem"), "Idempotency-Key", "k1")
		if code != 202 || code2 != 202 || dupID != dupID2 {
			t.Fatalf("idempotency on a cluster: %d %d %s %s", code, code2, dupID, dupID2)
		}
		redistest.Eventually(t, 20*time.Second, func() bool {
			for _, id := range append(ids, later, dupID) {
				if len(rc.byID(id)) == 0 {
					return false
				}
			}
			return len(rc.byID(flaky)) == 2 && len(br.deadLetters(name).DeadLetters) == 1
		}, "subject %s on %s: not everything delivered", subject, cl.NodeForKey(t, subject))
		if p := rc.byID(flaky)[1]; p.Count != 2 || !p.Verified {
			t.Fatalf("retry on the cluster: %+v", p)
		}
	}
	// A reliable list and sharded Pub/Sub on the cluster.
	list := subjects[0] + ".jobs"
	br.subscribe("cl-list", fastSub(rc.URL, list, map[string]any{"transport": "list"}))
	shard := subjects[1] + ".events"
	br.subscribe("cl-shard", fastSub(rc.URL, shard, map[string]any{"transport": "pubsub", "pubsub_mode": "sharded"}))
	_, listID := publishTo(t, br, list, "transport=list", "job")
	var psID string
	redistest.Eventually(t, 10*time.Second, func() bool {
		_, out := publishTo(t, br, shard, "transport=pubsub&mode=sharded", "event")
		if out["receivers"] == float64(1) {
			psID, _ = out["id"].(string)
			return true
		}
		return false
	}, "sharded subscription not in place on the cluster")
	redistest.Eventually(t, 10*time.Second, func() bool {
		return len(rc.byID(listID["id"].(string))) == 1 && len(rc.byID(psID)) == 1
	}, "list or sharded Pub/Sub push missing on the cluster")
	for _, addr := range cl.Addrs {
		if n := cl.KeysOnNode(t, addr); n == 0 {
			t.Fatalf("master %s holds no key: subjects did not spread", addr)
		}
	}
}

// A master + replica + sentinel: after SENTINEL FAILOVER mid-stream delivery resumes by
// itself. Redis may lose acknowledged writes in a failover; the test reports how many.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	sn := redistest.StartSentinel(t)
	br := startBridge(t, "BRIDGE_REDIS_URL="+sn.URL, "BRIDGE_REDIS_SENTINEL_MASTER="+sn.MasterName)
	rc := newReceiver(t, nil)
	subject := uniq("failover")
	br.subscribe("fo", fastSub(rc.URL, subject, map[string]any{"timeout": "1s", "visibility_timeout": "2s"}))
	var mu sync.Mutex
	var accepted []string
	refused := 0
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			code, id := br.publish(subject, []byte(strconv.Itoa(i)))
			mu.Lock()
			if code == 202 {
				accepted = append(accepted, id)
			} else {
				refused++
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	newMaster := sn.Failover(t)
	time.Sleep(3 * time.Second)
	close(stop)
	<-done
	mu.Lock()
	ids := append([]string(nil), accepted...)
	mu.Unlock()
	// Delivery resumes: a message published after the failover arrives.
	var after string
	redistest.Eventually(t, 30*time.Second, func() bool {
		code, id := br.publish(subject, []byte("after"))
		if code == 202 {
			after = id
			return true
		}
		return false
	}, "publish does not recover after the failover")
	redistest.Eventually(t, 30*time.Second, func() bool { return len(rc.byID(after)) == 1 }, "delivery did not resume after the failover")
	time.Sleep(2 * time.Second)
	lost := 0
	for _, id := range ids {
		if len(rc.byID(id)) == 0 {
			lost++
		}
	}
	t.Logf("sentinel failover to %s: %d accepted, %d refused during it, %d accepted but never pushed (lost by Redis replication)", newMaster, len(ids), refused, lost)
	if lost > len(ids)/10 {
		t.Fatalf("%d of %d accepted messages lost", lost, len(ids))
	}
}

// TLS with a CA and a client certificate generated by the test.
func TestRedisTLS(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{TLS: true})
	br := startBridge(t, "BRIDGE_REDIS_URL="+rs.URL, "BRIDGE_REDIS_TLS_CA="+rs.TLSFiles.CA,
		"BRIDGE_REDIS_TLS_CERT="+rs.TLSFiles.Cert, "BRIDGE_REDIS_TLS_KEY="+rs.TLSFiles.Key)
	rc := newReceiver(t, nil)
	subject := uniq("tls")
	rc.setSecret(br.subscribe("tls", fastSub(rc.URL, subject, nil)))
	_, id := br.publish(subject, []byte("over tls"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed over TLS")
	// Without the client certificate the server refuses the connection: the bridge does not start ready.
	out, err := runOnce(append(os.Environ(), "BRIDGE_LISTEN="+freeAddr(t), "BRIDGE_REDIS_URL="+rs.URL, "BRIDGE_REDIS_TLS_CERT="+rs.TLSFiles.Cert))
	if err == nil || !strings.Contains(out, "BRIDGE_REDIS_TLS") {
		t.Fatalf("a half TLS configuration started: %v %q", err, out)
	}
}

// The password rotated by ACL while the bridge runs, its connections killed: the bridge
// reconnects with the new password read from BRIDGE_REDIS_PASSWORD_FILE.
func TestPasswordRotationFromFile(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, redistest.Options{})
	rs.SetUser(t, "bridge", "first-password")
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("first-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	br := startBridge(t, "BRIDGE_REDIS_URL="+rs.URL, "BRIDGE_REDIS_USERNAME=bridge", "BRIDGE_REDIS_PASSWORD_FILE="+pwFile)
	rc := newReceiver(t, nil)
	subject := uniq("rotate")
	br.subscribe("rot", fastSub(rc.URL, subject, nil))
	_, id := br.publish(subject, []byte("before"))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(rc.byID(id)) == 1 }, "not pushed")

	rs.SetUser(t, "bridge", "second-password")
	if err := os.WriteFile(pwFile, []byte("second-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := rs.KillClients(t, "bridge"); n == 0 {
		t.Fatal("no bridge connection to kill")
	}
	var after string
	redistest.Eventually(t, 20*time.Second, func() bool {
		code, id := br.publish(subject, []byte("after"))
		after = id
		return code == 202
	}, "publish does not work with the rotated password")
	redistest.Eventually(t, 20*time.Second, func() bool { return len(rc.byID(after)) == 1 }, "delivery does not resume with the rotated password")
	if strings.Contains(br.log.String(), "second-password") || strings.Contains(br.log.String(), "first-password") {
		t.Fatal("a password appears in the log")
	}
}
