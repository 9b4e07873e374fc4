package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/bridge-dev/bridge/internal/core"
)

// subscriptionView is a subscription as reads show it: never the secret.
type subscriptionView struct {
	*core.Subscription
	Secret string `json:"secret,omitempty"`
}

func view(s *core.Subscription) subscriptionView {
	c := *s
	c.Secret, c.PreviousSecret, c.PreviousSecretUntil = "", "", nil
	return subscriptionView{Subscription: &c}
}

type statsView struct {
	StreamLength *int64 `json:"stream_length,omitempty"`
	Lag          int64  `json:"lag"`
	Pending      int64  `json:"pending"`
	Retrying     int64  `json:"retrying"`
	DLQSize      int64  `json:"dlq_size"`
	AttemptLog   int64  `json:"attempt_log"`
	Deferred     int64  `json:"deferred"`
	Filtered     int64  `json:"filtered"`
	// The circuit breaker, when the subscription has one.
	Circuit      string     `json:"circuit,omitempty"`
	CircuitSince *time.Time `json:"circuit_since,omitempty"`
	CircuitUntil *time.Time `json:"circuit_until,omitempty"`
	CircuitFails *int       `json:"circuit_failures,omitempty"`
	InFlight     int64      `json:"in_flight"`
	Delivered    int64      `json:"delivered"`
	Retried      int64      `json:"retried"`
	DeadLettered int64      `json:"dead_lettered"`
	Lost         int64      `json:"lost"`
	Expired      int64      `json:"expired"`
	LastStatus   int64      `json:"last_status"`
	LastError    string     `json:"last_error"`
	LastPushAt   *time.Time `json:"last_push_at,omitempty"`
}

// decodeJSON reads a bounded JSON body that must be one object with only known fields.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) bool {
	return decodeJSONLimit(w, r, v, allowEmpty, maxJSONBody)
}

func decodeJSONLimit(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool, limit int64) bool {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeProblem(w, "payload_too_large", fmt.Sprintf("the JSON body exceeds %d bytes", limit))
		} else {
			writeProblem(w, "invalid_json", "could not read the request body")
		}
		return false
	}
	if allowEmpty && len(bytes.TrimSpace(raw)) == 0 {
		return true
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeProblem(w, "invalid_json", err.Error())
		return false
	}
	// Anything after the value, even a stray '}', means the client sent something else
	// than it thinks: refuse rather than guess.
	if _, err := dec.Token(); err != io.EOF {
		writeProblem(w, "invalid_json", "the body must hold exactly one JSON object, with nothing after it")
		return false
	}
	return true
}

func (a *api) name(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := param(r, "name")
	if !core.ValidName(name) {
		writeProblem(w, "invalid_name", core.SubjectRule)
		return "", false
	}
	return name, true
}

// load fetches the named subscription, answering the request itself on failure.
func (a *api) load(w http.ResponseWriter, r *http.Request) (*core.Subscription, bool) {
	name, ok := a.name(w, r)
	if !ok {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	s, err := a.b.GetSubscription(ctx, name)
	if err != nil {
		a.fail(w, r, err)
		return nil, false
	}
	return s, true
}

func (a *api) putSubscription(w http.ResponseWriter, r *http.Request) {
	name, ok := a.name(w, r)
	if !ok {
		return
	}
	var in core.SubscriptionInput
	if !decodeJSON(w, r, &in, false) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	res, err := a.reg.Apply(ctx, name, in)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.inForce(r, res.Version)
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
	}
	v := view(res.Subscription)
	v.Secret = res.Subscription.Secret
	writeJSON(w, status, v)
}

func (a *api) getSubscription(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	sv, err := a.stats(ctx, s)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, withStats{view(s), sv})
}

type withStats struct {
	subscriptionView
	Stats *statsView `json:"stats,omitempty"`
}

