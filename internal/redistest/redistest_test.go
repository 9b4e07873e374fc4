package redistest_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func TestMain(m *testing.M) {
	// rueidis's cluster client may leave a topology refresh asleep for a few seconds after
	// Close; it ends on its own and holds nothing of the test's.
	// The delay sits in its single-flight helper, seen both ways.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))
}

func TestStartSetGet(t *testing.T) {
	s := redistest.Start(t, redistest.Options{})
	if !strings.HasPrefix(s.Addr, "127.0.0.1:") || s.URL != "redis://"+s.Addr {
		t.Fatalf("Addr %q, URL %q", s.Addr, s.URL)
	}
	c := s.Client(t)
	ctx := context.Background()
	if err := c.Do(ctx, c.B().Set().Key("k").Value("v").Build()).Error(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	got, err := s.Do(t, "GET", "k").ToString()
	if err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v; want v", got, err)
	}
	if n := s.DBSize(t); n != 1 {
		t.Fatalf("DBSize = %d, want 1", n)
	}
	if err := s.Do(t, "NOSUCHCOMMAND").Error(); err == nil {
		t.Fatal("Do of an unknown command returned no error")
	}
	if _, err := os.Stat(s.Dir + "/redis.log"); err != nil {
		t.Fatalf("log: %v", err)
	}
}

func TestRestart(t *testing.T) {
	tests := []struct {
		name     string
		aof      bool
		wantKeys int64
	}{
		{name: "aof keeps data", aof: true, wantKeys: 2},
		{name: "no aof loses data", aof: false, wantKeys: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := redistest.Start(t, redistest.Options{AOF: tt.aof})
			addr := s.Addr
			c := s.Client(t)
			for _, k := range []string{"a", "b"} {
				if err := s.Do(t, "SET", k, "1").Error(); err != nil {
					t.Fatalf("SET %s: %v", k, err)
				}
			}
			s.Kill(t)
			s.Kill(t) // a second Kill is a no-op
			if err := c.Do(context.Background(), c.B().Ping().Build()).Error(); err == nil {
				t.Fatal("PING succeeded on a killed server")
			}
			s.Restart(t)
			if s.Addr != addr {
				t.Fatalf("Addr after Restart = %s, want %s", s.Addr, addr)
			}
			if n := s.DBSize(t); n != tt.wantKeys {
				t.Fatalf("DBSize after restart = %d, want %d", n, tt.wantKeys)
			}
			// Clients from Client reconnect on their own.
			redistest.Eventually(t, 5*time.Second, func() bool {
				return c.Do(context.Background(), c.B().Ping().Build()).Error() == nil
			}, "client did not reconnect after Restart")
		})
	}
}

func TestRestartRunningServer(t *testing.T) {
	s := redistest.Start(t, redistest.Options{AOF: true})
	s.Do(t, "SET", "k", "v")
	s.Restart(t) // kills first
	if got, _ := s.Do(t, "GET", "k").ToString(); got != "v" {
		t.Fatalf("GET k = %q after Restart, want v", got)
	}
}

func TestRestartRetriesBusyPort(t *testing.T) {
	s := redistest.Start(t, redistest.Options{})
	s.Kill(t)
	l, err := net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatalf("hold port: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(150 * time.Millisecond)
		l.Close()
	}()
	s.Restart(t)
	<-done
	if err := s.Do(t, "PING").Error(); err != nil {
		t.Fatalf("PING: %v", err)
	}
}

func TestArgs(t *testing.T) {
	s := redistest.Start(t, redistest.Options{Args: []string{"--maxmemory", "1mb"}})
	got, err := s.Do(t, "CONFIG", "GET", "maxmemory").AsStrMap()
	if err != nil || got["maxmemory"] != "1048576" {
		t.Fatalf("CONFIG GET maxmemory = %v, %v", got, err)
	}
	appendonly, err := s.Do(t, "CONFIG", "GET", "appendonly").AsStrMap()
	if err != nil || appendonly["appendonly"] != "no" {
		t.Fatalf("CONFIG GET appendonly = %v, %v", appendonly, err)
	}
}

func TestParallelServersGetDistinctPorts(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	for i := range 4 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			s := redistest.Start(t, redistest.Options{})
			mu.Lock()
			defer mu.Unlock()
			if seen[s.Addr] {
				t.Errorf("port %s handed out twice", s.Addr)
			}
			seen[s.Addr] = true
		})
	}
}

// fatalTB records Fatal calls and ends the goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls fn with tb on its own goroutine, so that Goexit ends only it.
func run(tb *fatalTB, fn func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
	}()
	<-done
}

func TestStartWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv("REDIS_SERVER", "")
	if _, err := redistest.Binary(); err == nil {
		t.Fatal("Binary found redis-server on an empty PATH")
	}
	tb := &fatalTB{TB: t}
	run(tb, func(tb testing.TB) { redistest.Start(tb, redistest.Options{}) })
	want := "redis-server not found: run scripts/ensure-redis.sh (or apt-get install redis-server)"
	if tb.msg != want {
		t.Fatalf("Start failed with %q, want %q", tb.msg, want)
	}
}

func TestBinaryFromEnv(t *testing.T) {
	path, err := redistest.Binary()
	if err != nil {
		t.Skipf("no redis-server: %v", err)
	}
	t.Setenv("REDIS_SERVER", path)
	t.Setenv("PATH", t.TempDir())
	if got, err := redistest.Binary(); err != nil || got != path {
		t.Fatalf("Binary() = %q, %v; want %q", got, err, path)
	}
	s := redistest.Start(t, redistest.Options{})
	if err := s.Do(t, "PING").Error(); err != nil {
		t.Fatalf("PING: %v", err)
	}
}

func TestEventually(t *testing.T) {
	t.Run("succeeds", func(t *testing.T) {
		calls := 0
		redistest.Eventually(t, time.Second, func() bool { calls++; return calls == 3 }, "never true")
	})
	t.Run("times out", func(t *testing.T) {
		tb := &fatalTB{TB: t}
		start := time.Now()
		run(tb, func(tb testing.TB) {
			redistest.Eventually(tb, 100*time.Millisecond, func() bool { return false }, "waited for %s", "x")
		})
		if tb.msg != "waited for x" {
			t.Fatalf("message %q, want %q", tb.msg, "waited for x")
		}
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Fatalf("gave up after %v, before the timeout", d)
		}
	})
}
