// Package config reads the bridge's configuration from BRIDGE_* environment variables.
package config

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/caarlos0/env/v11"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap/zapcore"
)

// Prefix of every variable.
const Prefix = "BRIDGE_"

// Defaults (SPEC §7).
const (
	DefaultListen        = "127.0.0.1:8080"
	DefaultMaxBody       = 1 << 20
	DefaultShutdownGrace = 30 * time.Second
)

// ByteSize is a size such as "1MiB", "512KB" or "1048576".
type ByteSize int64

// UnmarshalText parses a human size.
func (b *ByteSize) UnmarshalText(text []byte) error {
	n, err := humanize.ParseBytes(string(text))
	if err != nil {
		return fmt.Errorf("invalid size %q (examples: 1MiB, 512KiB, 1048576)", text)
	}
	if n == 0 || n > 1<<30 {
		return fmt.Errorf("size %q out of range (1 byte to 1GiB)", text)
	}
	*b = ByteSize(n)
	return nil
}

// Duration is a duration variable: a Go duration ("30s", "1h30m") or whole seconds ("30"),
// as everywhere in the bridge (SPEC §7).
type Duration time.Duration

// UnmarshalText parses a Go duration or whole seconds.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := core.ParseDuration(string(text))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// String prints the duration with its unit.
func (d Duration) String() string { return time.Duration(d).String() }

// Config is the whole configuration of one bridge process.
type Config struct {
	Listen              string   `env:"LISTEN" envDefault:"127.0.0.1:8080"`
	RedisURL            string   `env:"REDIS_URL"`
	RedisUsername       string   `env:"REDIS_USERNAME"`
	RedisPassword       string   `env:"REDIS_PASSWORD"`
	RedisPasswordFile   string   `env:"REDIS_PASSWORD_FILE"`
	RedisTLSCA          string   `env:"REDIS_TLS_CA"`
	RedisTLSCert        string   `env:"REDIS_TLS_CERT"`
	RedisTLSKey         string   `env:"REDIS_TLS_KEY"`
	RedisSentinelMaster string   `env:"REDIS_SENTINEL_MASTER"`
	Token               string   `env:"TOKEN"`
	TokensFile          string   `env:"TOKENS_FILE"`
	Auth                string   `env:"AUTH"`
	TargetAllowCIDRs    string   `env:"TARGET_ALLOW_CIDRS"`
	MaxBody             ByteSize `env:"MAX_BODY" envDefault:"1MiB"`
	MaxBatchBody        ByteSize `env:"MAX_BATCH_BODY" envDefault:"16MiB"`
	IdempotencyWindow   Duration `env:"IDEMPOTENCY_WINDOW" envDefault:"24h"`
	SubscriptionsFile   string   `env:"SUBSCRIPTIONS_FILE"`
	SecretKey           string   `env:"SECRET_KEY"`
	ShutdownGrace       Duration `env:"SHUTDOWN_GRACE" envDefault:"30s"`
	Retention           Duration `env:"RETENTION" envDefault:"1h"`
	MaxRetention        Duration `env:"MAX_RETENTION" envDefault:"168h"`
	TrimInterval        Duration `env:"TRIM_INTERVAL" envDefault:"10s"`
	AttemptRetention    Duration `env:"ATTEMPT_RETENTION" envDefault:"24h"`
	AttemptLogMax       int      `env:"ATTEMPT_LOG_MAX" envDefault:"100000"`
	PollInterval        Duration `env:"POLL_INTERVAL" envDefault:"1s"`
	HotWait             Duration `env:"HOT_WAIT" envDefault:"50ms"`
	PprofListen         string   `env:"PPROF_LISTEN"`
	LogLevel            string   `env:"LOG_LEVEL" envDefault:"info"`
	LogFormat           string   `env:"LOG_FORMAT" envDefault:"json"`
}

// Load reads the configuration from environ (os.Environ() form) and validates it. Every
// error names the variable at fault, in one line.
func Load(environ []string) (*Config, error) {
	var c Config
	err := env.ParseWithOptions(&c, env.Options{Prefix: Prefix, Environment: env.ToMap(environ)})
	if err != nil {
		return nil, describe(err)
	}
	return &c, c.Validate()
}

// describe turns caarlos0/env's errors, which name struct fields, into one line naming the variable.
func describe(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) || len(agg.Errors) == 0 {
		return err
	}
	var pe env.ParseError
	if errors.As(agg.Errors[0], &pe) {
		return fmt.Errorf("%s: %v", varName(pe.Name), pe.Err)
	}
	return agg.Errors[0]
}

func varName(field string) string {
	f, ok := reflect.TypeOf(Config{}).FieldByName(field)
	if !ok {
		return field
	}
	return Prefix + f.Tag.Get("env")
}

