package redistest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// notFoundHint is the failure message when no redis-server binary is found.
const notFoundHint = "redis-server not found: run scripts/ensure-redis.sh (or apt-get install redis-server)"

const (
	// readyTimeout bounds how long a start waits for the server to answer PING.
	readyTimeout = 10 * time.Second
	// killTimeout bounds how long Kill waits for the process to exit.
	killTimeout = 10 * time.Second
	// doTimeout bounds a single Do command.
	doTimeout = 10 * time.Second
	// launchAttempts is how many times a start is tried when the port is taken.
	launchAttempts = 5
)

var (
	// errPortBusy means redis-server could not bind its port.
	errPortBusy = errors.New("port is busy")
	// errNotOurs means the port answered, but from another process.
	errNotOurs = errors.New("port is served by another process")
)

// Options configures a Server.
type Options struct {
	AOF  bool     // appendonly yes, appendfsync always (durable across kill -9)
	Args []string // extra redis-server args, e.g. "--maxmemory", "1mb"
	// TLS serves TLS only (no plain port), requiring client certificates;
	// see Server.TLSFiles. The test is skipped if redis-server lacks TLS.
	TLS bool
}

// TLSFiles are PEM files in the server's Dir for a TLS client: the CA that
// signed the server certificate, and a client certificate and key the server
// accepts.
type TLSFiles struct {
	CA   string
	Cert string
	Key  string
}

// Server is a redis-server process owned by a test. Its methods are safe for
// concurrent use; the ones that take a testing.TB call t.Fatal on failure and
// must therefore run on the test goroutine.
type Server struct {
	Addr string // "127.0.0.1:port"
	URL  string // "redis://127.0.0.1:port", or "rediss://127.0.0.1:port" with TLS
	Dir  string // working dir (t.TempDir), AOF lives here
	// TLSFiles is set with Options.TLS: the files a client needs to connect.
	TLSFiles TLSFiles

	bin     string
	opts    Options
	mode    mode
	port    int
	logPath string
	tls     *tls.Config // client config; nil without TLS

	mu     sync.Mutex
	proc   *process       // nil while not running
	client rueidis.Client // shared by Do; nil until first used and after Kill
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait returned
	err  error         // cmd.Wait's result, valid after done is closed
}

// Binary returns the path of the redis-server to run: $REDIS_SERVER when set,
// otherwise redis-server from PATH.
func Binary() (string, error) {
	name := "redis-server"
	if env := os.Getenv("REDIS_SERVER"); env != "" {
		name = env
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return path, nil
}

// Start starts redis-server (from PATH, or $REDIS_SERVER) bound to 127.0.0.1
// on a free port with its own TempDir, waits until it answers PING (deadline
// 10 s), and registers t.Cleanup to stop it. If redis-server is missing it
// calls t.Fatal with a hint on how to install it.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	return start(t, opts, mode{})
}

// mode says what kind of redis-server process a Server runs.
type mode struct {
	cluster      bool   // a cluster node, with nodes.conf in Dir
	sentinelConf string // non-empty: run as a sentinel with this sentinel.conf
}

func start(t testing.TB, opts Options, m mode) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if env := os.Getenv("REDIS_SERVER"); env != "" {
			t.Fatalf("%s (REDIS_SERVER=%q: %v)", notFoundHint, env, err)
		}
		t.Fatal(notFoundHint)
	}
	opts.Args = slices.Clone(opts.Args)
	s := &Server{bin: bin, opts: opts, mode: m, Dir: t.TempDir()}
	s.logPath = filepath.Join(s.Dir, "redis.log")
	if m.sentinelConf != "" {
		// The sentinel rewrites its config file, so it must be writable.
		if err := os.WriteFile(s.confPath(), []byte(m.sentinelConf), 0o644); err != nil {
			t.Fatalf("redistest: write sentinel.conf: %v", err)
		}
	}
	if opts.TLS {
		files, cfg, err := writeTLSFiles(s.Dir)
		if err != nil {
			t.Fatalf("redistest: generate TLS certificates: %v", err)
		}
		s.TLSFiles, s.tls = files, cfg
	}
	pickPort := freePort
	if m.cluster {
		pickPort = freeClusterPort
	}
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.killLocked(); err != nil {
			t.Errorf("redistest: stop %s: %v", s.Addr, err)
		}
	})

	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		// A port found free can be taken by another test process before
		// redis-server binds it; then pick another one.
		port, err := pickPort()
		if err == nil {
			s.setPort(port)
			err = s.launchLocked()
		}
		if err == nil {
			return s
		}
		if attempt == launchAttempts || !retryable(err) {
			if opts.TLS && noTLSSupport(s.logTail()) {
				t.Skipf("redistest: this redis-server cannot serve TLS (build it with BUILD_TLS=yes): %v%s", err, s.logTail())
			}
			t.Fatalf("redistest: start redis-server: %v%s", err, s.logTail())
		}
	}
}

