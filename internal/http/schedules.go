package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/auth"
	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/schedules"
)

// nextRunsShown is how many upcoming ticks a schedule's view lists.
const nextRunsShown = 5

// scheduleInput is the body of PUT /v1/schedules/{name}.
type scheduleInput struct {
	Cron        string            `json:"cron"`
	Timezone    string            `json:"timezone"`
	Subject     string            `json:"subject"`
	Data        json.RawMessage   `json:"data"`
	DataBase64  *string           `json:"data_base64"`
	ContentType string            `json:"content_type"`
	Headers     map[string]string `json:"headers"`
	Paused      bool              `json:"paused"`
}

// scheduleView is a schedule as the API shows it.
type scheduleView struct {
	*core.Schedule
	// NextRuns are the next ticks (UTC); none while paused.
	NextRuns []time.Time `json:"next_runs"`
	// LastRun is the latest tick that was published, if any.
	LastRun *time.Time `json:"last_run,omitempty"`
}

// inputError is a refused schedule: its problem code and detail.
type inputError struct{ code, detail string }

func (e *inputError) Error() string { return e.detail }

func invalidSchedule(format string, args ...any) *inputError {
	return &inputError{"invalid_schedule", fmt.Sprintf(format, args...)}
}

// schedule checks in and returns the schedule it defines (without its times).
func (a *api) schedule(name string, in scheduleInput, now time.Time) (*core.Schedule, *inputError) {
	s := &core.Schedule{Name: name, Subject: in.Subject, Timezone: in.Timezone, Paused: in.Paused,
		ContentType: in.ContentType}
	if s.Timezone == "" {
		s.Timezone = "UTC"
	}
	if !core.ValidSubject(s.Subject) {
		return nil, &inputError{"invalid_subject", `"subject": ` + core.SubjectRule}
	}
	spec, err := schedules.Parse(in.Cron, s.Timezone)
	if err != nil {
		return nil, invalidSchedule("%v", err)
	}
	s.Cron = normalizeCron(in.Cron)
	if spec.Next(now).IsZero() {
		return nil, invalidSchedule("cron %q never ticks: no time matches it within five years", s.Cron)
	}
	hasData := len(in.Data) > 0 && !bytes.Equal(in.Data, []byte("null"))
	switch {
	case hasData && in.DataBase64 != nil:
		return nil, invalidSchedule(`give "data" or "data_base64", not both`)
	case hasData:
		s.Data = in.Data
		if s.ContentType == "" {
			s.ContentType = "application/json"
		}
	case in.DataBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*in.DataBase64)
		if err != nil {
			return nil, invalidSchedule(`"data_base64" is not standard base64`)
		}
		s.DataBase64 = b
		if s.ContentType == "" {
			s.ContentType = "application/octet-stream"
		}
	default:
		return nil, invalidSchedule(`"data" or "data_base64" is required`)
	}
	if n := len(s.Body()); int64(n) > a.opts.MaxBody {
		return nil, &inputError{"payload_too_large", fmt.Sprintf("the message is %d bytes, more than %d (BRIDGE_MAX_BODY)", n, a.opts.MaxBody)}
	}
	ct := map[string]string{}
	if err := setContentType(ct, s.ContentType); err != nil {
		return nil, invalidSchedule(`"content_type": %v`, err)
	}
	if len(in.Headers) > 0 {
		s.Headers = make(map[string]string, len(in.Headers))
		if err := setForwarded(s.Headers, in.Headers, "headers."); err != nil {
			return nil, invalidSchedule("%v", err)
		}
	}
	return s, nil
}

// normalizeCron trims the expression as schedules.Parse reads it.
func normalizeCron(expr string) string { return strings.TrimSpace(expr) }

