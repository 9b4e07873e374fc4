package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

// ConnOptions say how to reach Redis. The zero value means the embedded server.
type ConnOptions struct {
	// URL is redis://, rediss:// or unix://; several comma-separated URLs seed a cluster.
	URL            string
	Username       string
	Password       string
	PasswordFile   string
	TLSCA          string
	TLSCert        string
	TLSKey         string
	SentinelMaster string
}

// Conn is an open connection to Redis, embedded or not.
type Conn struct {
	Client rueidis.Client
	// Embedded is true when the bridge runs on its in-process, non-durable server.
	Embedded bool
	// Addr is where the client connects, for logs (never carries credentials).
	Addr string
	mini *miniredis.Miniredis
}

// Close closes the client and stops the embedded server, if any.
func (c *Conn) Close() {
	c.Client.Close()
	if c.mini != nil {
		c.mini.Close()
	}
}

// Connect opens a rueidis client for opts. With an empty URL it starts an embedded
// in-process Redis-compatible server on 127.0.0.1 and connects to it through the same
// client code path, so the embedded mode exercises exactly what production runs.
func Connect(opts ConnOptions) (*Conn, error) {
	if opts.URL == "" {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("start embedded redis: %w", err)
		}
		// miniredis answers CLUSTER SLOTS, so without ForceSingleClient rueidis would treat it as a cluster.
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress:       []string{m.Addr()},
			DisableCache:      true,
			ForceSingleClient: true,
			// The embedded server speaks RESP3 but refuses commands on a subscribed
			// connection; over RESP2 rueidis keeps Pub/Sub on a connection of its own.
			AlwaysRESP2: true,
		})
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("connect embedded redis: %w", err)
		}
		return &Conn{Client: c, Embedded: true, Addr: m.Addr(), mini: m}, nil
	}
	co, err := clientOptions(opts)
	if err != nil {
		return nil, err
	}
	c, err := rueidis.NewClient(co)
	if err != nil {
		return nil, fmt.Errorf("connect redis %s: %w", strings.Join(co.InitAddress, ","), err)
	}
	return &Conn{Client: c, Addr: strings.Join(co.InitAddress, ",")}, nil
}

func clientOptions(opts ConnOptions) (rueidis.ClientOption, error) {
	var co rueidis.ClientOption
	for i, raw := range strings.Split(opts.URL, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if !strings.Contains(raw, "://") {
			raw = "redis://" + raw
		}
		one, err := rueidis.ParseURL(raw)
		if err != nil {
			// The parser quotes the URL, password included: never repeat it.
			return co, fmt.Errorf("BRIDGE_REDIS_URL: address %d is not a valid redis URL: %s", i+1,
				strings.ReplaceAll(err.Error(), raw, "<redacted>"))
		}
		if i == 0 {
			co = one
		} else {
			co.InitAddress = append(co.InitAddress, one.InitAddress...)
		}
	}
	if len(co.InitAddress) == 0 {
		return co, errors.New("BRIDGE_REDIS_URL: no address")
	}
	// Client-side caching fails on some managed Redis and the bridge reads nothing it could cache.
	co.DisableCache = true
	co.ClientName = "bridge"
	// Detect a dead server quickly so publishes fail fast (503) instead of hanging.
	co.Dialer.Timeout = 3 * time.Second
	co.ConnWriteTimeout = 5 * time.Second
	// Busy subscriptions read with XREADGROUP BLOCK (BRIDGE_HOT_WAIT) on pooled connections;
	// once they cool down, those connections are closed rather than kept for good.
	co.BlockingPoolCleanup = 10 * time.Second
	co.Dialer.KeepAlive = time.Second
	if opts.Username != "" {
		co.Username = opts.Username
	}
	if opts.Password != "" {
		co.Password = opts.Password
	}
	if opts.PasswordFile != "" {
		user := co.Username
		file := opts.PasswordFile
		if _, err := readSecretFile(file); err != nil {
			return co, fmt.Errorf("BRIDGE_REDIS_PASSWORD_FILE: %w", err)
		}
		// Re-read on every new connection so an operator can rotate the password without a restart.
		co.AuthCredentialsFn = func(rueidis.AuthCredentialsContext) (rueidis.AuthCredentials, error) {
			pw, err := readSecretFile(file)
			if err != nil {
				return rueidis.AuthCredentials{}, err
			}
			return rueidis.AuthCredentials{Username: user, Password: pw}, nil
		}
		co.Password = ""
	}
	if opts.TLSCA != "" || opts.TLSCert != "" || opts.TLSKey != "" {
		tc, err := tlsConfig(opts)
		if err != nil {
			return co, err
		}
		if co.TLSConfig != nil {
			tc.ServerName = co.TLSConfig.ServerName
		}
		co.TLSConfig = tc
	}
	if opts.SentinelMaster != "" {
		co.Sentinel.MasterSet = opts.SentinelMaster
		co.Sentinel.TLSConfig = co.TLSConfig
		co.Sentinel.TopologyRefreshInterval = 5 * time.Second
	}
	return co, nil
}

func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func tlsConfig(opts ConnOptions) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.TLSCA != "" {
		pem, err := os.ReadFile(opts.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("BRIDGE_REDIS_TLS_CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("BRIDGE_REDIS_TLS_CA: no PEM certificate found")
		}
		tc.RootCAs = pool
	}
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return nil, errors.New("BRIDGE_REDIS_TLS_CERT and BRIDGE_REDIS_TLS_KEY go together")
	}
	if opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("BRIDGE_REDIS_TLS_CERT/KEY: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