// Validate rejects impossible values and combinations.
func (c *Config) Validate() error {
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("BRIDGE_LISTEN: %q is not host:port", c.Listen)
	}
	if c.Auth != "" && c.Auth != "none" {
		return fmt.Errorf("BRIDGE_AUTH: only \"none\" is accepted (to run without tokens on a non-loopback address), got %q", c.Auth)
	}
	if c.Token != "" && len(c.Token) < 16 {
		return errors.New("BRIDGE_TOKEN: must be at least 16 characters")
	}
	if c.Auth == "none" && (c.Token != "" || c.TokensFile != "") {
		return errors.New("BRIDGE_AUTH: none contradicts BRIDGE_TOKEN / BRIDGE_TOKENS_FILE")
	}
	if c.OpenWithoutToken() && c.Auth != "none" && !isLoopback(host) {
		return fmt.Errorf("BRIDGE_TOKEN: a token (or BRIDGE_TOKENS_FILE) is required when BRIDGE_LISTEN (%s) is not a loopback address; set BRIDGE_AUTH=none to run an open API deliberately", c.Listen)
	}
	if c.ShutdownGrace < 0 || c.ShutdownGrace > Duration(time.Hour) {
		return fmt.Errorf("BRIDGE_SHUTDOWN_GRACE: %s out of range (0 to 1h)", c.ShutdownGrace)
	}
	if c.IdempotencyWindow < Duration(time.Second) || c.IdempotencyWindow > Duration(30*24*time.Hour) {
		return fmt.Errorf("BRIDGE_IDEMPOTENCY_WINDOW: %s out of range (1s to 720h)", c.IdempotencyWindow)
	}
	if c.Retention > Duration(366*24*time.Hour) {
		return fmt.Errorf("BRIDGE_RETENTION: %s out of range (0 to 8784h)", c.Retention)
	}
	if c.MaxRetention != 0 && c.MaxRetention <= c.Retention {
		return fmt.Errorf("BRIDGE_MAX_RETENTION: %s must exceed BRIDGE_RETENTION (%s), or be 0 for no hard cap", c.MaxRetention, c.Retention)
	}
	if c.AttemptRetention < 0 || c.AttemptRetention > Duration(366*24*time.Hour) {
		return fmt.Errorf("BRIDGE_ATTEMPT_RETENTION: %s out of range (0 to 8784h; 0 turns the attempt log off)", c.AttemptRetention)
	}
	if c.AttemptLogMax < 0 || c.AttemptLogMax > 10_000_000 {
		return fmt.Errorf("BRIDGE_ATTEMPT_LOG_MAX: %d out of range (0 to 10000000; 0 turns the attempt log off)", c.AttemptLogMax)
	}
	if c.PprofListen != "" {
		h, _, err := net.SplitHostPort(c.PprofListen)
		if err != nil || !isLoopback(h) {
			return fmt.Errorf("BRIDGE_PPROF_LISTEN: %q must be a loopback host:port (profiles expose the process's memory)", c.PprofListen)
		}
	}
	if c.HotWait < 0 || c.HotWait > Duration(time.Second) || (c.HotWait > 0 && c.HotWait < Duration(time.Millisecond)) {
		return fmt.Errorf("BRIDGE_HOT_WAIT: %s out of range (0 to turn it off, or 1ms to 1s)", c.HotWait)
	}
	if c.PollInterval < Duration(50*time.Millisecond) || c.PollInterval > Duration(time.Minute) {
		return fmt.Errorf("BRIDGE_POLL_INTERVAL: %s out of range (50ms to 1m)", c.PollInterval)
	}
	if c.TrimInterval < Duration(100*time.Millisecond) || c.TrimInterval > Duration(time.Hour) {
		return fmt.Errorf("BRIDGE_TRIM_INTERVAL: %s out of range (100ms to 1h)", c.TrimInterval)
	}
	if c.MaxBatchBody < c.MaxBody {
		return errors.New("BRIDGE_MAX_BATCH_BODY: must be at least BRIDGE_MAX_BODY")
	}
	if _, err := c.ZapLevel(); err != nil {
		return err
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		return fmt.Errorf("BRIDGE_LOG_FORMAT: %q is not json or console", c.LogFormat)
	}
	if c.RedisURL == "" && (c.RedisSentinelMaster != "" || c.RedisTLSCA != "" || c.RedisTLSCert != "" || c.RedisPasswordFile != "") {
		return errors.New("BRIDGE_REDIS_URL: required when other BRIDGE_REDIS_* settings are given")
	}
	if c.RedisPassword != "" && c.RedisPasswordFile != "" {
		return errors.New("BRIDGE_REDIS_PASSWORD_FILE: set either it or BRIDGE_REDIS_PASSWORD, not both")
	}
	for _, u := range strings.Split(c.RedisURL, ",") {
		u = strings.TrimSpace(u)
		if u == "" || !strings.Contains(u, "://") {
			continue
		}
		scheme, _, _ := strings.Cut(u, "://")
		if scheme != "redis" && scheme != "rediss" && scheme != "unix" {
			return fmt.Errorf("BRIDGE_REDIS_URL: scheme %q is not redis, rediss or unix", scheme)
		}
	}
	return nil
}

// ZapLevel is BRIDGE_LOG_LEVEL as a zap level.
func (c *Config) ZapLevel() (zapcore.Level, error) {
	l, err := zapcore.ParseLevel(c.LogLevel)
	if err != nil {
		return l, fmt.Errorf("BRIDGE_LOG_LEVEL: %q is not debug, info, warn or error", c.LogLevel)
	}
	return l, nil
}

// OpenWithoutToken reports whether the API runs without authentication (loopback or BRIDGE_AUTH=none).
func (c *Config) OpenWithoutToken() bool { return c.Token == "" && c.TokensFile == "" }

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