// Kill stops the server with SIGKILL and waits for the process to exit. It
// does nothing if the server is not running. The client used by Do is closed;
// clients from Client are not, and reconnect after Restart.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.killLocked(); err != nil {
		t.Fatalf("redistest: kill %s: %v", s.Addr, err)
	}
}

// Restart kills the server if it is running, then starts it again on the same
// port and directory (so an AOF is reloaded) and waits until it answers PING.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.killLocked(); err != nil {
		t.Fatalf("redistest: restart %s: %v", s.Addr, err)
	}
	for attempt := 1; ; attempt++ {
		err := s.launchLocked()
		if err == nil {
			return
		}
		if attempt == launchAttempts || !retryable(err) {
			t.Fatalf("redistest: restart redis-server on %s: %v%s", s.Addr, err, s.logTail())
		}
		// The port may be held briefly by someone else; it cannot move.
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
}

// Client returns a new rueidis client for the server, with client-side caching
// disabled and a single-node connection forced. It is closed when t ends.
func (s *Server) Client(t testing.TB) rueidis.Client {
	t.Helper()
	c, err := s.newClient()
	if err != nil {
		t.Fatalf("redistest: connect to %s: %v", s.Addr, err)
	}
	t.Cleanup(c.Close)
	return c
}

// DBSize returns the number of keys in the server's current database.
func (s *Server) DBSize(t testing.TB) int64 {
	t.Helper()
	n, err := s.Do(t, "DBSIZE").AsInt64()
	if err != nil {
		t.Fatalf("redistest: DBSIZE on %s: %v", s.Addr, err)
	}
	return n
}

// Do runs one command, e.g. s.Do(t, "HGETALL", key), on a client shared by
// the Server and returns the reply as is, errors included, for assertions.
// The server must be running. Subscribe commands are refused; use Client.
func (s *Server) Do(t testing.TB, args ...string) rueidis.RedisResult {
	t.Helper()
	if len(args) == 0 || args[0] == "" {
		t.Fatal("redistest: Do needs a command")
	}
	if strings.HasSuffix(strings.ToUpper(args[0]), "SUBSCRIBE") {
		t.Fatalf("redistest: Do cannot run %s; use Client", args[0])
	}
	c, err := s.sharedClient()
	if err != nil {
		t.Fatalf("redistest: %s on %s: %v", args[0], s.Addr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), doTimeout)
	defer cancel()
	return c.Do(ctx, c.B().Arbitrary(args...).Build())
}

func (s *Server) sharedClient() (rueidis.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil, errors.New("server is not running")
	}
	if s.client == nil {
		c, err := s.newClient()
		if err != nil {
			return nil, err
		}
		s.client = c
	}
	return s.client, nil
}

func (s *Server) newClient() (rueidis.Client, error) {
	return rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{s.Addr},
		DisableCache:      true,
		ForceSingleClient: true,
		TLSConfig:         s.tlsConfig(),
	})
}

// tlsConfig returns a copy of the client TLS config, nil without TLS.
func (s *Server) tlsConfig() *tls.Config {
	if s.tls == nil {
		return nil
	}
	return s.tls.Clone()
}

func (s *Server) setPort(port int) {
	s.port = port
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if s.opts.TLS {
		s.URL = "rediss://" + s.Addr
	} else {
		s.URL = "redis://" + s.Addr
	}
}

func (s *Server) confPath() string { return filepath.Join(s.Dir, "sentinel.conf") }

func (s *Server) args() []string {
	var args []string
	if s.mode.sentinelConf != "" {
		args = append(args, s.confPath(), "--sentinel")
	}
	args = append(args,
		"--bind", "127.0.0.1",
		"--dir", s.Dir,
		"--daemonize", "no",
		"--protected-mode", "yes",
		"--logfile", s.logPath,
	)
	if s.opts.TLS {
		args = append(args,
			"--port", "0",
			"--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", filepath.Join(s.Dir, serverCertFile),
			"--tls-key-file", filepath.Join(s.Dir, serverKeyFile),
			"--tls-ca-cert-file", s.TLSFiles.CA,
			"--tls-auth-clients", "yes",
		)
	} else {
		args = append(args, "--port", strconv.Itoa(s.port))
	}
	if s.mode.sentinelConf == "" {
		args = append(args, "--save", "")
		if s.opts.AOF {
			args = append(args, "--appendonly", "yes", "--appendfsync", "always")
		} else {
			args = append(args, "--appendonly", "no")
		}
	}
	if s.mode.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(s.Dir, "nodes.conf"),
			"--cluster-node-timeout", "2000",
		)
	}
	return append(args, s.opts.Args...)
}

