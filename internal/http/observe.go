package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/auth"
	"github.com/bridge-dev/bridge/internal/core"
	"github.com/go-chi/chi/v5"
)

// The read side of SPEC §9: who am I, a subscription's attempts, and one message.

type whoamiView struct {
	Name   string   `json:"name"`
	Auth   bool     `json:"auth"`
	Scopes []string `json:"scopes"`
	Can    struct {
		Read           bool `json:"read"`
		Write          bool `json:"write"`
		DeadLetters    bool `json:"dead_letters"`
		Publish        bool `json:"publish"`
		SchedulesRead  bool `json:"schedules_read"`
		SchedulesWrite bool `json:"schedules_write"`
	} `json:"can"`
}

// whoami tells a caller (the console) what its token may do, so it offers only that.
func (a *api) whoami(w http.ResponseWriter, r *http.Request) {
	var v whoamiView
	p, _ := r.Context().Value(principalKey{}).(*auth.Principal)
	if a.opts.Tokens == nil || p == nil {
		v.Name, v.Scopes = "anonymous", []string{"admin"}
		v.Can.Read, v.Can.Write, v.Can.DeadLetters, v.Can.Publish = true, true, true, true
		v.Can.SchedulesRead, v.Can.SchedulesWrite = true, true
		writeJSON(w, http.StatusOK, v)
		return
	}
	v.Name, v.Auth, v.Scopes = p.Name, true, p.Scopes()
	if v.Scopes == nil {
		v.Scopes = []string{}
	}
	v.Can.Read = p.Allows(auth.ActionSubscriptionsRead, "")
	v.Can.Write = p.Allows(auth.ActionSubscriptionsWrite, "")
	v.Can.DeadLetters = p.Allows(auth.ActionDeadLettersWrite, "")
	v.Can.Publish = p.MayPublish()
	v.Can.SchedulesRead = p.Allows(auth.ActionSchedulesRead, "")
	v.Can.SchedulesWrite = p.Allows(auth.ActionSchedulesWrite, "")
	writeJSON(w, http.StatusOK, v)
}

type attemptView struct {
	ID        string    `json:"id"`
	MessageID string    `json:"message_id"`
	Delivery  int       `json:"delivery"`
	At        time.Time `json:"at"`
	Status    int       `json:"status"`
	Error     string    `json:"error,omitempty"`
	LatencyMS float64   `json:"latency_ms"`
	Outcome   string    `json:"outcome"`
	Process   string    `json:"process,omitempty"`
}

func attemptOf(at core.Attempt) attemptView {
	return attemptView{
		ID: at.Cursor, MessageID: at.MessageID, Delivery: at.Delivery, At: at.At, Status: at.Status, Error: at.Error,
		LatencyMS: float64(at.Latency.Microseconds()) / 1000, Outcome: at.Outcome, Process: at.Process,
	}
}

func attemptsOf(in []core.Attempt) []attemptView {
	out := make([]attemptView, len(in))
	for i, at := range in {
		out[i] = attemptOf(at)
	}
	return out
}

// Listing bounds of the attempt log.
const (
	defaultAttempts = 50
	maxAttempts     = 500
)

func validOutcome(o string) bool {
	switch o {
	case core.OutcomeAck, core.OutcomeRetry, core.OutcomeDeadLetter, core.OutcomeFiltered, core.OutcomeDeferred, core.OutcomeFailed:
		return true
	}
	return false
}

func (a *api) attempts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	query := core.AttemptQuery{Limit: defaultAttempts, Before: q.Get("before"), Outcome: q.Get("outcome")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxAttempts {
			writeProblem(w, "invalid_query", "limit must be a number from 1 to "+strconv.Itoa(maxAttempts))
			return
		}
		query.Limit = n
	}
	if query.Before != "" && !core.ValidEntryID(query.Before) {
		writeProblem(w, "invalid_query", "before must be an attempt id (the id or next of an earlier page)")
		return
	}
	if query.Outcome != "" && !validOutcome(query.Outcome) {
		writeProblem(w, "invalid_query", "outcome must be one of ack, retry, dead_letter, filtered, deferred, failed")
		return
	}
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	page, err := a.b.Attempts(ctx, s, query)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	resp := map[string]any{"attempts": attemptsOf(page.Attempts)}
	if page.Next != "" {
		resp["next"] = page.Next
	}
	writeJSON(w, http.StatusOK, resp)
}

type messageView struct {
	ID            string             `json:"id"`
	Subject       string             `json:"subject"`
	Transport     core.Transport     `json:"transport,omitempty"`
	PublishedAt   *time.Time         `json:"published_at,omitempty"`
	Headers       map[string]string  `json:"headers,omitempty"`
	Body          *string            `json:"body,omitempty"`
	BodyBase64    *string            `json:"body_base64,omitempty"`
	BodySize      *int               `json:"body_size,omitempty"`
	BodyTruncated bool               `json:"body_truncated,omitempty"`
	Subscriptions []messageStateView `json:"subscriptions"`
}

type messageStateView struct {
	Name     string        `json:"name"`
	State    string        `json:"state"`
	Attempts []attemptView `json:"attempts"`
}

