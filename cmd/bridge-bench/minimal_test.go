package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

// The minimal implementation must speak the subset of the bridge's API the
// phases use, or the comparison column measures nothing.
func TestMinimalServer(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	m := newMinimal(rdb)
	defer m.close()
	srv := httptest.NewServer(m.handler())
	defer srv.Close()
	a := newAPIClient(srv.URL)
	ctx := context.Background()

	rcv, err := startReceiver(64, 16, false)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.close()
	if status, _, err := a.do(ctx, http.MethodGet, "/readyz", nil); err != nil || status != http.StatusOK {
		t.Fatalf("readyz: %d %v", status, err)
	}
	if err := a.putSubscription(ctx, "s", map[string]any{
		"subject": "subj", "url": rcv.url, "max_in_flight": 4, "timeout": "10s", "start": "beginning", "paused": true,
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		resp, err := http.Post(srv.URL+"/v1/subjects/subj/messages", "application/octet-stream", bytes.NewReader(makeBody(64, uint64(i))))
		if err != nil {
			t.Fatal(err)
		}
		var out struct{ ID, Subject string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || out.ID == "" || out.Subject != "subj" {
			t.Fatalf("publish: HTTP %d %+v", resp.StatusCode, out)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := rcv.pushes.Load(); n != 0 {
		t.Fatalf("%d pushes while paused", n)
	}
	if status, body, err := a.do(ctx, http.MethodPost, "/v1/subscriptions/s/resume", nil); err != nil || status/100 != 2 {
		t.Fatalf("resume: %s", describe(status, body, err))
	}
	if !rcv.waitFor(ctx, 5, 5*time.Second) {
		t.Fatalf("%d of 5 pushed", rcv.distinct())
	}
	if an := rcv.anomalies(); len(an) > 0 {
		t.Fatalf("anomalies: %v", an)
	}
	// Every 2xx is acked (shortly after the push returns).
	deadline := time.Now().Add(5 * time.Second)
	for {
		pending, err := rdb.Do(ctx, rdb.B().Xpending().Key("subj").Group("minimal:s").Build()).ToArray()
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := pending[0].AsInt64(); n == 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("%d messages still pending after their pushes", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status, body, err := a.do(ctx, http.MethodDelete, "/v1/subscriptions/s", nil); err != nil || status != http.StatusNoContent {
		t.Fatalf("delete: %s", describe(status, body, err))
	}
	if groups, err := consumerGroups(mr.Addr(), "subj"); err != nil || len(groups) > 0 {
		t.Fatalf("groups after delete: %v %v", groups, err)
	}
}

func TestCompare(t *testing.T) {
	b := &serverResult{Publish: &publishResult{ReqPerSec: 800}, E2E: &e2eResult{PushesPerSec: 700, P99: 13 * time.Millisecond}, Drain: &drainResult{PushesPerSec: 900}}
	m := &serverResult{Publish: &publishResult{ReqPerSec: 1000}, E2E: &e2eResult{PushesPerSec: 1000, P99: 10 * time.Millisecond}, Drain: &drainResult{PushesPerSec: 1000}}
	want := map[string]bool{"publish req/s": true, "e2e msg/s": false, "drain pushes/s": true, "e2e p99 ms": false}
	got := compare(b, m)
	if len(got) != len(want) {
		t.Fatalf("got %d comparisons, want %d: %+v", len(got), len(want), got)
	}
	for _, c := range got {
		if ok, found := want[c.Metric]; !found || ok != c.OK {
			t.Errorf("%s: ok=%v ratio %.3f, want ok=%v", c.Metric, c.OK, c.Ratio, ok)
		}
	}
	if compare(b, nil) != nil {
		t.Error("compare with one side missing should be empty")
	}
}

// -bridge-env tunes the bridge only: the minimal reference it is compared with must not
// get a GOGC or a BRIDGE_* meant for it. Profiling listeners take loopback addresses only.
func TestServerEnvs(t *testing.T) {
	t.Setenv("BRIDGE_TOKEN", "from-the-shell")
	old := extraBridgeEnv
	extraBridgeEnv = []string{"GOGC=400"}
	defer func() { extraBridgeEnv = old }()
	has := func(env []string, kv string) bool { return slices.Contains(env, kv) }
	b, m := bridgeEnv(map[string]string{"BRIDGE_X": "1"}), serverEnv(nil)
	if !has(b, "GOGC=400") || !has(b, "BRIDGE_X=1") || has(b, "BRIDGE_TOKEN=from-the-shell") {
		t.Errorf("bridge env: %v", b)
	}
	if has(m, "GOGC=400") || has(m, "BRIDGE_TOKEN=from-the-shell") {
		t.Errorf("minimal env: %v", m)
	}
	for addr, ok := range map[string]bool{"127.0.0.1:6062": true, "[::1]:6062": true, "0.0.0.0:6062": false,
		"10.0.0.1:6062": false, "localhost:6062": false, "6062": false} {
		if err := checkLoopback(addr); (err == nil) != ok {
			t.Errorf("checkLoopback(%q) = %v", addr, err)
		}
	}
}
