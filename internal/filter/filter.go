// Package filter compiles and evaluates subscription filters (SPEC §11): CEL expressions
// over a message's subject, headers, partition key and body, the language Google's and
// Kubernetes' products use for exactly this (Pub/Sub and Eventarc filters, admission
// policies). A filter is compiled and type-checked once, when its subscription is put, and
// its worst-case cost is bounded then; evaluating it is one interpreter pass per message.
package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"
)

// Bounds of a filter.
const (
	// MaxLength bounds the expression's text.
	MaxLength = 4096
	// MaxCost bounds the estimated worst-case cost at PUT, and the actual cost of one
	// evaluation: a filter runs for every message of its subscription.
	MaxCost = 100_000
	// sizeHint is what the cost estimate assumes of a list, map or string in a message:
	// headers are few and short, JSON bodies are at most the publish limit but a filter
	// that walks every element of a large array is what the limit is there to refuse.
	sizeHint = 1000
)

// Program is a compiled filter. Safe for concurrent use.
type Program struct {
	prg cel.Program
}

// Message is what a filter sees of one message.
type Message struct {
	Subject      string
	Headers      map[string]string // lower-case names
	PartitionKey string
	Body         []byte
	ContentType  string
}

// Error is a filter that does not compile; its text names the position ("1:5: ...").
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

// env is built on first use: a CEL environment costs a few MiB, which a bridge without
// filters should not hold.
var env = sync.OnceValue(mustEnv)

func mustEnv() *cel.Env {
	e, err := cel.NewEnv(
		cel.Variable("subject", cel.StringType),
		cel.Variable("headers", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("partition_key", cel.StringType),
		cel.Variable("body", cel.DynType),
	)
	if err != nil {
		panic(err) // the declarations are constant
	}
	return e
}

// Compile parses and type-checks expr, which must yield a bool, and refuses one whose
// estimated cost exceeds MaxCost.
func Compile(expr string) (*Program, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, &Error{"the filter is empty"}
	}
	if len(expr) > MaxLength {
		return nil, &Error{fmt.Sprintf("the filter is %d bytes long, at most %d", len(expr), MaxLength)}
	}
	ast, iss := env().Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, &Error{position(iss.Err().Error())}
	}
	if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
		return nil, &Error{fmt.Sprintf("the filter must be a condition (bool), it gives %s", ast.OutputType())}
	}
	est, err := env().EstimateCost(ast, estimator{})
	if err != nil {
		return nil, &Error{"cannot estimate the filter's cost: " + err.Error()}
	}
	if est.Max > MaxCost {
		return nil, &Error{fmt.Sprintf("the filter is too expensive: its cost may reach %d, at most %d (avoid walking large lists or maps of the body)", est.Max, MaxCost)}
	}
	prg, err := env().Program(ast, cel.CostLimit(MaxCost), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, &Error{err.Error()}
	}
	return &Program{prg: prg}, nil
}

// position keeps CEL's "<input>:line:col: message" as "line:col: message".
func position(msg string) string {
	msg = strings.ReplaceAll(msg, "ERROR: <input>:", "")
	return strings.TrimSpace(msg)
}

// Match reports whether m passes the filter. An expression that fails on m (a missing
// key, a wrong type: use has() for optional fields) does not match; err says why.
func (p *Program) Match(m Message) (bool, error) {
	out, _, err := p.prg.Eval(&activation{m: &m})
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, errors.New("the filter did not give a bool")
	}
	return bool(b), nil
}

// activation gives a filter its variables, parsing the body only if the filter reads it
// (a filter on headers never pays for JSON).
type activation struct {
	m      *Message
	body   any
	parsed bool
}

var noHeaders = map[string]string{}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "subject":
		return a.m.Subject, true
	case "headers":
		if a.m.Headers == nil {
			return noHeaders, true
		}
		return a.m.Headers, true
	case "partition_key":
		return a.m.PartitionKey, true
	case "body":
		if !a.parsed {
			a.body, a.parsed = parseBody(a.m.Body, a.m.ContentType), true
		}
		return a.body, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// parseBody is the body as a filter sees it: parsed JSON when the content type says JSON
// (application/json, or any +json), else null.
func parseBody(body []byte, contentType string) any {
	if !IsJSON(contentType) {
		return nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return nil
	}
	return v
}

// IsJSON reports whether a content type is JSON: application/json, or any +json type.
func IsJSON(ct string) bool {
	if ct == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// estimator bounds the sizes the cost estimate assumes for message data.
type estimator struct{}

func (estimator) EstimateSize(cost.AstNode) *cost.SizeEstimate {
	return &cost.SizeEstimate{Min: 0, Max: sizeHint}
}

func (estimator) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}