// message shows one message and where it stands for each subscription of its subject.
func (a *api) message(w http.ResponseWriter, r *http.Request) {
	id := param(r, "id")
	ctx, cancel := context.WithTimeout(r.Context(), 2*requestTimeout)
	defer cancel()
	subs, _, err := a.b.ListSubscriptions(ctx)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	m, found, err := a.b.LookupMessage(ctx, id, subs)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !found {
		writeProblem(w, "not_found", "no message with this id (it may have left retention)")
		return
	}
	v := messageView{ID: m.ID, Subject: m.Subject, Transport: m.Transport, Subscriptions: []messageStateView{}}
	if !m.PublishedAt.IsZero() {
		v.PublishedAt = &m.PublishedAt
	}
	if m.HasBody {
		v.Headers = m.Headers
		if v.Headers == nil {
			v.Headers = map[string]string{}
		}
		v.Body, v.BodyBase64 = showBody(m.Body, m.Truncated)
		v.BodySize, v.BodyTruncated = &m.Size, m.Truncated
	}
	for _, st := range m.States {
		v.Subscriptions = append(v.Subscriptions, messageStateView{Name: st.Subscription, State: st.State, Attempts: attemptsOf(st.Attempts)})
	}
	writeJSON(w, http.StatusOK, v)
}

// param is a path parameter, decoded: chi matches the escaped path when a client escaped
// something (a ':' as %3A, as encodeURIComponent does), and hands the parameter over as
// sent. A value that does not decode is returned as it is: '%' is valid in no subject,
// name or id, so validation refuses it. It is read as a path value, which chi sets as
// well as the ServeMux of the publish route (publishRoute).
func param(r *http.Request, name string) string {
	raw := r.PathValue(name)
	if v, err := url.PathUnescape(raw); err == nil {
		return v
	}
	return raw
}

type nackInput struct {
	Delay      *core.Duration `json:"delay"`
	DeadLetter bool           `json:"dead_letter"`
}

type extendInput struct {
	Deadline core.Duration `json:"deadline"`
}

// deferralGrace is how long a settlement waits for a deferral still being recorded.
const deferralGrace = time.Second

// maxLeaseToken bounds the Bridge-Lease-Token header (the bridge's are 22 characters).
const maxLeaseToken = 128

// settleDeferred lets a handler settle the message it deferred: ack, nack (again after a
// delay, or dead-letter) or extend its deadline, proving the delivery with its lease token.
func (a *api) settleDeferred(w http.ResponseWriter, r *http.Request) {
	op := chi.URLParam(r, "action")
	if op != "ack" && op != "nack" && op != "extend" {
		writeProblem(w, "not_found", "no such route: the actions are ack, nack and extend")
		return
	}
	token := strings.TrimSpace(r.Header.Get("Bridge-Lease-Token"))
	if token == "" || len(token) > maxLeaseToken {
		writeProblem(w, "invalid_header", "Bridge-Lease-Token: the bridge-lease-token header of the push is required")
		return
	}
	act := core.DeferredAction{Op: op}
	now := time.Now()
	switch op {
	case "ack":
		if !decodeJSON(w, r, &struct{}{}, true) {
			return
		}
	case "nack":
		var in nackInput
		if !decodeJSON(w, r, &in, true) {
			return
		}
		if in.DeadLetter && in.Delay != nil {
			writeProblem(w, "invalid_json", "give delay or dead_letter, not both")
			return
		}
		if in.DeadLetter {
			act.Op = "dead"
		}
		delay := time.Duration(0)
		if in.Delay != nil {
			delay = time.Duration(*in.Delay)
		}
		if delay > time.Hour {
			writeProblem(w, "invalid_json", "delay: at most 1h")
			return
		}
		act.Due = now.Add(delay)
	case "extend":
		var in extendInput
		if !decodeJSON(w, r, &in, false) {
			return
		}
		if in.Deadline <= 0 || time.Duration(in.Deadline) > core.MaxAckDeadline {
			writeProblem(w, "invalid_json", "deadline: a duration from 1ms to 12h, counted from now")
			return
		}
		act.Due = now.Add(time.Duration(in.Deadline))
	}
	s, ok := a.load(w, r)
	if !ok {
		return
	}
	id := param(r, "id")
	sum := sha256.Sum256([]byte(token))
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	hash := hex.EncodeToString(sum[:])
	err := a.b.SettleDeferred(ctx, s, id, hash, a.e.Consumer(), act)
	// A handler may call back before the bridge has finished recording its deferral (the
	// 202 reached it first): give that a moment before answering that nothing is deferred.
	for wait := time.Now().Add(deferralGrace); errors.Is(err, core.ErrSettled) && time.Now().Before(wait); {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
		err = a.b.SettleDeferred(ctx, s, id, hash, a.e.Consumer(), act)
	}
	switch {
	case errors.Is(err, core.ErrLeaseToken):
		writeProblem(w, "invalid_lease_token", "this token is not the lease of this message's current delivery")
		return
	case errors.Is(err, core.ErrSettled):
		writeProblem(w, "lease_expired", "the message is not deferred: already settled, or its deadline passed and it was delivered again")
		return
	case err != nil:
		a.fail(w, r, err)
		return
	}
	out := map[string]any{"id": id}
	switch act.Op {
	case "ack":
		out["status"] = "acked"
	case "dead":
		out["status"] = "dead_lettered"
	case "nack":
		out["status"], out["redeliver_at"] = "nacked", act.Due.UTC()
		a.e.Poke(s.Name) // it is due (or will be): the engine looks at the retry set now
	case "extend":
		out["status"], out["deadline"] = "extended", act.Due.UTC()
	}
	writeJSON(w, http.StatusOK, out)
}
