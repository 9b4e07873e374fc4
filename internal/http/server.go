// Package httpapi is the bridge's REST API (SPEC §4) on chi: publish, subscriptions,
// dead letters and the operational endpoints. Every error is problem+json with a stable code.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/auth"
	"github.com/bridge-dev/bridge/internal/console"
	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/registry"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/zap"
)

// Broker is what the API needs from Redis. *broker.Broker implements it.
type Broker interface {
	Ping(ctx context.Context) error
	SubscriptionsVersion(ctx context.Context) (int64, error)
	Publish(ctx context.Context, subject string, body []byte, headers map[string]string) (string, error)
	PublishList(ctx context.Context, subject string, body []byte, headers map[string]string) (string, error)
	PublishPubSub(ctx context.Context, subject string, body []byte, headers map[string]string, sharded bool) (string, int64, error)
	PublishMany(ctx context.Context, subject string, msgs []core.Outgoing, window time.Duration) []core.Published
	DestroySubscription(ctx context.Context, s *core.Subscription) error
	GetSubscription(ctx context.Context, name string) (*core.Subscription, error)
	ListSubscriptions(ctx context.Context) ([]*core.Subscription, int64, error)
	DeleteSubscription(ctx context.Context, name string) (int64, error)
	DeadLetters(ctx context.Context, s *core.Subscription, after string, limit, cut int) (core.DeadLetterPage, error)
	GetDeadLetter(ctx context.Context, s *core.Subscription, id string) (core.DeadLetter, error)
	SettleDeferred(ctx context.Context, s *core.Subscription, id, tokenHash, process string, act core.DeferredAction) error
	Attempts(ctx context.Context, s *core.Subscription, q core.AttemptQuery) (core.AttemptPage, error)
	LookupMessage(ctx context.Context, id string, subs []*core.Subscription) (core.MessageView, bool, error)
	ReplayDeadLetters(ctx context.Context, s *core.Subscription, ids []string) (int, error)
	SubscriptionStats(ctx context.Context, s *core.Subscription) (core.GroupStats, error)
	Seek(ctx context.Context, s *core.Subscription, to string, at time.Time) error
	PurgeDeadLetters(ctx context.Context, s *core.Subscription) (int64, error)
	PutSchedule(ctx context.Context, s *core.Schedule) (replaced bool, err error)
	GetSchedule(ctx context.Context, name string) (*core.Schedule, error)
	ListSchedules(ctx context.Context) ([]*core.Schedule, int64, error)
	DeleteSchedule(ctx context.Context, name string) error
	ScheduleLastRuns(ctx context.Context, scheds []*core.Schedule) (map[string]time.Time, error)
}

// Registry applies subscription changes. *registry.Registry implements it.
type Registry interface {
	Apply(ctx context.Context, name string, in core.SubscriptionInput) (registry.Result, error)
	SetPaused(ctx context.Context, name string, paused bool, reason string) (*core.Subscription, int64, error)
	RotateSecret(ctx context.Context, name string) (*core.Subscription, int64, error)
}

// Engine is what the API needs from the delivery engine.
type Engine interface {
	Running() bool
	// Sync returns once every live process applied the registry change of the given
	// version (bounded, see delivery.SyncWait).
	Sync(ctx context.Context, version int64) error
	// Poke makes a subscription read at once (after a seek or a replay).
	Poke(name string)
	// Consumer names this process (in the attempt log).
	Consumer() string
}

// Options configure the API.
type Options struct {
	// Tokens, when set, authenticate every /v1 route and scope what each caller may do.
	// Nil leaves the API open (the configuration only allows that on loopback or by choice).
	Tokens *auth.Store
	// MaxBody bounds a published message (413 above it).
	MaxBody int64
	// MaxBatchBody bounds a batch publish request (413 above it); default 16 MiB.
	MaxBatchBody int64
	// IdempotencyWindow is how long an Idempotency-Key is remembered; default 24 h.
	IdempotencyWindow time.Duration
	// OpenAPI is the document served at /openapi.yaml.
	OpenAPI []byte
	Logger  *zap.Logger
	// Metrics records what the API does; nil records nothing.
	Metrics Metrics
	// MetricsHandler, when set, is served at GET /metrics (no token: scrapers rarely carry one).
	MetricsHandler http.Handler
	// Published, when set, is called after messages were written to a subject (the engine
	// wakes its subscriptions; the retention trimmer looks at subjects with traffic). It
	// runs on the request's goroutine: it must be cheap.
	Published func(subject string, transport core.Transport)
}

