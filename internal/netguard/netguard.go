// Package netguard keeps webhooks from reaching internal networks (SSRF).
//
// The authoritative check is Guard.Control, run by net.Dialer on the address
// actually being connected to; a check of the URL at registration cannot see
// what a name resolves to later (DNS rebinding). CheckURL is an early,
// friendlier rejection of URLs that can never be delivered.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
)

// ErrDenied is returned (wrapped, with the IP named) when a target address is
// in a denied range and not in the operator's allow list.
var ErrDenied = errors.New("netguard: address not allowed")

// denied lists what a webhook may not reach unless allowed explicitly:
// non-public, special-purpose, and translation ranges that can lead back into
// private networks. IPv4 entries also cover their IPv4-mapped IPv6 form,
// because addresses are unmapped before the check.
var denied = mustPrefixes(
	"0.0.0.0/8",       // "this" network; 0.0.0.0 reaches localhost on Linux
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // carrier-grade NAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, cloud metadata
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // TEST-NET-1
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // TEST-NET-2
	"203.0.113.0/24",  // TEST-NET-3
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, incl. broadcast 255.255.255.255

	"::/128",         // unspecified
	"::1/128",        // loopback
	"::/96",          // deprecated IPv4-compatible (::a.b.c.d); no public host uses it
	"fc00::/7",       // unique local
	"fe80::/10",      // link-local
	"ff00::/8",       // multicast
	"64:ff9b::/96",   // NAT64, embeds an IPv4 address
	"64:ff9b:1::/48", // local-use NAT64
	"2002::/16",      // 6to4, embeds an IPv4 address
	"2001:db8::/32",  // documentation
	"100::/64",       // discard-only
)

func mustPrefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

// Guard decides which IP addresses a webhook may reach. It is immutable and
// safe for concurrent use.
type Guard struct {
	allow []netip.Prefix
}

// New returns a Guard that permits the addresses in allow even when they are
// in a denied range. Invalid prefixes are ignored.
func New(allow []netip.Prefix) *Guard {
	g := &Guard{allow: make([]netip.Prefix, 0, len(allow))}
	for _, p := range allow {
		if p.IsValid() {
			g.allow = append(g.allow, p.Masked())
		}
	}
	return g
}

// ParseCIDRs parses a comma-separated list of CIDRs or bare IPs (a bare IP is
// a /32 or /128). Spaces around items and empty items are ignored; an empty
// string yields nil. The error names the bad item.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var ps []netip.Prefix
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if strings.Contains(item, "/") {
			p, err := netip.ParsePrefix(item)
			if err != nil {
				return nil, fmt.Errorf("netguard: bad CIDR %q: %w", item, err)
			}
			ps = append(ps, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("netguard: bad IP %q: %w", item, err)
		}
		if a.Zone() != "" {
			return nil, fmt.Errorf("netguard: bad IP %q: zones are not allowed", item)
		}
		ps = append(ps, netip.PrefixFrom(a, a.BitLen()))
	}
	return ps, nil
}

// Allowed reports whether ip may be dialed: true if it is in an allow
// prefix, false if it is in a denied range or invalid, true otherwise.
func (g *Guard) Allowed(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	// The zone only picks an interface; the address decides where it goes.
	ip = ip.WithZone("").Unmap()
	if g.allowListed(ip) {
		return true
	}
	for _, p := range denied {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

func (g *Guard) allowListed(ip netip.Addr) bool {
	// ip is unmapped, so an IPv4 allow prefix matches the mapped form too;
	// the mapped form is also tried so an allow prefix written as
	// ::ffff:a.b.c.d/n (or a wider IPv6 prefix) still matches.
	mapped := ip
	if ip.Is4() {
		mapped = netip.AddrFrom16(ip.As16())
	}
	for _, p := range g.allow {
		if p.Contains(ip) || p.Contains(mapped) {
			return true
		}
	}
	return false
}

// Control is meant for net.Dialer.Control: it vets the resolved address the
// socket is about to connect to, so it also holds against DNS rebinding.
// Addresses that are not IP:port are refused.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("netguard: %s dial to %q: not an IP address", network, address)
	}
	if !g.Allowed(ap.Addr()) {
		return fmt.Errorf("%w: %s (allow it with BRIDGE_TARGET_ALLOW_CIDRS)", ErrDenied, ap.Addr())
	}
	return nil
}

// Resolver looks host names up; *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// CheckResolved refuses a URL host name that resolves only to addresses that are not
// Allowed (localhost, a name pointing into a private network): such a webhook could never
// be delivered, and a user learns it at registration rather than from the dead-letter
// queue. A name that does not resolve (yet) passes; Control still checks every connection,
// since DNS can change.
func (g *Guard) CheckResolved(ctx context.Context, r Resolver, u *url.URL) error {
	host := u.Hostname()
	if _, err := netip.ParseAddr(host); err == nil {
		return nil // a literal: CheckURL decided
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return nil
	}
	for _, a := range addrs {
		if g.Allowed(a) {
			return nil
		}
	}
	return fmt.Errorf("URL host %q resolves only to %w: %s", host, ErrDenied, addrs[0].WithZone("").Unmap())
}

// CheckURL validates a webhook URL at registration: the scheme is http or
// https, a host is present, there is no userinfo, a port if present is in
// range, and a literal IP host is Allowed (else the error wraps ErrDenied).
// Host names are not resolved; Control covers them at connect time.
func (g *Guard) CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid URL: %w", err)
	}
	if !u.IsAbs() {
		return nil, errors.New("URL must be absolute (http:// or https://)")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("URL scheme %q not supported, use http or https", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("URL has no host")
	}
	if u.User != nil {
		return nil, errors.New("URL must not contain user information")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("URL port %q out of range", p)
		}
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); err == nil {
		if !g.Allowed(ip) {
			return nil, fmt.Errorf("URL host: %w: %s", ErrDenied, ip.WithZone(""))
		}
		return u, nil
	}
	if strings.ContainsAny(host, "%") {
		return nil, fmt.Errorf("URL host %q is not a valid name", host)
	}
	// Some resolvers read "127.1", "2130706433" or "0x7f.1" as IPv4
	// addresses; browsers do too (WHATWG: a numeric last label means IPv4).
	// Such a host cannot be checked here, and no real name looks like that.
	if isNumericHost(host) {
		return nil, fmt.Errorf("URL host %q looks like a non-standard IPv4 address", host)
	}
	return u, nil
}

func isNumericHost(host string) bool {
	host = strings.TrimSuffix(host, ".")
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	if h, ok := strings.CutPrefix(strings.ToLower(last), "0x"); ok {
		last = h
		for _, c := range last {
			if !strings.ContainsRune("0123456789abcdef", c) {
				return false
			}
		}
		return true
	}
	for _, c := range last {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Control must keep fitting net.Dialer.Control.
var _ func(network, address string, c syscall.RawConn) error = (*Guard)(nil).Control
