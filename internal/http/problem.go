package httpapi

import (
	"encoding/json"
	"net/http"
)

// problemKind is one stable error of the API: its code never changes once published.
type problemKind struct {
	status int
	title  string
}

// problems is the one table of every error the API answers with (listed in api/openapi.yaml).
var problems = map[string]problemKind{
	"bad_request":           {http.StatusBadRequest, "Malformed HTTP request"},
	"invalid_subject":       {http.StatusBadRequest, "Invalid subject"},
	"invalid_name":          {http.StatusBadRequest, "Invalid subscription name"},
	"invalid_json":          {http.StatusBadRequest, "Invalid JSON body"},
	"invalid_subscription":  {http.StatusBadRequest, "Invalid subscription"},
	"invalid_schedule":      {http.StatusBadRequest, "Invalid schedule"},
	"invalid_url":           {http.StatusBadRequest, "Invalid webhook URL"},
	"target_not_allowed":    {http.StatusBadRequest, "Webhook target not allowed"},
	"invalid_secret":        {http.StatusBadRequest, "Invalid signing secret"},
	"invalid_header":        {http.StatusBadRequest, "Invalid header"},
	"invalid_query":         {http.StatusBadRequest, "Invalid query parameter"},
	"invalid_filter":        {http.StatusBadRequest, "Invalid filter"},
	"unsupported_transport": {http.StatusBadRequest, "Unsupported transport"},
	"unauthorized":          {http.StatusUnauthorized, "Unauthorized"},
	"forbidden":             {http.StatusForbidden, "Forbidden"},
	"invalid_lease_token":   {http.StatusForbidden, "Lease token not valid for this delivery"},
	"lease_expired":         {http.StatusConflict, "Message no longer deferred"},
	"not_found":             {http.StatusNotFound, "Not found"},
	"method_not_allowed":    {http.StatusMethodNotAllowed, "Method not allowed"},
	"request_timeout":       {http.StatusRequestTimeout, "Request not received in time"},
	"subject_immutable":     {http.StatusConflict, "Subject cannot change"},
	"wrong_type":            {http.StatusConflict, "Key holds another Redis type"},
	"payload_too_large":     {http.StatusRequestEntityTooLarge, "Payload too large"},
	"header_too_large":      {http.StatusRequestHeaderFieldsTooLarge, "Request headers too large"},
	"redis_unavailable":     {http.StatusServiceUnavailable, "Redis unavailable"},
	"not_ready":             {http.StatusServiceUnavailable, "Not ready"},
	"internal":              {http.StatusInternalServerError, "Internal error"},
}

// Problem is an RFC 9457 problem document with the bridge's stable code.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Code   string `json:"code"`
}

func newProblem(code, detail string) Problem {
	k, ok := problems[code]
	if !ok {
		code, k = "internal", problems["internal"]
	}
	return Problem{Type: "urn:bridge:problem:" + code, Title: k.title, Status: k.status, Detail: detail, Code: code}
}

// problemRecorder lets a middleware learn which problem a handler answered with.
type problemRecorder struct {
	http.ResponseWriter
	code string
}

// writeProblem is the one way the API answers an error.
func writeProblem(w http.ResponseWriter, code, detail string) {
	p := newProblem(code, detail)
	if pr, ok := w.(*problemRecorder); ok {
		pr.code = p.Code
	}
	if p.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
