package broker

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"golang.org/x/net/http/httpguts"
)

// Envelope is how a message travels on a list or a Pub/Sub channel, which carry one string
// each: JSON with the message id, its lower-case headers and the body as base64.
//
//	{"id":"orders:l1732420000000-9f86d081","headers":{"content-type":"text/plain"},"payload":"aGVsbG8="}
//
// A value that is not such an envelope (pushed by another producer) is delivered as it is,
// with content-type application/octet-stream.
type Envelope struct {
	ID      string            `json:"id"`
	Headers map[string]string `json:"headers,omitempty"`
	Payload []byte            `json:"payload"`
}

func newMessageID(subject, kind string) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return idPrefix(subject) + kind + strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + hex.EncodeToString(r[:])
}

func encodeEnvelope(id string, body []byte, headers map[string]string) string {
	raw, _ := json.Marshal(Envelope{ID: id, Headers: headers, Payload: body}) // cannot fail
	return string(raw)
}

// decodeEnvelope turns a list or channel value into a message; foreign values get an id
// derived from their content so redeliveries of the same value keep it.
func decodeEnvelope(subject, raw string) core.Message {
	var env Envelope
	if err := json.Unmarshal([]byte(raw), &env); err == nil && validID(env.ID) && env.Payload != nil {
		h := make(map[string]string, len(env.Headers))
		for k, v := range env.Headers {
			if httpguts.ValidHeaderFieldName(k) && httpguts.ValidHeaderFieldValue(v) {
				h[strings.ToLower(k)] = v
			}
		}
		return core.Message{ID: env.ID, Subject: subject, Body: env.Payload, Headers: h}
	}
	return core.Message{
		ID: idPrefix(subject) + "x" + contentID(raw), Subject: subject, Body: []byte(raw),
		Headers: map[string]string{core.HeaderContentType: "application/octet-stream"},
	}
}

func contentID(raw string) string {
	h := uint64(14695981039346656037) // FNV-1a: an id, not a security property
	for i := 0; i < len(raw); i++ {
		h ^= uint64(raw[i])
		h *= 1099511628211
	}
	return strconv.FormatUint(h, 16)
}
