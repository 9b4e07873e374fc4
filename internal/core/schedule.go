package core

import (
	"encoding/json"
	"time"
)

// Header names a schedule's messages carry (SPEC §11).
const (
	// HeaderSchedule names the schedule that published the message.
	HeaderSchedule = "bridge-schedule"
	// HeaderScheduledTime is the tick the message was published for (RFC 3339, UTC).
	HeaderScheduledTime = "bridge-scheduled-time"
)

// Schedule publishes one message to Subject (stream transport) at every tick of Cron in
// Timezone (SPEC §11). It is stored as JSON exactly as the API shows it, without the
// computed fields (next runs, last run).
type Schedule struct {
	Name string `json:"name"`
	// Cron is a 5-field expression, "@every <duration>" or a descriptor such as "@hourly".
	Cron string `json:"cron"`
	// Timezone is the IANA name the expression is read in; "UTC" when not given.
	Timezone string `json:"timezone"`
	Subject  string `json:"subject"`
	// The body: JSON (Data) or bytes (DataBase64); one of them is set.
	Data        json.RawMessage `json:"data,omitempty"`
	DataBase64  []byte          `json:"data_base64,omitempty"`
	ContentType string          `json:"content_type"`
	// Headers are stored with the message (lower-case names) and forwarded on its pushes.
	Headers   map[string]string `json:"headers,omitempty"`
	Paused    bool              `json:"paused"`
	CreatedAt time.Time         `json:"created_at"`
	// UpdatedAt is the time of the last change: ticks at or before it are never fired
	// for this definition (a new or resumed schedule does not catch up).
	UpdatedAt time.Time `json:"updated_at"`
}

// Body is the message each tick publishes.
func (s *Schedule) Body() []byte {
	if len(s.Data) > 0 {
		return s.Data
	}
	return s.DataBase64
}

// SameDefinition reports whether s and o publish the same thing at the same ticks; the
// times of creation and change are not compared.
func (s *Schedule) SameDefinition(o *Schedule) bool {
	a, b := *s, *o
	a.CreatedAt, a.UpdatedAt, b.CreatedAt, b.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	ra, err1 := json.Marshal(a)
	rb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ra) == string(rb)
}