// Metrics is what the API reports.
type Metrics interface {
	Published(subject, transport string, n int)
	PublishError(code string)
}

type noMetrics struct{}

func (noMetrics) Published(string, string, int) {}
func (noMetrics) PublishError(string)           {}

// maxJSONBody bounds every JSON request body other than a published message.
const maxJSONBody = 64 << 10

// requestTimeout bounds the Redis work of one request.
const requestTimeout = 5 * time.Second

type api struct {
	b    Broker
	reg  Registry
	e    Engine
	opts Options
	log  *zap.Logger
	// deadlines bounds the Redis work of single publishes (see sharedDeadlines).
	deadlines sharedDeadlines
	// native lets Server answer the plain publish itself (servePublish).
	native bool
}

// NewHandler returns the API's HTTP handler.
func NewHandler(b Broker, reg Registry, e Engine, opts Options) *Handler {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Metrics == nil {
		opts.Metrics = noMetrics{}
	}
	if opts.MaxBatchBody <= 0 {
		opts.MaxBatchBody = 16 << 20
	}
	if opts.IdempotencyWindow <= 0 {
		opts.IdempotencyWindow = 24 * time.Hour
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = 1 << 20
	}
	if opts.Published == nil {
		opts.Published = func(string, core.Transport) {}
	}
	a := &api{b: b, reg: reg, e: e, opts: opts, log: opts.Logger}
	// With debug logs on, every request is logged by the chi chain: no native publish.
	a.native = !opts.Logger.Core().Enabled(zap.DebugLevel)
	r := chi.NewRouter()
	// Per-request logging costs a wrapped writer and a request id on every call: only when
	// debug logs are on. Failures are logged where they happen, with an id of their own.
	var top []func(http.Handler) http.Handler
	if opts.Logger.Core().Enabled(zap.DebugLevel) {
		top = append(top, middleware.RequestID, a.logRequests)
	}
	top = append(top, a.recoverer)
	r.Use(top...)
	r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
		writeProblem(w, "not_found", "no such route")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, _ *http.Request) {
		writeProblem(w, "method_not_allowed", "this route does not take that method")
	})
	healthz := func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
	// Load balancers and uptime checks often probe with HEAD.
	r.Get("/healthz", healthz)
	r.Head("/healthz", healthz)
	r.Get("/readyz", a.ready)
	r.Head("/readyz", a.ready)
	if opts.MetricsHandler != nil {
		r.Method(http.MethodGet, "/metrics", opts.MetricsHandler)
	}
	r.Get("/openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(opts.OpenAPI)
	})
	// The console is a static page: it needs no token to load, and signs its API calls
	// with the one the user gives it.
	r.Get("/console", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/", http.StatusMovedPermanently)
	})
	r.Mount("/console/", console.Handler())
	// The API's routes sit on the root router with their /v1 prefix: a mounted /v1
	// sub-router cost every request (every publish) a second route lookup.
	//
	// A deferred message is settled by its handler with the lease token its push carried,
	// which proves the delivery: no API token (SPEC §10).
	r.Post("/v1/subscriptions/{name}/messages/{id}/{action}", a.settleDeferred)
	r.Group(a.authenticated)
	// The publish route's chain as chi runs it: every middleware above, then authenticated's.
	publish := chi.Chain(slices.Concat(top, a.publishMiddlewares())...).HandlerFunc(a.publish)
	return &Handler{h: publishRoute(r, publish), api: a}
}

// publishMiddlewares are what a publish runs through inside the authenticated routes.
func (a *api) publishMiddlewares() []func(http.Handler) http.Handler {
	return []func(http.Handler) http.Handler{a.authenticate, a.countPublishErrors, a.require(auth.ActionPublish)}
}

