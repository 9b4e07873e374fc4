package redistest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func TestTLS(t *testing.T) {
	s := redistest.Start(t, redistest.Options{TLS: true, AOF: true})
	if s.URL != "rediss://"+s.Addr {
		t.Fatalf("URL = %q, want rediss://%s", s.URL, s.Addr)
	}
	for _, f := range []string{s.TLSFiles.CA, s.TLSFiles.Cert, s.TLSFiles.Key} {
		if f == "" {
			t.Fatalf("TLSFiles %+v has an empty path", s.TLSFiles)
		}
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}
	c := s.Client(t)
	ctx := context.Background()
	if err := c.Do(ctx, c.B().Set().Key("k").Value("v").Build()).Error(); err != nil {
		t.Fatalf("SET over TLS: %v", err)
	}
	if got, err := s.Do(t, "GET", "k").ToString(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v", got, err)
	}

	// The files alone are enough, as for the bridge.
	pem, err := os.ReadFile(s.TLSFiles.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	cert, err := tls.LoadX509KeyPair(s.TLSFiles.Cert, s.TLSFiles.Key)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if got := ping(t, s.Addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: host}); got != "+PONG" {
			t.Fatalf("PING with ServerName %s: %q", host, got)
		}
	}
	// Without a client certificate the server refuses.
	if got := ping(t, s.Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}); got == "+PONG" {
		t.Fatal("server accepted a client without a certificate")
	}
	// Plain TCP gets no RESP answer.
	if got := ping(t, s.Addr, nil); got == "+PONG" {
		t.Fatal("server answered plain-text PING on its TLS port")
	}

	s.Restart(t)
	if got, err := s.Do(t, "GET", "k").ToString(); err != nil || got != "v" {
		t.Fatalf("GET k after Restart = %q, %v", got, err)
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		return c.Do(ctx, c.B().Ping().Build()).Error() == nil
	}, "TLS client did not reconnect after Restart")
}

// ping sends PING over TCP, or TLS with tc, and returns the first reply line
// or the error text.
func ping(t *testing.T, addr string, tc *tls.Config) string {
	t.Helper()
	d := &net.Dialer{Timeout: 2 * time.Second}
	var conn net.Conn
	var err error
	if tc != nil {
		conn, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err.Error()
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(buf[:n]))
}