// launchLocked starts redis-server on s.port and waits until it is ready.
// s.mu must be held and no process running.
func (s *Server) launchLocked() error {
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	var logStart int64
	if fi, err := logf.Stat(); err == nil {
		logStart = fi.Size()
	}
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.Dir
	// A file, not a pipe: an orphaned server must not hold go test's output open.
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	logf.Close() // the child has its own copy
	if err != nil {
		return err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := p.waitReady(s.Addr, s.tls); err != nil {
		exitedAlone := p.exited()
		if kerr := p.kill(); kerr != nil {
			return errors.Join(err, kerr)
		}
		if exitedAlone && !errors.Is(err, errNotOurs) {
			return s.exitError(p, logStart)
		}
		return err
	}
	s.proc = p
	return nil
}

// killLocked closes the shared client and kills the process, if any.
func (s *Server) killLocked() error {
	if s.client != nil {
		s.client.Close()
		s.client = nil
	}
	if s.proc == nil {
		return nil
	}
	p := s.proc
	s.proc = nil
	return p.kill()
}

// exitError describes a process that exited before it was ready, telling a
// busy port (worth a retry) from what it logged since logStart.
func (s *Server) exitError(p *process, logStart int64) error {
	var out string
	if b, err := os.ReadFile(s.logPath); err == nil && int64(len(b)) >= logStart {
		out = strings.TrimSpace(string(b[logStart:]))
	}
	err := fmt.Errorf("redis-server exited before answering PING (%v)", p.err)
	if strings.Contains(out, "Address already in use") {
		return fmt.Errorf("%w: %w", err, errPortBusy)
	}
	return err // the caller shows the log
}

// logTail returns the end of the server log, formatted to follow an error.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	const max = 2048
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return "\nredis.log (tail):\n" + string(b)
}

func (p *process) kill() error {
	// Kill fails only when the process already exited; Wait tells either way.
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(killTimeout):
		return fmt.Errorf("pid %d still running %v after SIGKILL", p.cmd.Process.Pid, killTimeout)
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitReady polls addr until this process answers PING. It returns early
// when the process exits; the caller checks p.exited.
func (p *process) waitReady(addr string, tc *tls.Config) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		if p.exited() {
			return errors.New("exited")
		}
		err := probe(addr, p.cmd.Process.Pid, tc)
		if err == nil {
			return nil
		}
		if errors.Is(err, errNotOurs) {
			return err // the caller kills our process and retries
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PING reply on %s within %v: %w", addr, readyTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// probe sends PING and INFO server over plain RESP and succeeds when the reply
// is PONG (not LOADING) and comes from the process with the given pid, so a
// stranger that grabbed the port is never taken for our server. With a TLS
// config it speaks TLS.
func probe(addr string, pid int, tc *tls.Config) error {
	d := &net.Dialer{Timeout: 500 * time.Millisecond}
	var conn net.Conn
	var err error
	if tc != nil {
		conn, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(conn, "PING\r\nINFO server\r\n"); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING replied %q", strings.TrimSpace(line))
	}
	line, err = r.ReadString('\n')
	if err != nil {
		return err
	}
	// INFO replies with a bulk string ($<len>) in RESP2, verbatim (=<len>) in RESP3.
	if len(line) < 2 || (line[0] != '$' && line[0] != '=') {
		return fmt.Errorf("INFO replied %q", strings.TrimSpace(line))
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 0 {
		return fmt.Errorf("INFO replied %q", strings.TrimSpace(line))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return err
	}
	if !strings.Contains(string(body), "\nprocess_id:"+strconv.Itoa(pid)+"\r") {
		return fmt.Errorf("%s: %w", addr, errNotOurs)
	}
	return nil
}

func retryable(err error) bool {
	return errors.Is(err, errPortBusy) || errors.Is(err, errNotOurs)
}

// freeClusterPort returns a free port whose cluster bus port (port+10000) is
// free as well.
func freeClusterPort() (int, error) {
	for range 100 {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		if port+10000 > 65535 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, errors.New("no free port with a free cluster bus port (port+10000)")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
