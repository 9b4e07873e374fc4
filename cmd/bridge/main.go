// Command bridge turns Redis into push delivery over HTTP. Configuration comes from
// BRIDGE_* environment variables (see README.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bridge-dev/bridge/api"
	"github.com/bridge-dev/bridge/internal/auth"
	"github.com/bridge-dev/bridge/internal/broker"
	"github.com/bridge-dev/bridge/internal/config"
	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/delivery"
	httpapi "github.com/bridge-dev/bridge/internal/http"
	"github.com/bridge-dev/bridge/internal/metrics"
	"github.com/bridge-dev/bridge/internal/netguard"
	"github.com/bridge-dev/bridge/internal/registry"
	"github.com/bridge-dev/bridge/internal/retention"
	"github.com/bridge-dev/bridge/internal/schedules"
	"github.com/bridge-dev/bridge/internal/sealer"
	"github.com/bridge-dev/bridge/internal/subsfile"
	"github.com/bridge-dev/bridge/internal/tracing"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Environ())
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bridge:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, environ []string) error {
	cfg, err := config.Load(environ)
	if err != nil {
		return err
	}
	allow, err := netguard.ParseCIDRs(cfg.TargetAllowCIDRs)
	if err != nil {
		return fmt.Errorf("BRIDGE_TARGET_ALLOW_CIDRS: %w", err)
	}
	var brokerOpts []broker.Option
	if cfg.SecretKey != "" {
		sl, err := sealer.New(cfg.SecretKey)
		if err != nil {
			return fmt.Errorf("BRIDGE_SECRET_KEY: %w", err)
		}
		brokerOpts = append(brokerOpts, broker.WithSealer(sl))
	}
	log, err := newLogger(cfg)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	// OpenTelemetry: only when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set.
	stopTracing, err := tracing.Setup(ctx, "1")
	if err != nil {
		return err
	}
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(flushCtx); err != nil {
			log.Warn("could not flush traces", zap.Error(err))
		}
	}()
	if tracing.Enabled() {
		log.Info("exporting OpenTelemetry traces (OTLP over HTTP)")
	}

	conn, err := broker.Connect(broker.ConnOptions{
		URL: cfg.RedisURL, Username: cfg.RedisUsername, Password: cfg.RedisPassword,
		PasswordFile: cfg.RedisPasswordFile, TLSCA: cfg.RedisTLSCA, TLSCert: cfg.RedisTLSCert,
		TLSKey: cfg.RedisTLSKey, SentinelMaster: cfg.RedisSentinelMaster,
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	if conn.Embedded {
		log.Warn("NO BRIDGE_REDIS_URL: running on an EMBEDDED in-memory Redis-compatible server. " +
			"Nothing is durable: every message and subscription is lost when this process exits. " +
			"Set BRIDGE_REDIS_URL for real use.")
	} else {
		log.Info("redis", zap.String("addr", conn.Addr))
	}
	attemptLog := cfg.AttemptLogMax
	if cfg.AttemptRetention == 0 {
		attemptLog = 0
	}
	brokerOpts = append(brokerOpts, broker.WithAttemptLog(attemptLog))
	b := broker.New(conn.Client, brokerOpts...)
	guard := netguard.New(allow)

	mx := metrics.New()
	reg := registry.New(b, guard)
	trimmer := retention.New(b, retention.Options{
		Retention: time.Duration(cfg.Retention), MaxRetention: time.Duration(cfg.MaxRetention),
		Interval: time.Duration(cfg.TrimInterval), Logger: log.Named("retention"), Metrics: mx,
		AttemptRetention: time.Duration(cfg.AttemptRetention),
	})
	applyFile := func(ctx context.Context) error {
		if cfg.SubscriptionsFile == "" {
			return nil
		}
		applied, changed, err := subsfile.Apply(ctx, cfg.SubscriptionsFile, reg, log)
		if err != nil {
			return fmt.Errorf("BRIDGE_SUBSCRIPTIONS_FILE: %w", err)
		}
		log.Info("subscriptions file applied", zap.String("file", cfg.SubscriptionsFile),
			zap.Int("subscriptions", applied), zap.Int("changed", changed))
		return nil
	}
	engine := delivery.New(b, delivery.Options{
		Client:  delivery.NewClient(guard.Control),
		Logger:  log.Named("delivery"),
		Metrics: mx,
		// Redis lost its data (a restart without persistence): what the file declares comes back.
		RegistryLost: func(ctx context.Context) {
			if err := applyFile(ctx); err != nil {
				log.Error("could not apply the subscriptions file again", zap.Error(err))
			}
		},
		OnApply:      trimmer.SetSubscriptions,
		Touch:        trimmer.Touch,
		PollInterval: time.Duration(cfg.PollInterval),
		AttemptLog:   attemptLog > 0,
		HotWait:      time.Duration(cfg.HotWait),
	})
	mx.WatchSubscriptions(subscriptionGauges(b, engine))
	if err := applyFile(ctx); err != nil {
		return err
	}
	tokens, err := loadTokens(cfg)
	if err != nil {
		return err
	}
	// Messages written by a publish or a schedule's tick wake their subscriptions at once.
	published := func(subject string, t core.Transport) {
		if t == core.TransportStream {
			trimmer.Touch(subject)
		}
		if t != core.TransportPubSub {
			engine.Published(subject)
		}
	}
	ticker := schedules.New(b, schedules.Options{
		Logger: log.Named("schedules"),
		Published: func(subject string) {
			// A tick is a published message like any other, in the counter too.
			mx.Published(subject, string(core.TransportStream), 1)
			published(subject, core.TransportStream)
		},
	})
	handler := httpapi.NewHandler(b, reg, engine, httpapi.Options{
		Tokens:            tokens,
		MaxBody:           int64(cfg.MaxBody),
		MaxBatchBody:      int64(cfg.MaxBatchBody),
		IdempotencyWindow: time.Duration(cfg.IdempotencyWindow),
		OpenAPI:           api.OpenAPI,
		Metrics:           mx,
		MetricsHandler:    mx.Handler(),
		Published:         published,
		Logger:            log.Named("http"),
	})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("BRIDGE_LISTEN: %w", err)
	}
	srv := httpapi.NewServer(handler, log)
	if tokens == nil {
		log.Warn("no BRIDGE_TOKEN or BRIDGE_TOKENS_FILE: the API is open to anyone who can reach " + ln.Addr().String())
	} else {
		log.Info("API tokens loaded", zap.Int("tokens", tokens.Current().Len()))
	}
	if cfg.PprofListen != "" {
		prof := httpapi.NewPprofServer(cfg.PprofListen)
		go func() {
			if err := prof.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("BRIDGE_PPROF_LISTEN", zap.Error(err))
			}
		}()
		defer prof.Close()
		log.Info("profiles served", zap.String("addr", cfg.PprofListen))
	}
	engine.Start()
	trimmer.Start()
	ticker.Start()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("bridge listening", zap.String("addr", ln.Addr().String()))

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
wait:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", zap.Duration("grace", time.Duration(cfg.ShutdownGrace)))
			break wait
		case err := <-serveErr:
			log.Error("http server failed", zap.Error(err))
			break wait
		case <-hup:
			reloadTokens(cfg, tokens, log)
		}
	}

	// Order matters: stop taking requests, stop reading Redis and let in-flight pushes
	// finish and settle, and only then close the Redis client (deferred above).
	graceCtx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.ShutdownGrace))
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		log.Warn("http shutdown incomplete", zap.Error(err))
	}
	ticker.Stop()  // a tick cut short is published whole or not at all, and fired by another process
	trimmer.Stop() // cancels a pass in progress; trimming is never urgent
	if err := engine.Shutdown(graceCtx); err != nil {
		log.Warn("grace period over; unfinished pushes stay pending and will be reclaimed", zap.Error(err))
	}
	log.Info("stopped")
	return nil
}

