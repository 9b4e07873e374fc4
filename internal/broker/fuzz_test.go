package broker

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// fuzzFields turns fuzz bytes into a stream entry's field map: pairs separated by '\x1e',
// field and value by '\x1f' (a later pair wins, as a map would have it).
func fuzzFields(raw string) map[string]string {
	m := map[string]string{}
	if raw == "" {
		return m
	}
	for pair := range strings.SplitSeq(raw, "\x1e") {
		k, v, _ := strings.Cut(pair, "\x1f")
		m[k] = v
	}
	return m
}

// DecodeEntry sees whatever any producer XADDed to a subject: it must never panic, the id
// must stay dot-free (it is signed as "{id}.{ts}.{body}"), header names lower-case, and a
// foreign entry must come out as a JSON object of its fields.
//
// Observation (reported, not asserted): "_id" and "h:" fields are taken as they are, so a
// foreign entry with "_id" holding CR/LF/space or an "h:" field whose name or value is not
// a valid HTTP field yields a message whose push the HTTP client refuses to send; such an
// entry is retried until max_deliveries and then dead-lettered. Seeds below cover it.
func FuzzDecodeEntry(f *testing.F) {
	type seed struct {
		subject string
		ms, seq uint64
		fields  string
	}
	for _, s := range []seed{
		{"orders", 1700000000000, 0, "_payload\x1fhello\x1eh:content-type\x1ftext/plain"},
		{"orders.eu", 1700000000000, 7, "_payload\x1f\x00\x01binary\x1eh:Content-Type\x1fapplication/octet-stream\x1eh:X-Custom\x1fv\x1eh:redis-partition-key\x1fk"},
		{"orders.eu", 1, 1, "order\x1f42\x1estate\x1fpaid"},
		{"orders", 1, 0, ""},
		{"orders", 1, 0, "_payload\x1f"},
		{"orders", 1, 0, "_payload\x1fx\x1e_id\x1forders~eu:1700000000000-5"},
		{"orders", 1, 0, "_payload\x1fx\x1e_id\x1fwith.dot"},
		{"orders", 1, 0, "_payload\x1fx\x1e_id\x1f..."},
		{"orders", 1, 0, "_payload\x1fx\x1e_id\x1f"},
		{"orders", 1, 0, "_id\x1fa.b\x1efield\x1fv"},
		{"orders", 1, 0, "_payload\x1fx\x1eh:\x1fempty-name"},
		{"orders", 1, 0, "_payload\x1fx\x1eh:X\x1f1\x1eh:x\x1f2"},
		{"orders", 1, 0, "_payload\x1fx\x1eh:HOST\x1fevil\x1eh:Webhook-Id\x1fforged"},
		{"orders", 1, 0, "\xff\xfe\x1e\xff\x1f\xc3"},
		{"orders", 1, 0, "h:only-headers\x1fv"},
		{"a.b.c", 18446744073709551615, 18446744073709551615, "_payload\x1f{}"},
		// Foreign producers can set these; the push then fails in the HTTP client (see above).
		{"orders", 1, 0, "_payload\x1fx\x1e_id\x1fevil\r\nX-Injected: 1"},
		{"orders", 1, 0, "_payload\x1fx\x1eh:X-A\x1fa\r\nX-Injected: 1"},
		{"orders", 1, 0, "_payload\x1fx\x1eh:bad name\x1fv"},
	} {
		f.Add(s.subject, s.ms, s.seq, s.fields)
	}
	f.Fuzz(func(t *testing.T, subject string, ms, seq uint64, raw string) {
		fields := fuzzFields(raw)
		entryID := strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq, 10)
		m := DecodeEntry(subject, rueidis.XRangeEntry{ID: entryID, FieldValues: fields})

		if strings.Contains(m.ID, ".") {
			t.Fatalf("message id %q holds a dot", m.ID)
		}
		if m.ID == "" {
			t.Fatal("empty message id")
		}
		if id := fields[idField]; validID(id) {
			if m.ID != id {
				t.Fatalf("id %q, want the entry's _id %q", m.ID, id)
			}
		} else if m.ID != core.MessageID(subject, entryID) {
			t.Fatalf("id %q, want %q", m.ID, core.MessageID(subject, entryID))
		}
		if m.EntryID != entryID || m.Subject != subject || m.Origin != core.FromStream {
			t.Fatalf("message %+v", m)
		}
		for k := range m.Headers {
			if k != strings.ToLower(k) {
				t.Fatalf("header name %q is not lower-case", k)
			}
			if k == "" {
				t.Fatal("empty header name")
			}
		}
		payload, ok := fields[payloadField]
		if ok {
			if !bytes.Equal(m.Body, []byte(payload)) {
				t.Fatalf("body %q, want the payload %q", m.Body, payload)
			}
			// Valid headers are kept and invalid ones left out, since no push could carry them.
			// Names are case-insensitive: when two fields differ only in case, either may win.
			byLower := map[string]int{}
			for k := range fields {
				if name, ok := strings.CutPrefix(k, headerPrefix); ok && name != "" {
					byLower[strings.ToLower(name)]++
				}
			}
			for k, v := range fields {
				name, isHeader := strings.CutPrefix(k, headerPrefix)
				if !isHeader || name == "" || byLower[strings.ToLower(name)] > 1 {
					continue
				}
				got, found := m.Headers[strings.ToLower(name)]
				valid := httpguts.ValidHeaderFieldName(name) && httpguts.ValidHeaderFieldValue(v)
				if found != valid || (found && got != v) {
					t.Fatalf("header field %q (%q): kept=%v (%q), valid=%v", k, v, found, got, valid)
				}
			}
			for k, v := range m.Headers {
				if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("kept an invalid header %q: %q", k, v)
				}
			}
			return
		}
		if !json.Valid(m.Body) {
			t.Fatalf("foreign entry body %q is not valid JSON", m.Body)
		}
		if m.Headers[core.HeaderContentType] != "application/json" || len(m.Headers) != 1 {
			t.Fatalf("foreign entry headers %v", m.Headers)
		}
		var back map[string]string
		if err := json.Unmarshal(m.Body, &back); err != nil {
			t.Fatalf("foreign entry body %q is not a JSON object of strings: %v", m.Body, err)
		}
		allValid := true
		for k := range fields {
			allValid = allValid && utf8.ValidString(k)
		}
		if allValid && len(back) != len(fields) {
			t.Fatalf("foreign entry has %d fields, body holds %d", len(fields), len(back))
		}
		for k, v := range fields {
			if utf8.ValidString(k) && utf8.ValidString(v) && back[k] != v {
				t.Fatalf("field %q = %q came back as %q", k, v, back[k])
			}
		}
	})
}
