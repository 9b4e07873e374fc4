package netguard

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestAllowed(t *testing.T) {
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	tests := []struct {
		ip    string
		allow []netip.Prefix
		want  bool
	}{
		// IPv4 denied ranges, edges included.
		{"0.0.0.0", nil, false},
		{"0.255.255.255", nil, false},
		{"10.0.0.1", nil, false},
		{"10.255.255.255", nil, false},
		{"100.64.0.1", nil, false},
		{"100.127.255.255", nil, false},
		{"127.0.0.1", nil, false},
		{"127.255.255.254", nil, false},
		{"169.254.169.254", nil, false},
		{"172.16.0.1", nil, false},
		{"172.31.255.255", nil, false},
		{"192.0.0.8", nil, false},
		{"192.0.2.1", nil, false},
		{"192.168.1.1", nil, false},
		{"198.18.0.1", nil, false},
		{"198.19.255.255", nil, false},
		{"198.51.100.7", nil, false},
		{"203.0.113.9", nil, false},
		{"224.0.0.1", nil, false},
		{"239.255.255.250", nil, false},
		{"240.0.0.1", nil, false},
		{"255.255.255.255", nil, false},
		// IPv4 neighbours of denied ranges are public.
		{"8.8.8.8", nil, true},
		{"1.1.1.1", nil, true},
		{"11.0.0.1", nil, true},
		{"100.63.255.255", nil, true},
		{"100.128.0.0", nil, true},
		{"172.15.255.255", nil, true},
		{"172.32.0.0", nil, true},
		{"192.0.1.1", nil, true},
		{"198.17.255.255", nil, true},
		{"198.20.0.0", nil, true},
		{"223.255.255.255", nil, true},
		// IPv6.
		{"::", nil, false},
		{"::1", nil, false},
		{"::7f00:1", nil, false}, // IPv4-compatible 127.0.0.1
		{"::808:808", nil, false},
		{"fc00::1", nil, false},
		{"fd12:3456::1", nil, false},
		{"fe80::1", nil, false},
		{"fe80::1%eth0", nil, false},
		{"febf::1", nil, false},
		{"ff02::1", nil, false},
		{"64:ff9b::7f00:1", nil, false},
		{"64:ff9b::808:808", nil, false},
		{"64:ff9b:1::1", nil, false},
		{"2002:7f00:1::", nil, false},
		{"2001:db8::1", nil, false},
		{"100::1", nil, false},
		{"2606:4700::1", nil, true},
		{"2001:4860:4860::8888", nil, true},
		{"2a00:1450::1", nil, true},
		{"fec0::1", nil, true}, // deprecated site-local, outside fe80::/10
		// IPv4-mapped forms follow their IPv4 verdict.
		{"::ffff:127.0.0.1", nil, false},
		{"::ffff:10.1.2.3", nil, false},
		{"::ffff:169.254.169.254", nil, false},
		{"::ffff:0.0.0.0", nil, false},
		{"::ffff:255.255.255.255", nil, false},
		{"::ffff:8.8.8.8", nil, true},
		// Allow list overrides.
		{"127.0.0.1", loopback, true},
		{"127.1.2.3", loopback, true},
		{"::ffff:127.0.0.1", loopback, true},
		{"::1", loopback, false},
		{"10.0.0.1", loopback, false},
		{"10.1.2.3", []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32")}, true},
		{"10.1.2.4", []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32")}, false},
		{"10.1.2.3", []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}, true},
		{"::1", []netip.Prefix{netip.MustParsePrefix("::1/128")}, true},
		{"fe80::1%eth0", []netip.Prefix{netip.MustParsePrefix("fe80::/10")}, true},
		{"fd00::5", []netip.Prefix{netip.MustParsePrefix("fd00::/8")}, true},
		{"8.8.8.8", loopback, true},
	}
	for _, tt := range tests {
		name := tt.ip
		if tt.allow != nil {
			name += " allow " + tt.allow[0].String()
		}
		t.Run(name, func(t *testing.T) {
			g := New(tt.allow)
			if got := g.Allowed(netip.MustParseAddr(tt.ip)); got != tt.want {
				t.Fatalf("Allowed(%s) = %v, want %v", tt.ip, got, tt.want)
			}
		})
	}
	if New(nil).Allowed(netip.Addr{}) {
		t.Fatal("the zero Addr must not be allowed")
	}
}

func TestParseCIDRs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", nil, ""},
		{"   ", nil, ""},
		{"10.0.0.0/8", []string{"10.0.0.0/8"}, ""},
		{" 10.0.0.0/8 , 127.0.0.1,::1 ", []string{"10.0.0.0/8", "127.0.0.1/32", "::1/128"}, ""},
		{"10.1.2.3/8", []string{"10.0.0.0/8"}, ""},
		{"fd00::/8,", []string{"fd00::/8"}, ""},
		{"10.0.0.0/8,bogus", nil, `"bogus"`},
		{"10.0.0.0/33", nil, `"10.0.0.0/33"`},
		{"fe80::1%eth0", nil, `"fe80::1%eth0"`},
		{"example.com", nil, `"example.com"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseCIDRs(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCIDRs(%q) error = %v, want one naming %s", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) || (tt.want == nil) != (got == nil) {
				t.Fatalf("ParseCIDRs(%q) = %v, want %v", tt.in, got, tt.want)
			}
			for i := range got {
				if got[i].String() != tt.want[i] {
					t.Fatalf("ParseCIDRs(%q)[%d] = %v, want %v", tt.in, i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestControl(t *testing.T) {
	g := New(nil)
	tests := []struct {
		addr   string
		denied bool
		err    bool
	}{
		{"8.8.8.8:443", false, false},
		{"[2606:4700::1]:443", false, false},
		{"127.0.0.1:80", true, true},
		{"[::ffff:127.0.0.1]:80", true, true},
		{"[fe80::1%eth0]:80", true, true},
		{"169.254.169.254:80", true, true},
		{"localhost:80", false, true},
		{"/tmp/sock", false, true},
		{"", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := g.Control("tcp", tt.addr, nil)
			if (err != nil) != tt.err || errors.Is(err, ErrDenied) != tt.denied {
				t.Fatalf("Control(%q) = %v, want err=%v denied=%v", tt.addr, err, tt.err, tt.denied)
			}
			if tt.denied {
				ap := netip.MustParseAddrPort(tt.addr)
				if !strings.Contains(err.Error(), ap.Addr().WithZone("").Unmap().String()) &&
					!strings.Contains(err.Error(), ap.Addr().String()) {
					t.Fatalf("error %q does not name the IP", err)
				}
			}
		})
	}
}

func TestCheckURL(t *testing.T) {
	g := New(nil)
	tests := []struct {
		raw    string
		ok     bool
		denied bool
		say    string // part of the error message
	}{
		{"http://example.com", true, false, ""},
		{"https://example.com:8443/hook?x=1", true, false, ""},
		{"HTTPS://Example.COM/hook", true, false, ""},
		{"http://8.8.8.8/hook", true, false, ""},
		{"http://[2606:4700::1]:8080/", true, false, ""},
		{"http://xn--bcher-kva.example/", true, false, ""},
		{"http://host-1.example.", true, false, ""},
		{"ftp://example.com/", false, false, "scheme"},
		{"file:///etc/passwd", false, false, "scheme"},
		{"gopher://127.0.0.1:6379/", false, false, "scheme"},
		{"http://user:pw@example.com/", false, false, "user"},
		{"http://user@example.com/", false, false, "user"},
		{"http://[::1]/", false, true, "::1"},
		{"http://169.254.169.254/latest", false, true, "169.254.169.254"},
		{"http://127.0.0.1:9000/", false, true, "127.0.0.1"},
		{"http://[::ffff:127.0.0.1]/", false, true, "127.0.0.1"},
		{"http://[fe80::1%25eth0]/", false, true, "fe80::1"},
		{"http://0.0.0.0/", false, true, "0.0.0.0"},
		{"http://10.0.0.1/", false, true, "10.0.0.1"},
		{"http://127.1/", false, false, "IPv4"},
		{"http://2130706433/", false, false, "IPv4"},
		{"http://0x7f.0.0.1/", false, false, "IPv4"},
		{"http://0x7f000001/", false, false, "IPv4"},
		{"http:///path", false, false, "host"},
		{"http://", false, false, "host"},
		{"http:example.com", false, false, "host"},
		{"http://:80/", false, false, "host"},
		{"http://example.com:0/", false, false, "port"},
		{"http://example.com:70000/", false, false, "port"},
		{"/relative/path", false, false, "absolute"},
		{"example.com/hook", false, false, "absolute"},
		{"", false, false, "absolute"},
		{"http://exa mple.com/", false, false, "invalid"},
		{"http://[::1/", false, false, "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			u, err := g.CheckURL(tt.raw)
			if tt.ok {
				if err != nil || u == nil {
					t.Fatalf("CheckURL(%q) = %v, %v; want ok", tt.raw, u, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckURL(%q) = %v, want error", tt.raw, u)
			}
			if errors.Is(err, ErrDenied) != tt.denied {
				t.Fatalf("CheckURL(%q) = %v; denied=%v, want %v", tt.raw, err, !tt.denied, tt.denied)
			}
			if !strings.Contains(err.Error(), tt.say) {
				t.Fatalf("CheckURL(%q) = %q, want it to mention %q", tt.raw, err, tt.say)
			}
		})
	}

	allowLocal := New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	if _, err := allowLocal.CheckURL("http://127.0.0.1:9000/hook"); err != nil {
		t.Fatalf("allow-listed loopback URL: %v", err)
	}
}

// TestDialerControl dials a real local server through the guard.
func TestDialerControl(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Skipf("test server is on %s, not 127.0.0.1", addr)
	}

	client := func(g *Guard) *http.Client {
		d := &net.Dialer{Timeout: 2 * time.Second, Control: g.Control}
		return &http.Client{
			Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
			Timeout:   5 * time.Second,
		}
	}
	ctx := context.Background()

	t.Run("denied", func(t *testing.T) {
		g := New(nil)
		d := &net.Dialer{Timeout: 2 * time.Second, Control: g.Control}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			t.Fatal("dial to 127.0.0.1 succeeded without an allow entry")
		}
		if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "127.0.0.1") {
			t.Fatalf("dial error = %v, want ErrDenied naming 127.0.0.1", err)
		}
		// "localhost" resolves at dial time; the guard still sees the IP.
		_, port, _ := net.SplitHostPort(addr)
		resp, err := client(g).Get("http://localhost:" + port + "/")
		if err == nil {
			resp.Body.Close()
			t.Fatal("GET via localhost succeeded without an allow entry")
		}
		if !errors.Is(err, ErrDenied) {
			t.Fatalf("GET error = %v, want ErrDenied", err)
		}
	})

	t.Run("allowed", func(t *testing.T) {
		allow, err := ParseCIDRs("127.0.0.0/8")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client(New(allow)).Get(srv.URL)
		if err != nil {
			t.Fatalf("GET with 127.0.0.0/8 allowed: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{
		"http://example.com", "https://example.com:8443/p?q#f", "ftp://example.com",
		"http://user:pw@host", "http://[::1]/", "http://169.254.169.254/latest",
		"http://[fe80::1%25eth0]:80/", "http://[::ffff:127.0.0.1]/", "http://127.1/",
		"http://0x7f.1/", "/relative", "", "http://", "http:opaque", "http://:80",
		"http://example.com:99999/", "http://%zz/",
	} {
		f.Add(s)
	}
	g := New(nil)
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := g.CheckURL(raw)
		if err != nil {
			if u != nil {
				t.Fatalf("CheckURL(%q) returned a URL with error %v", raw, err)
			}
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			t.Fatalf("CheckURL(%q) accepted scheme %q", raw, u.Scheme)
		}
		if u.Hostname() == "" || u.User != nil {
			t.Fatalf("CheckURL(%q) accepted host %q user %v", raw, u.Hostname(), u.User)
		}
		if ip, err := netip.ParseAddr(u.Hostname()); err == nil && !g.Allowed(ip) {
			t.Fatalf("CheckURL(%q) accepted denied IP %s", raw, ip)
		}
	})
}
