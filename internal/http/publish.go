package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/go-chi/chi/v5"
	"golang.org/x/net/http/httpguts"
)

const (
	forwardPrefix      = "Bridge-Forward-"
	maxPartitionKeyLen = 1024
	maxForwarded       = 32
	maxTraceHeaderLen  = 1024
)

type publishResponse struct {
	ID      string `json:"id"`
	Subject string `json:"subject"`
}

func (a *api) publish(w http.ResponseWriter, r *http.Request) {
	subject := chi.URLParam(r, "subject")
	if !core.ValidSubject(subject) {
		writeProblem(w, "invalid_subject", "subjects match ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
		return
	}
	switch t := r.URL.Query().Get("transport"); t {
	case "", "stream":
	case "list", "pubsub":
		writeProblem(w, "unsupported_transport", fmt.Sprintf("transport %q is not served by this version; use stream", t))
		return
	default:
		writeProblem(w, "invalid_query", "transport must be stream, list or pubsub")
		return
	}
	for _, h := range []string{"Idempotency-Key", "Bridge-Delay", "Bridge-Not-Before"} {
		if r.Header.Get(h) != "" {
			// Refused rather than ignored: silently dropping a dedup key or a delay would
			// break what the publisher relies on.
			writeProblem(w, "not_implemented", h+" is not supported by this version")
			return
		}
	}
	headers, err := messageHeaders(r.Header)
	if err != nil {
		writeProblem(w, "invalid_header", err.Error())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.opts.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeProblem(w, "payload_too_large", fmt.Sprintf("the body exceeds %d bytes (BRIDGE_MAX_BODY)", a.opts.MaxBody))
			return
		}
		writeProblem(w, "invalid_json", "could not read the request body")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	id, err := a.b.Publish(ctx, subject, body, headers)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, publishResponse{ID: id, Subject: subject})
}

// messageHeaders picks what a publish request stores with the message: its content type,
// partition key, trace context and Bridge-Forward-* headers, names lower-cased.
func messageHeaders(h http.Header) (map[string]string, error) {
	out := make(map[string]string, 4)
	if ct := h.Get("Content-Type"); ct != "" {
		if !httpguts.ValidHeaderFieldValue(ct) || len(ct) > 256 {
			return nil, errors.New("Content-Type is not a valid header value")
		}
		out[core.HeaderContentType] = ct
	}
	if pk := h.Get("Bridge-Partition-Key"); pk != "" {
		if len(pk) > maxPartitionKeyLen || !httpguts.ValidHeaderFieldValue(pk) {
			return nil, fmt.Errorf("Bridge-Partition-Key must be a valid header value of at most %d bytes", maxPartitionKeyLen)
		}
		out[core.HeaderPartitionKey] = pk
	}
	for _, name := range []string{core.HeaderTraceparent, core.HeaderTracestate} {
		if v := h.Get(name); v != "" {
			if len(v) > maxTraceHeaderLen || !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("%s is not a valid header value", name)
			}
			out[name] = v
		}
	}
	n := 0
	for k, vs := range h {
		name, ok := strings.CutPrefix(k, forwardPrefix)
		if !ok {
			continue
		}
		if n++; n > maxForwarded {
			return nil, fmt.Errorf("at most %d Bridge-Forward-* headers", maxForwarded)
		}
		if name == "" || len(vs) != 1 {
			return nil, fmt.Errorf("%s must name a header and appear once", k)
		}
		if err := core.ValidateHeader(name, vs[0]); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		lower := strings.ToLower(name)
		if lower == core.HeaderPartitionKey || lower == core.HeaderDeadLetterReason || strings.HasPrefix(lower, "bridge-") {
			return nil, fmt.Errorf("%s: header %q is reserved", k, name)
		}
		out[lower] = vs[0]
	}
	return out, nil
}