func (a *api) putSchedule(w http.ResponseWriter, r *http.Request) {
	name, ok := a.name(w, r)
	if !ok {
		return
	}
	var in scheduleInput
	// Room for the body as base64 (4/3) or as JSON text, plus the other fields.
	if !decodeJSONLimit(w, r, &in, false, maxJSONBody+2*a.opts.MaxBody) {
		return
	}
	now := time.Now().UTC()
	s, ie := a.schedule(name, in, now)
	if ie != nil {
		writeProblem(w, ie.code, ie.detail)
		return
	}
	// A schedule publishes to its subject: the token must be allowed to publish there too,
	// or schedules:write would be a way around its publish globs.
	if !a.allowed(w, r, auth.ActionPublish, s.Subject, "a schedule publishes to its subject: this token also needs the scope ") {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	prev, err := a.b.GetSchedule(ctx, name)
	switch {
	case errors.Is(err, core.ErrNotFound):
		prev = nil
	case err != nil:
		a.fail(w, r, err)
		return
	case prev.SameDefinition(s):
		// Nothing changes: no write, and its ticks go on as they were.
		a.writeSchedule(ctx, w, r, http.StatusOK, prev)
		return
	}
	s.CreatedAt, s.UpdatedAt = now, now
	if prev != nil {
		s.CreatedAt = prev.CreatedAt
	}
	replaced, err := a.b.PutSchedule(ctx, s)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	status := http.StatusCreated
	if replaced {
		status = http.StatusOK
	}
	a.writeSchedule(ctx, w, r, status, s)
}

// loadSchedule fetches the named schedule, answering the request itself on failure.
func (a *api) loadSchedule(ctx context.Context, w http.ResponseWriter, r *http.Request) (*core.Schedule, bool) {
	name, ok := a.name(w, r)
	if !ok {
		return nil, false
	}
	s, err := a.b.GetSchedule(ctx, name)
	if err != nil {
		a.fail(w, r, err)
		return nil, false
	}
	return s, true
}

func (a *api) getSchedule(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if s, ok := a.loadSchedule(ctx, w, r); ok {
		a.writeSchedule(ctx, w, r, http.StatusOK, s)
	}
}

func (a *api) listSchedules(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	all, _, err := a.b.ListSchedules(ctx)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	views, err := a.scheduleViews(ctx, all)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"schedules": views})
}

func (a *api) deleteSchedule(w http.ResponseWriter, r *http.Request) {
	name, ok := a.name(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if err := a.b.DeleteSchedule(ctx, name); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) pauseSchedule(w http.ResponseWriter, r *http.Request) { a.setSchedulePaused(w, r, true) }
func (a *api) resumeSchedule(w http.ResponseWriter, r *http.Request) {
	a.setSchedulePaused(w, r, false)
}

// setSchedulePaused pauses or resumes a schedule. Resumed, it fires from its next tick on:
// the ticks it skipped while paused never fire.
func (a *api) setSchedulePaused(w http.ResponseWriter, r *http.Request, paused bool) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	s, ok := a.loadSchedule(ctx, w, r)
	if !ok {
		return
	}
	if s.Paused != paused {
		s.Paused, s.UpdatedAt = paused, time.Now().UTC()
		if _, err := a.b.PutSchedule(ctx, s); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	a.writeSchedule(ctx, w, r, http.StatusOK, s)
}

func (a *api) writeSchedule(ctx context.Context, w http.ResponseWriter, r *http.Request, status int, s *core.Schedule) {
	views, err := a.scheduleViews(ctx, []*core.Schedule{s})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, status, views[0])
}

// scheduleViews adds each schedule's next runs and last run.
func (a *api) scheduleViews(ctx context.Context, all []*core.Schedule) ([]scheduleView, error) {
	last, err := a.b.ScheduleLastRuns(ctx, all)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	views := make([]scheduleView, len(all))
	for i, s := range all {
		views[i] = scheduleView{Schedule: s, NextRuns: []time.Time{}}
		if t, ok := last[s.Name]; ok {
			views[i].LastRun = &t
		}
		if s.Paused {
			continue
		}
		// A change, a creation or a resume fires nothing at or before its own time.
		from := now
		if s.UpdatedAt.After(from) {
			from = s.UpdatedAt
		}
		if spec, err := schedules.Parse(s.Cron, s.Timezone); err == nil {
			views[i].NextRuns = spec.NextRuns(from, nextRunsShown)
		}
	}
	return views, nil
}
