package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// process is a child the benchmark owns (redis-server or the bridge). Its
// output goes to a log file in the run's temp dir so that it neither
// interleaves with the report nor blocks on a full pipe.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // cmd.Wait's result, valid after done
}

func startProcess(name, logPath string, env []string, bin string, args ...string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = env
	cmd.Dir = filepath.Dir(logPath)
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to timeout for the exit, then kills. It returns
// the exit code (-1 when killed by a signal) and how long the exit took.
func (p *process) stop(sig os.Signal, timeout time.Duration) (code int, took time.Duration, killed bool) {
	start := time.Now()
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(timeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			killed = true
		}
	}
	return p.cmd.ProcessState.ExitCode(), time.Since(start), killed
}

// kill is the cleanup path: make sure the process is gone, quietly.
func (p *process) kill() {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logTail returns the last n lines of the process's output, for error reports.
func (p *process) logTail(n int) string {
	lines := readLines(p.logPath)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func readLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// freePort asks the kernel for an unused loopback port. Another process can
// take it before our child binds it; callers that can, retry.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startRedis runs a throwaway, non-persistent redis-server on a free
// loopback port inside dir and waits until it answers PING.
func startRedis(ctx context.Context, bin, dir string) (*process, string, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, "", err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p, err := startProcess("redis-server", filepath.Join(dir, "redis.log"), os.Environ(), bin,
			"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
			"--save", "", "--appendonly", "no", "--dir", dir)
		if err != nil {
			return nil, "", err
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) && !p.exited() && ctx.Err() == nil {
			if reply, err := redisDo(addr, "PING"); err == nil && reply == "PONG" {
				return p, addr, nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		p.kill()
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		lastErr = fmt.Errorf("redis-server on %s did not come up:\n%s", addr, p.logTail(10))
		// Most likely the port was taken in the meantime: try another one.
	}
	return nil, "", lastErr
}

// redisDo sends one command and returns its reply: string (status or
// bulk), int64, []any, or nil; a Redis error reply is returned as error. The
// benchmark needs only PING, DEL and XINFO GROUPS, which is not worth a
// client library and its connection pool next to the measurements.
func redisDo(addr string, args ...string) (any, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&buf, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return nil, err
	}
	return readRESP(bufio.NewReader(conn), 0)
}

// readRESP reads one RESP2 value; depth bounds nesting on a garbled stream.
func readRESP(rd *bufio.Reader, depth int) (any, error) {
	if depth > 8 {
		return nil, errors.New("RESP reply nested too deeply")
	}
	line, err := rd.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty RESP line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err // $-1: nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(rd, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, 0, min(n, 1024))
		for range n {
			v, err := readRESP(rd, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected RESP reply %q", line)
}

// consumerGroups lists the consumer groups on stream key as "name (entries
// read n)". Used to check that deleting a subscription leaves nothing behind.
func consumerGroups(addr, key string) ([]string, error) {
	reply, err := redisDo(addr, "XINFO", "GROUPS", key)
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return nil, nil
		}
		return nil, err
	}
	groups, _ := reply.([]any)
	var out []string
	for _, g := range groups {
		fields, _ := g.([]any)
		var name string
		var read any
		for i := 0; i+1 < len(fields); i += 2 {
			switch fields[i] {
			case "name":
				name, _ = fields[i+1].(string)
			case "entries-read":
				read = fields[i+1]
			}
		}
		out = append(out, fmt.Sprintf("%s (entries-read %v)", name, read))
	}
	return out, nil
}

// cpuSeconds is the user+system CPU time pid has used so far, from
// /proc/<pid>/stat (Linux only). The clock tick is assumed to be 100 Hz, the
// value on every mainstream Linux build (reading it needs sysconf, i.e. cgo).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields after its ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc/<pid>/stat format")
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state is f[0], so utime (field 14) is f[11], stime f[12].
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc/<pid>/stat format")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unexpected /proc/<pid>/stat format")
	}
	const clockTick = 100
	return float64(ut+st) / clockTick, nil
}

// rpsPattern matches redis-benchmark's human output, the fallback when its
// --csv output cannot be parsed.
var rpsPattern = regexp.MustCompile(`([0-9]+(?:\.[0-9]+)?) requests per second`)

// redisBenchmark runs redis-benchmark's XADD in the bridge's own wire layout
// (`_payload <body>`) and returns its requests per second.
func redisBenchmark(ctx context.Context, bin, addr string, conns, requests, size, pipeline int) (float64, error) {
	host, port, _ := net.SplitHostPort(addr)
	args := []string{"-h", host, "-p", port, "-c", strconv.Itoa(conns), "-n", strconv.Itoa(requests), "--csv"}
	if pipeline > 1 {
		args = append(args, "-P", strconv.Itoa(pipeline))
	}
	args = append(args, "XADD", "bench:raw", "*", "_payload", strings.Repeat("x", size))
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", bin, err, bytes.TrimSpace(out))
	}
	// CSV: a header row, then "test","rps","avg_latency_ms",...
	if recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll(); err == nil {
		for _, rec := range recs {
			if len(rec) >= 2 {
				if v, err := strconv.ParseFloat(rec[1], 64); err == nil {
					return v, nil
				}
			}
		}
	}
	if m := rpsPattern.FindAllSubmatch(out, -1); len(m) > 0 {
		return strconv.ParseFloat(string(m[len(m)-1][1]), 64)
	}
	return 0, fmt.Errorf("no requests-per-second figure in redis-benchmark output: %.200q", out)
}