// publishRoute serves the publish of a plain subject, the hot path, through publish (the
// same chain chi would run) on a one-route http.ServeMux: chi's route context, request copy
// and path-value map cost every publish about 740 bytes and 4% of its CPU. Everything else
// goes to router: other routes, an escaped path, a subject the rule refuses (which the
// handler answers 400). It is router to whoever walks the routes.
func publishRoute(router *chi.Mux, publish http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/subjects/{subject}/messages", publish)
	// Under GODEBUG=httpmuxgo121=1 a ServeMux knows no methods or wildcards: chi serves all.
	probe := &http.Request{Method: http.MethodPost, Host: "bridge", URL: &url.URL{Path: "/v1/subjects/a/messages"}}
	if _, pattern := mux.Handler(probe); pattern == "" {
		return router
	}
	return &publishRouter{Mux: router, publish: mux}
}

type publishRouter struct {
	*chi.Mux
	publish *http.ServeMux
}

func (p *publishRouter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.RawPath == "" {
		if rest, ok := strings.CutPrefix(r.URL.Path, "/v1/subjects/"); ok {
			// A valid subject holds nothing a path escapes, and no '/': both routers would
			// match it, with the same parameter.
			if subject, ok := strings.CutSuffix(rest, "/messages"); ok && core.ValidSubject(subject) {
				p.publish.ServeHTTP(w, r)
				return
			}
		}
	}
	p.Mux.ServeHTTP(w, r)
}

// authenticated adds the routes that take a bearer token.
func (a *api) authenticated(r chi.Router) {
	mws := a.publishMiddlewares()
	r.Use(mws[0])
	publish := r.With(mws[1:]...)
	publish.Post("/v1/subjects/{subject}/messages", a.publish)
	publish.Post("/v1/subjects/{subject}/batch", a.publishBatch)
	read := a.require(auth.ActionSubscriptionsRead)
	write := a.require(auth.ActionSubscriptionsWrite)
	dlq := a.require(auth.ActionDeadLettersWrite)
	r.Get("/v1/whoami", a.whoami)
	r.With(read).Get("/v1/messages/{id}", a.message)
	r.With(read).Get("/v1/subscriptions", a.listSubscriptions)
	r.Route("/v1/subscriptions/{name}", func(r chi.Router) {
		r.With(write).Put("/", a.putSubscription)
		r.With(read).Get("/", a.getSubscription)
		r.With(write).Delete("/", a.deleteSubscription)
		r.With(write).Post("/pause", a.pause)
		r.With(write).Post("/resume", a.resume)
		// The secret lets its holder forge pushes: reading it takes the write scope.
		r.With(write).Get("/secret", a.secret)
		r.With(write).Post("/secret/rotate", a.rotateSecret)
		r.With(write).Post("/seek", a.seek)
		r.With(read).Get("/attempts", a.attempts)
		r.With(read).Get("/dead-letters", a.deadLetters)
		r.With(read).Get("/dead-letters/{id}", a.deadLetter)
		r.With(dlq).Delete("/dead-letters", a.purgeDeadLetters)
		r.With(dlq).Post("/dead-letters/replay", a.replay)
	})
	sread := a.require(auth.ActionSchedulesRead)
	swrite := a.require(auth.ActionSchedulesWrite)
	r.With(sread).Get("/v1/schedules", a.listSchedules)
	r.Route("/v1/schedules/{name}", func(r chi.Router) {
		r.With(swrite).Put("/", a.putSchedule)
		r.With(sread).Get("/", a.getSchedule)
		r.With(swrite).Delete("/", a.deleteSchedule)
		r.With(swrite).Post("/pause", a.pauseSchedule)
		r.With(swrite).Post("/resume", a.resumeSchedule)
	})
}

