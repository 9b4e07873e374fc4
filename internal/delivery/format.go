package delivery

import (
	"encoding/base64"
	"encoding/json"
	"mime"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/bridge-dev/bridge/internal/filter"
)

// CloudEvents 1.0 (SPEC §11): a subscription's format presents each message as an event,
// in binary content mode (ce-* headers, the data as the body) or structured mode (the
// event as application/cloudevents+json). A message published as a structured event keeps
// its attributes; one published with ce-* headers keeps those.

const (
	ceSpecVersion     = "1.0"
	ceDefaultType     = "bridge.message"
	ceStructuredMedia = "application/cloudevents+json"
)

// formatted is a push's body and the headers its format adds (lower-case names).
type formatted struct {
	body        []byte
	contentType string
	headers     map[string]string
}

// cloudEvent presents m as format; ok is false for the raw format.
func cloudEvent(format core.Format, m *core.Message) (formatted, bool) {
	if format != core.FormatCloudEvents && format != core.FormatCloudEventsStructured {
		return formatted{}, false
	}
	attrs, data, dataCT := eventOf(m)
	if format == core.FormatCloudEventsStructured {
		ev := make(map[string]any, len(attrs)+2)
		for k, v := range attrs {
			ev[k] = v
		}
		if dataCT != "" {
			ev["datacontenttype"] = dataCT
		}
		switch {
		case len(data) == 0:
		case filter.IsJSON(dataCT) && json.Valid(data):
			ev["data"] = json.RawMessage(data)
		case isTextMedia(dataCT):
			ev["data"] = string(data)
		default:
			ev["data_base64"] = base64.StdEncoding.EncodeToString(data)
		}
		body, _ := json.Marshal(ev) // cannot fail: strings, raw JSON checked valid
		return formatted{body: body, contentType: ceStructuredMedia}, true
	}
	h := make(map[string]string, len(attrs))
	for k, v := range attrs {
		h["ce-"+k] = v
	}
	return formatted{body: data, contentType: dataCT, headers: h}, true
}

// eventOf takes the event attributes, data and data content type of m: those of a
// published structured event, or the bridge's (id, source, type, time, subject) overlaid
// with the ce-* headers it was published with.
func eventOf(m *core.Message) (attrs map[string]string, data []byte, dataCT string) {
	ct := m.Headers[core.HeaderContentType]
	if mt, _, _ := mime.ParseMediaType(ct); mt == ceStructuredMedia {
		if a, d, dct, ok := parseStructured(m.Body); ok {
			return a, d, dct
		}
	}
	attrs = map[string]string{
		"specversion": ceSpecVersion,
		"id":          m.ID,
		"source":      "/bridge/" + m.Subject,
		"type":        ceDefaultType,
		"time":        core.PublishTime(m.ID).UTC().Format(time.RFC3339Nano),
		"subject":     m.Subject,
	}
	for k, v := range m.Headers {
		if name, ok := strings.CutPrefix(k, "ce-"); ok && name != "" {
			attrs[name] = v
		}
	}
	attrs["specversion"] = ceSpecVersion
	return attrs, m.Body, ct
}

// parseStructured reads a structured-mode event (JSON object with specversion, id, source,
// type): its attributes (extension values that are not strings as JSON text), its data as
// bytes, and its data content type.
func parseStructured(body []byte) (attrs map[string]string, data []byte, dataCT string, ok bool) {
	var ev map[string]json.RawMessage
	if json.Unmarshal(body, &ev) != nil {
		return nil, nil, "", false
	}
	attrs = make(map[string]string, len(ev))
	for k, raw := range ev {
		switch k {
		case "data", "data_base64":
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			attrs[k] = s
		} else {
			attrs[k] = string(raw)
		}
	}
	for _, req := range []string{"id", "source", "type"} {
		if attrs[req] == "" {
			return nil, nil, "", false
		}
	}
	attrs["specversion"] = ceSpecVersion
	dataCT = attrs["datacontenttype"]
	delete(attrs, "datacontenttype")
	if raw, ok := ev["data_base64"]; ok {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			if b, err := base64.StdEncoding.DecodeString(s); err == nil {
				return attrs, b, dataCT, true
			}
		}
		return nil, nil, "", false
	}
	if raw, ok := ev["data"]; ok {
		if dataCT == "" {
			dataCT = "application/json"
		}
		var s string
		if !filter.IsJSON(dataCT) && json.Unmarshal(raw, &s) == nil {
			return attrs, []byte(s), dataCT, true
		}
		return attrs, raw, dataCT, true
	}
	return attrs, nil, dataCT, true
}

func isTextMedia(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && strings.HasPrefix(mt, "text/")
}