// loadTokens builds the token store from BRIDGE_TOKEN and BRIDGE_TOKENS_FILE; nil when the
// API runs open.
func loadTokens(cfg *config.Config) (*auth.Store, error) {
	if cfg.OpenWithoutToken() {
		return nil, nil
	}
	set := auth.Static(cfg.Token)
	if cfg.TokensFile != "" {
		file, err := auth.Load(cfg.TokensFile)
		if err != nil {
			return nil, fmt.Errorf("BRIDGE_TOKENS_FILE: %w", err)
		}
		if set, err = auth.Merge(set, file); err != nil {
			return nil, fmt.Errorf("BRIDGE_TOKENS_FILE: %w", err)
		}
	}
	return auth.NewStore(set), nil
}

// reloadTokens re-reads BRIDGE_TOKENS_FILE on SIGHUP; a bad file keeps the tokens in force.
func reloadTokens(cfg *config.Config, tokens *auth.Store, log *zap.Logger) {
	if tokens == nil || cfg.TokensFile == "" {
		log.Info("SIGHUP: no BRIDGE_TOKENS_FILE to reload")
		return
	}
	var static *auth.Set
	if cfg.Token != "" {
		static = auth.Static(cfg.Token)
	}
	if err := tokens.Reload(cfg.TokensFile, static); err != nil {
		log.Error("SIGHUP: BRIDGE_TOKENS_FILE not reloaded; the previous tokens stay in force", zap.Error(err))
		return
	}
	log.Info("SIGHUP: tokens reloaded", zap.Int("tokens", tokens.Current().Len()))
}

// subscriptionGauges reads every subscription's Redis-side figures for a metrics scrape.
func subscriptionGauges(b *broker.Broker, e *delivery.Engine) metrics.GaugeSource {
	return func(ctx context.Context) ([]metrics.SubscriptionGauges, error) {
		subs, _, err := b.ListSubscriptions(ctx)
		if err != nil {
			return nil, err
		}
		out := make([]metrics.SubscriptionGauges, 0, len(subs))
		for _, s := range subs {
			st, err := b.SubscriptionStats(ctx, s)
			if err != nil {
				return out, err
			}
			out = append(out, metrics.SubscriptionGauges{
				Name: s.Name, Lag: st.Lag, Pending: st.Pending, Retrying: st.Retrying, DLQSize: st.DLQSize,
				AttemptLog: st.AttemptLog, CircuitOpen: circuitOpen(st.Circuit), InFlight: e.LocalStats(s.Name).InFlight,
			})
		}
		return out, nil
	}
}

func circuitOpen(c core.Circuit) int {
	if c.State == core.CircuitOpen || c.State == core.CircuitHalfOpen {
		return 1
	}
	return 0
}

func newLogger(cfg *config.Config) (*zap.Logger, error) {
	level, err := cfg.ZapLevel()
	if err != nil {
		return nil, err
	}
	var zc zap.Config
	if cfg.LogFormat == "console" {
		zc = zap.NewDevelopmentConfig()
	} else {
		zc = zap.NewProductionConfig()
		zc.EncoderConfig.TimeKey = "time"
		zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	}
	// "grace":"30s", not "grace":30: a duration is read by people first.
	zc.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Sampling = nil
	zc.DisableStacktrace = level > zapcore.DebugLevel
	return zc.Build()
}