func (a *api) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	if err := a.b.Ping(ctx); err != nil {
		writeProblem(w, "not_ready", "redis is not reachable")
		return
	}
	// Reachable is not enough: a registry the bridge cannot read delivers nothing.
	if _, err := a.b.SubscriptionsVersion(ctx); err != nil {
		writeProblem(w, "not_ready", "the subscription registry cannot be read: "+err.Error())
		return
	}
	if !a.e.Running() {
		writeProblem(w, "not_ready", "the delivery engine is not running")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

type principalKey struct{}

// authenticate identifies the caller by bearer token (compared in constant time, see
// auth.Set.Authenticate); 401 with WWW-Authenticate when it is missing or unknown.
func (a *api) authenticate(next http.Handler) http.Handler {
	if a.opts.Tokens == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="bridge"`)
			writeProblem(w, "unauthorized", "a bearer token is required")
			return
		}
		p, ok := a.opts.Tokens.Current().Authenticate(strings.TrimSpace(tok))
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="bridge", error="invalid_token"`)
			writeProblem(w, "unauthorized", "the bearer token is not valid")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// require answers 403 insufficient_scope (RFC 6750) unless the caller may do action; the
// resource of a publish is its subject.
func (a *api) require(action auth.Action) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if a.opts.Tokens == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			resource := ""
			if action == auth.ActionPublish {
				resource = param(r, "subject")
			}
			if a.allowed(w, r, action, resource, "the token lacks the scope ") {
				next.ServeHTTP(w, r)
			}
		})
	}
}

// allowed reports whether the caller may do action on resource; when it may not, it
// answers 403 insufficient_scope naming the scope, after why.
func (a *api) allowed(w http.ResponseWriter, r *http.Request, action auth.Action, resource, why string) bool {
	if a.opts.Tokens == nil {
		return true
	}
	p, _ := r.Context().Value(principalKey{}).(*auth.Principal)
	if p != nil && p.Allows(action, resource) {
		return true
	}
	scope := auth.Scope(action, resource)
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="bridge", error="insufficient_scope", scope=%q`, scope))
	writeProblem(w, "forbidden", why+scope)
	return false
}

func (a *api) countPublishErrors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr := &problemRecorder{ResponseWriter: w}
		next.ServeHTTP(pr, r)
		if pr.code != "" {
			a.opts.Metrics.PublishError(pr.code)
		}
	})
}

func (a *api) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		start := time.Now()
		next.ServeHTTP(ww, r)
		level := zap.DebugLevel
		if ww.Status() >= 500 {
			level = zap.WarnLevel
		}
		if ce := a.log.Check(level, "request"); ce != nil {
			ce.Write(zap.String("method", r.Method), zap.String("path", r.URL.Path),
				zap.Int("status", ww.Status()), zap.Duration("duration", time.Since(start)),
				zap.String("request_id", middleware.GetReqID(r.Context())))
		}
	})
}

func (a *api) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				a.log.Error("panic in handler", zap.Any("panic", v), zap.String("path", r.URL.Path), zap.Stack("stack"))
				writeProblem(w, "internal", "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// inForce makes a registry change in force in every live process before the request is
// answered (SPEC §4). A process that does not confirm in time is logged; the change is
// stored and it applies it as soon as it can.
func (a *api) inForce(r *http.Request, version int64) {
	if version == 0 {
		return
	}
	if err := a.e.Sync(r.Context(), version); err != nil {
		a.log.Warn("change answered before every process confirmed it", zap.String("path", r.URL.Path), zap.Error(err))
	}
}

// fail maps a broker error to its problem.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	a.failPath(w, r.URL.Path, middleware.GetReqID(r.Context()), err)
}

// failPath is fail for a request on path, with id its request id if it has one.
func (a *api) failPath(w http.ResponseWriter, path, id string, err error) {
	var ie *registry.InputError
	switch {
	case errors.As(err, &ie):
		writeProblem(w, ie.Code, ie.Detail)
	case errors.Is(err, core.ErrNotFound):
		writeProblem(w, "not_found", err.Error())
	case errors.Is(err, core.ErrWrongType):
		writeProblem(w, "wrong_type", "a Redis key the request needs holds another type of value")
	case errors.Is(err, core.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		a.log.Warn("redis unavailable", zap.String("path", path), zap.Error(err))
		writeProblem(w, "redis_unavailable", "redis did not confirm the operation; retry later")
	default:
		if id == "" {
			var b [6]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		a.log.Error("request failed", zap.String("path", path), zap.String("request_id", id), zap.Error(err))
		writeProblem(w, "internal", fmt.Sprintf("request failed (request id %s)", id))
	}
}
