package httpapi_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/broker"
	"github.com/bridge-dev/bridge/internal/redistest"
)

type scheduleAnswer struct {
	Name        string            `json:"name"`
	Cron        string            `json:"cron"`
	Timezone    string            `json:"timezone"`
	Data        json.RawMessage   `json:"data"`
	DataBase64  string            `json:"data_base64"`
	ContentType string            `json:"content_type"`
	Headers     map[string]string `json:"headers"`
	Paused      bool              `json:"paused"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	NextRuns    []time.Time       `json:"next_runs"`
	LastRun     *time.Time        `json:"last_run"`
}

// What the schedule routes answer, and what they store.
func TestScheduleRoutes(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, router := loadDoc(t)
	srv := startServer(t, newAPI(t, rs))
	get := func(c call) scheduleAnswer {
		t.Helper()
		var a scheduleAnswer
		if err := json.Unmarshal(c.do(t, srv, router), &a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	version := func() string { v, _ := rs.Do(t, "HGET", "bridge:schedules", "_version").ToString(); return v }

	body := `{"cron":" 0 9 * * * ","timezone":"America/New_York","subject":"reports","data":{"r":1},"headers":{"X-Kind":"n"}}`
	a := get(call{name: "create", method: "PUT", path: "/v1/schedules/nightly", body: body, status: 201})
	if a.Cron != "0 9 * * *" || a.ContentType != "application/json" || a.Headers["x-kind"] != "n" || string(a.Data) != `{"r":1}` {
		t.Fatalf("created: %+v", a)
	}
	if len(a.NextRuns) != 5 || a.LastRun != nil {
		t.Fatalf("next runs %v, last run %v", a.NextRuns, a.LastRun)
	}
	ny, _ := time.LoadLocation("America/New_York")
	for _, r := range a.NextRuns {
		local := r.In(ny)
		if local.Hour() != 9 || local.Minute() != 0 || (r.Hour() != 13 && r.Hour() != 14) {
			t.Fatalf("next run %s is %s in New York", r, local)
		}
	}
	v := version()
	again := get(call{name: "unchanged", method: "PUT", path: "/v1/schedules/nightly", body: body, status: 200})
	if version() != v || !again.UpdatedAt.Equal(a.UpdatedAt) {
		t.Fatalf("an unchanged PUT wrote: version %s -> %s, updated %s -> %s", v, version(), a.UpdatedAt, again.UpdatedAt)
	}

	p := get(call{name: "pause", method: "POST", path: "/v1/schedules/nightly/pause", status: 200})
	if !p.Paused || len(p.NextRuns) != 0 || version() == v {
		t.Fatalf("paused: %+v (version %s)", p, version())
	}
	r := get(call{name: "resume", method: "POST", path: "/v1/schedules/nightly/resume", status: 200})
	if r.Paused || len(r.NextRuns) != 5 || !r.CreatedAt.Equal(a.CreatedAt) {
		t.Fatalf("resumed: %+v", r)
	}

	// A published tick shows as the last run.
	tick := a.NextRuns[0].Add(-24 * time.Hour)
	b := broker.New(rs.Client(t))
	if _, _, err := b.FireTick(context.Background(), "reports", "nightly", tick, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	g := get(call{name: "get", method: "GET", path: "/v1/schedules/nightly", status: 200})
	if g.LastRun == nil || !g.LastRun.Equal(tick) {
		t.Fatalf("last run %v, want %s", g.LastRun, tick)
	}

	get(call{name: "replace", method: "PUT", path: "/v1/schedules/a-first", body: `{"cron":"@every 10s","subject":"x","data_base64":"AAE="}`, status: 201})
	var list struct {
		Schedules []scheduleAnswer `json:"schedules"`
	}
	if err := json.Unmarshal(call{name: "list", method: "GET", path: "/v1/schedules", status: 200}.do(t, srv, router), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Schedules) != 2 || list.Schedules[0].Name != "a-first" || list.Schedules[0].ContentType != "application/octet-stream" ||
		list.Schedules[0].DataBase64 != "AAE=" || list.Schedules[0].Timezone != "UTC" {
		t.Fatalf("list: %+v", list.Schedules)
	}
	every := list.Schedules[0].NextRuns
	for i, r := range every {
		if r.Unix()%10 != 0 || (i > 0 && r.Sub(every[i-1]) != 10*time.Second) {
			t.Fatalf("@every 10s next runs %v", every)
		}
	}
}