// buildBridge compiles ./cmd/bridge into dir. The import path (not a
// relative directory) makes it work from any directory inside the module.
func buildBridge(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "bridge")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/bridge-dev/bridge/cmd/bridge")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/bridge: %w", err)
	}
	return bin, nil
}

// serverEnv is the parent's environment without any BRIDGE_* variable (a
// token or listen address set in the caller's shell would change what is
// measured), plus the benchmark's settings.
func serverEnv(settings map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BRIDGE_") {
			env = append(env, kv)
		}
	}
	for k, v := range settings {
		env = append(env, k+"="+v)
	}
	return env
}

// bridgeEnv is serverEnv plus -bridge-env, last, so it can override any setting of the
// benchmark's. The minimal reference gets serverEnv only: a GOGC meant for the bridge
// must not tune the server it is compared with.
func bridgeEnv(settings map[string]string) []string {
	return append(serverEnv(settings), extraBridgeEnv...)
}

// extraBridgeEnv is -bridge-env: settings added to every bridge the benchmark starts.
var extraBridgeEnv []string

// memStatus reads the peak (VmHWM) and current (VmRSS) resident set size of
// pid in bytes from /proc. Linux only; elsewhere it returns an error.
func memStatus(pid int) (peak, cur uint64, err error) {
	lines := readLines(fmt.Sprintf("/proc/%d/status", pid))
	if lines == nil {
		return 0, 0, errors.New("/proc/<pid>/status not readable")
	}
	for _, l := range lines {
		fields := strings.Fields(l)
		if len(fields) < 2 {
			continue
		}
		kb, perr := strconv.ParseUint(fields[1], 10, 64)
		if perr != nil {
			continue
		}
		switch fields[0] {
		case "VmHWM:":
			peak = kb * 1024
		case "VmRSS:":
			cur = kb * 1024
		}
	}
	if peak == 0 {
		return 0, 0, errors.New("no VmHWM in /proc/<pid>/status")
	}
	return peak, cur, nil
}

// cpuMeter reads the CPU time of a few named processes.
type cpuMeter map[string]int

func (m cpuMeter) read() map[string]float64 {
	out := make(map[string]float64, len(m)+1)
	for name, pid := range m {
		if s, err := cpuSeconds(pid); err == nil {
			out[name] = s
		}
	}
	if s, err := stealSeconds(); err == nil {
		out["steal"] = s
	}
	return out
}

// stealSeconds is the machine's steal time so far (all CPUs, /proc/stat): time the
// hypervisor gave this VM's CPUs to someone else. A phase with steal ran on a slower
// machine than its neighbours, whatever the server did.
func stealSeconds() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	// cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("unexpected /proc/stat format")
	}
	st, err := strconv.ParseUint(f[8], 10, 64)
	if err != nil {
		return 0, err
	}
	const clockTick = 100
	return float64(st) / clockTick, nil
}

// cpuWindow is an open measurement, see cpuMeter.start.
type cpuWindow struct {
	m      cpuMeter
	before map[string]float64
	t0     time.Time
}

func (m cpuMeter) start() cpuWindow {
	return cpuWindow{m: m, before: m.read(), t0: time.Now()}
}

// stop returns the average cores each process used since start.
func (w cpuWindow) stop() map[string]float64 {
	after, elapsed := w.m.read(), time.Since(w.t0)
	out := make(map[string]float64, len(after))
	for name, a := range after {
		if b, ok := w.before[name]; ok && elapsed > 0 {
			out[name] = (a - b) / elapsed.Seconds()
		}
	}
	return out
}

// Optional costs the benchmark can switch on in the bridge (flags -filter and -otlp).
var (
	benchFilter string
	benchOTLP   bool
)

// withFilter adds the -filter expression to a bridge subscription (the minimal reference
// has no filters; its subscriptions are left alone).
func withFilter(b *bench, body map[string]any) map[string]any {
	if benchFilter != "" && b.bridgeHeaders {
		body["filter"] = benchFilter
	}
	return body
}

// startOTLPSink runs an OTLP/HTTP trace endpoint on 127.0.0.1 that reads and discards
// what it is sent, and points every bridge the benchmark starts at it.
func startOTLPSink() (stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	extraBridgeEnv = append(extraBridgeEnv, "OTEL_EXPORTER_OTLP_ENDPOINT=http://"+ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}