// stats reads one subscription's figures.
func (a *api) stats(ctx context.Context, s *core.Subscription) (*statsView, error) {
	gs, err := a.b.SubscriptionStats(ctx, s)
	if err != nil {
		return nil, err
	}
	sh := gs.Shared
	sv := &statsView{
		Lag: gs.Lag, Pending: gs.Pending, Retrying: gs.Retrying, DLQSize: gs.DLQSize, AttemptLog: gs.AttemptLog, Deferred: gs.Deferred, Filtered: sh.Filtered,
		InFlight: sh.InFlight, Delivered: sh.Delivered, Retried: sh.Retried, DeadLettered: sh.DeadLettered,
		Lost: sh.Lost, Expired: sh.Expired, LastStatus: int64(sh.LastStatus), LastError: sh.LastError,
	}
	if s.Transport == core.TransportStream {
		sv.StreamLength = &gs.StreamLength
	}
	if !sh.LastAt.IsZero() {
		sv.LastPushAt = &sh.LastAt
	}
	if s.CircuitBreaker.Failures > 0 {
		c := gs.Circuit
		sv.Circuit, sv.CircuitFails = string(c.State), &c.Failures
		if !c.Since.IsZero() {
			sv.CircuitSince = &c.Since
		}
		if !c.Until.IsZero() {
			sv.CircuitUntil = &c.Until
		}
	}
	return sv, nil
}

// maxListedStats bounds the subscriptions whose figures one listing reads: beyond it,
// ?stats=true is refused rather than holding Redis busy for one page.
const maxListedStats = 2000

func (a *api) listSubscriptions(w http.ResponseWriter, r *http.Request) {
	withFigures := false
	switch r.URL.Query().Get("stats") {
	case "", "false":
	case "true":
		withFigures = true
	default:
		writeProblem(w, "invalid_query", "stats must be true or false")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	subs, _, err := a.b.ListSubscriptions(ctx)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if withFigures && len(subs) > maxListedStats {
		writeProblem(w, "invalid_query", fmt.Sprintf("stats=true lists at most %d subscriptions; read each one's figures instead", maxListedStats))
		return
	}
	sort.Slice(subs, func(i, j int) bool { return subs[i].Name < subs[j].Name })
	views := make([]withStats, len(subs))
	for i, s := range subs {
		views[i].subscriptionView = view(s)
	}
	if withFigures {
		// Concurrent calls share the client's pipeline: a few round trips for the page.
		errs := make([]error, len(subs))
		sem := make(chan struct{}, 32)
		var wg sync.WaitGroup
		for i, s := range subs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				views[i].Stats, errs[i] = a.stats(ctx, s)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"subscriptions": views})
}

func (a *api) deleteSubscription(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	// The record first, so no process starts delivering again; then, once every process
	// stopped reading it, the Redis state. Pushes still in flight settle without writing
	// (their subscription's marker is gone with the rest).
	version, err := a.b.DeleteSubscription(ctx, s.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.inForce(r, version)
	if err := a.b.DestroySubscription(ctx, s); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) pause(w http.ResponseWriter, r *http.Request)  { a.setPaused(w, r, true) }
func (a *api) resume(w http.ResponseWriter, r *http.Request) { a.setPaused(w, r, false) }

func (a *api) setPaused(w http.ResponseWriter, r *http.Request, paused bool) {
	name, ok := a.name(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	s, version, err := a.reg.SetPaused(ctx, name, paused, "paused by API")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.inForce(r, version)
	writeJSON(w, http.StatusOK, view(s))
}

// secretView shows the signing secrets; previous_* only while a rotated-out secret still signs.
type secretView struct {
	Secret              string     `json:"secret"`
	PreviousSecret      string     `json:"previous_secret,omitempty"`
	PreviousSecretUntil *time.Time `json:"previous_secret_until,omitempty"`
}

func secrets(s *core.Subscription) secretView {
	v := secretView{Secret: s.Secret}
	if len(s.Secrets(time.Now())) > 1 {
		v.PreviousSecret, v.PreviousSecretUntil = s.PreviousSecret, s.PreviousSecretUntil
	}
	return v
}

func (a *api) secret(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, secrets(s))
}

func (a *api) rotateSecret(w http.ResponseWriter, r *http.Request) {
	name, ok := a.name(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	s, version, err := a.reg.RotateSecret(ctx, name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.inForce(r, version)
	writeJSON(w, http.StatusOK, secrets(s))
}

type seekRequest struct {
	To string `json:"to"`
}

func (a *api) seek(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	var req seekRequest
	if !decodeJSON(w, r, &req, false) {
		return
	}
	if s.Transport != core.TransportStream {
		writeProblem(w, "unsupported_transport", "seek works with the stream transport")
		return
	}
	var at time.Time
	switch {
	case req.To == "beginning", req.To == "end", core.ValidEntryID(req.To):
	default:
		t, err := time.Parse(time.RFC3339Nano, req.To)
		if err != nil {
			writeProblem(w, "invalid_json", `"to" must be "beginning", "end", a stream entry id or an RFC 3339 time`)
			return
		}
		at = t
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if err := a.b.Seek(ctx, s, req.To, at); err != nil {
		a.fail(w, r, err)
		return
	}
	a.e.Poke(s.Name)
	writeJSON(w, http.StatusOK, map[string]string{"to": req.To})
}

func (a *api) purgeDeadLetters(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	n, err := a.b.PurgeDeadLetters(ctx, s)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"purged": n})
}

// deadLetterView shows a dead letter's body once: as text when it is valid UTF-8
// ("body"), else as base64 ("body_base64"). Listings cut bodies at 64 KiB
// ("body_truncated"); GET .../dead-letters/{id} returns the whole.
type deadLetterView struct {
	ID            string            `json:"id"`
	DeadLetterID  string            `json:"dead_letter_id"`
	Reason        string            `json:"reason"`
	LastStatus    int               `json:"last_status"`
	LastError     string            `json:"last_error"`
	DeliveryCount int               `json:"delivery_count"`
	At            time.Time         `json:"dead_lettered_at"`
	Headers       map[string]string `json:"headers"`
	Body          *string           `json:"body,omitempty"`
	BodyBase64    *string           `json:"body_base64,omitempty"`
	BodySize      int               `json:"body_size"`
	BodyTruncated bool              `json:"body_truncated,omitempty"`
}

func deadLetterOf(d core.DeadLetter) deadLetterView {
	v := deadLetterView{
		ID: d.ID, DeadLetterID: d.EntryID, Reason: d.Reason, LastStatus: d.LastStatus, LastError: d.LastError,
		DeliveryCount: d.Deliveries, At: d.At, Headers: d.Headers, BodySize: d.Size, BodyTruncated: d.Truncated,
	}
	v.Body, v.BodyBase64 = showBody(d.Body, d.Truncated)
	return v
}

// showBody shows a body as text when it is valid UTF-8, else as base64. A cut body may end
// in part of a character: that part is dropped from the text.
func showBody(body []byte, truncated bool) (text, b64 *string) {
	whole := body
	if truncated {
		for i := 0; i < utf8.UTFMax-1 && len(body) > 0 && !utf8.Valid(body); i++ {
			body = body[:len(body)-1]
		}
		if !utf8.Valid(body) {
			body = whole
		}
	}
	if utf8.Valid(body) {
		t := string(body)
		return &t, nil
	}
	e := base64.StdEncoding.EncodeToString(whole)
	return nil, &e
}

func (a *api) deadLetters(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeProblem(w, "invalid_query", "limit must be an integer between 1 and 1000")
			return
		}
		limit = n
	}
	after := q.Get("after")
	if after != "" && !core.ValidEntryID(after) {
		writeProblem(w, "invalid_query", "after must be a dead_letter_id from a previous page")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	page, err := a.b.DeadLetters(ctx, s, after, limit, maxListedBody)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]deadLetterView, 0, len(page.DeadLetters))
	for _, d := range page.DeadLetters {
		out = append(out, deadLetterOf(d))
	}
	resp := map[string]any{"dead_letters": out}
	if page.More && len(out) > 0 {
		resp["next"] = out[len(out)-1].DeadLetterID
	}
	writeJSON(w, http.StatusOK, resp)
}

// maxListedBody is how much of each body a dead-letter listing shows (SPEC §9).
const maxListedBody = 64 << 10

func (a *api) deadLetter(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	id := param(r, "id")
	if len(id) > 512 {
		writeProblem(w, "not_found", "no such dead letter")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	d, err := a.b.GetDeadLetter(ctx, s, id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, deadLetterOf(d))
}

type replayRequest struct {
	IDs []string `json:"ids"`
}

func (a *api) replay(w http.ResponseWriter, r *http.Request) {
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	var req replayRequest
	if !decodeJSON(w, r, &req, true) {
		return
	}
	if len(req.IDs) > 1000 {
		writeProblem(w, "invalid_json", "at most 1000 ids per replay")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 4*requestTimeout)
	defer cancel()
	if req.IDs != nil && len(req.IDs) == 0 {
		writeJSON(w, http.StatusOK, map[string]int{"replayed": 0})
		return
	}
	// nil (no body, or no "ids") replays everything.
	n, err := a.b.ReplayDeadLetters(ctx, s, req.IDs)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if n > 0 {
		a.e.Poke(s.Name)
	}
	writeJSON(w, http.StatusOK, map[string]int{"replayed": n})
}
