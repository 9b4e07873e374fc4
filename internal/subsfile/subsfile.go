// Package subsfile reads the subscriptions file named by BRIDGE_SUBSCRIPTIONS_FILE and
// applies it when the bridge starts, so subscriptions can live in version control next to
// the deployment instead of being created by hand with the REST API.
//
// The file is YAML with one top-level key:
//
//	subscriptions:
//	  - name: orders-to-billing        # required; the rule of subjects (core.ValidName)
//	    subject: orders
//	    url: https://billing.example.com/hooks/orders
//	    max_deliveries: 8
//	    retry: {min_backoff: 2s, max_backoff: 5m}
//	    timeout: 10s                   # a Go duration or a number of seconds
//	    headers: {Authorization: "Bearer ..."}
//	    # any field of the PUT /v1/subscriptions/{name} body (see api/openapi.yaml)
//
// Apart from name, an entry holds exactly the fields of the PUT /v1/subscriptions/{name}
// body: each entry is converted to JSON and decoded the way the REST API decodes a body,
// unknown fields refused, so the file and the API never disagree about what a field means.
// An empty file, or an empty subscriptions list, holds no entries.
//
// Applying an entry has PUT semantics: the subscription is created or replaced, an existing
// consumer group keeps its cursor, and applying the same file twice changes nothing.
// Subscriptions that exist in Redis but not in the file are left alone. An entry without
// a secret gets a generated one on creation; give one (whsec_...) to make it stable.
package subsfile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/bridge-dev/bridge/internal/yamlfile"
	"io"
	"reflect"
	"slices"
	"strings"

	"github.com/bridge-dev/bridge/internal/core"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
)

// Limits of a subscriptions file.
const (
	// MaxFileSize is the largest file Load and Parse accept, in bytes.
	MaxFileSize = 1 << 20
	// MaxEntries is the largest number of subscriptions a file may hold.
	MaxEntries = 10000
)

// Entry is one subscription of the file.
type Entry struct {
	Name  string
	Input core.SubscriptionInput
}

// Applier creates or updates one subscription with PUT semantics (idempotent: applying the
// same input twice changes nothing). It validates the input (core.SubscriptionInput.Build)
// and reports whether anything changed.
type Applier interface {
	ApplySubscription(ctx context.Context, name string, in core.SubscriptionInput) (changed bool, err error)
}

// EntryError is an error about one entry of the file (List "subscriptions").
type EntryError = yamlfile.EntryError

// Load reads and parses the file at path. Errors name the path.
func Load(path string) ([]Entry, error) {
	data, err := yamlfile.ReadFile(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	entries, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return entries, nil
}

// Parse parses a subscriptions file. It checks the file's structure, the names and every
// field's type and format, but not the values' meaning: that is the Applier's job.
func Parse(data []byte) ([]Entry, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty file, or only comments
		}
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fmt.Errorf("not valid YAML: %w", err)
		}
		return nil, fmt.Errorf("line %d: only one YAML document is allowed", extra.Line)
	}
	root := yamlfile.Resolve(&doc)
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil, nil
		}
		root = yamlfile.Resolve(root.Content[0])
	}
	if yamlfile.IsNull(root) {
		return nil, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the top level must be a mapping with the key \"subscriptions\"", root.Line)
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value != "subscriptions" {
			return nil, fmt.Errorf("line %d: unknown top-level key %q (only \"subscriptions\" is allowed)", k.Line, k.Value)
		}
		if list != nil {
			return nil, fmt.Errorf("line %d: key \"subscriptions\" appears twice", k.Line)
		}
		list = yamlfile.Resolve(v)
	}
	if list == nil || yamlfile.IsNull(list) {
		return nil, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: \"subscriptions\" must be a list", list.Line)
	}
	if len(list.Content) > MaxEntries {
		return nil, fmt.Errorf("%d subscriptions, more than the limit of %d", len(list.Content), MaxEntries)
	}
	entries := make([]Entry, 0, len(list.Content))
	seen := make(map[string]int, len(list.Content))
	for i, n := range list.Content {
		e, err := parseEntry(i, n)
		if err != nil {
			return nil, err
		}
		if first, dup := seen[e.Name]; dup {
			return nil, &EntryError{List: "subscriptions", Index: i, Name: e.Name, Line: n.Line, Field: "name",
				Err: fmt.Errorf("duplicate name, already used by subscriptions[%d]", first)}
		}
		seen[e.Name] = i
		entries = append(entries, e)
	}
	return entries, nil
}

func parseEntry(i int, n *yaml.Node) (Entry, error) {
	fail := func(name, field string, err error) (Entry, error) {
		return Entry{}, &EntryError{List: "subscriptions", Index: i, Name: name, Line: n.Line, Field: field, Err: err}
	}
	if yamlfile.Resolve(n).Kind != yaml.MappingNode {
		return fail("", "", errors.New("must be a mapping of subscription fields"))
	}
	var m map[string]any
	if err := n.Decode(&m); err != nil {
		return fail("", "", err)
	}
	rawName := m["name"]
	if rawName == nil {
		return fail("", "name", errors.New("required"))
	}
	name, ok := rawName.(string)
	if !ok {
		return fail("", "name", fmt.Errorf("must be a string, got %v (quote it)", rawName))
	}
	if !core.ValidName(name) {
		return fail("", "name", fmt.Errorf("%q: %s", name, core.SubjectRule))
	}
	delete(m, "name")
	body, field, err := toJSON(m, "")
	if err != nil {
		return fail(name, field, err)
	}
	var in core.SubscriptionInput
	if err := decodeStrict(body, &in); err != nil {
		field, err := explain(m, reflect.TypeFor[core.SubscriptionInput](), "", err)
		return fail(name, field, err)
	}
	return Entry{Name: name, Input: in}, nil
}

// decodeStrict decodes the way the REST API decodes a PUT body.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// toJSON encodes a decoded YAML value as JSON. YAML allows what JSON does not (non-string
// keys, infinities); those are reported with the path of the offending field.
func toJSON(v any, path string) ([]byte, string, error) {
	norm, field, err := jsonable(v, path)
	if err != nil {
		return nil, field, err
	}
	b, err := json.Marshal(norm)
	if err != nil {
		return nil, path, err
	}
	return b, "", nil
}

func jsonable(v any, path string) (any, string, error) {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			y, field, err := jsonable(x, join(path, k))
			if err != nil {
				return nil, field, err
			}
			out[k] = y
		}
		return out, "", nil
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			ks, ok := k.(string)
			if !ok {
				return nil, path, fmt.Errorf("key %v is not a string (quote it)", k)
			}
			y, field, err := jsonable(x, join(path, ks))
			if err != nil {
				return nil, field, err
			}
			out[ks] = y
		}
		return out, "", nil
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			y, field, err := jsonable(x, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, field, err
			}
			out[i] = y
		}
		return out, "", nil
	default:
		if _, err := json.Marshal(v); err != nil {
			return nil, path, fmt.Errorf("value %v cannot be expressed in JSON", v)
		}
		return v, "", nil
	}
}

// explain finds which field of m made decoding into a value of type t fail, decoding the
// fields one by one (the json package does not name the field when a field's own
// UnmarshalJSON fails). It returns the dotted path and the cause; when no single field is
// to blame it returns the original error.
func explain(m map[string]any, t reflect.Type, prefix string, orig error) (string, error) {
	fields := jsonFields(t)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		path := join(prefix, k)
		f, ok := fields[k]
		if !ok {
			f, ok = foldField(fields, k)
		}
		if !ok {
			return path, errors.New("unknown field (an entry takes name and the fields of the PUT /v1/subscriptions/{name} body)")
		}
		b, err := json.Marshal(map[string]any{k: m[k]})
		if err != nil {
			return path, err
		}
		probe := reflect.New(t)
		if err := decodeStrict(b, probe.Interface()); err == nil {
			continue
		} else if sub, isMap := m[k].(map[string]any); isMap && derefStruct(f.Type) != nil {
			return explain(sub, derefStruct(f.Type), path, err)
		} else {
			return cleanJSONError(prefix, path, err)
		}
	}
	return prefix, orig
}

// jsonFields maps the JSON names of t's fields to the fields.
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := make(map[string]reflect.StructField, t.NumField())
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f
	}
	return out
}

// foldField mirrors encoding/json, which matches keys to fields case-insensitively.
func foldField(fields map[string]reflect.StructField, k string) (reflect.StructField, bool) {
	for name, f := range fields {
		if strings.EqualFold(name, k) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func derefStruct(t reflect.Type) reflect.Type {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		return t
	}
	return nil
}

// cleanJSONError turns the json package's wording, which names Go types, into one about
// the file's values.
// The json package names the field of a type error relative to the decoded value.
func cleanJSONError(prefix, path string, err error) (string, error) {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			path = join(prefix, te.Field)
		}
		got := te.Value
		switch got {
		case "array":
			got = "list"
		case "object":
			got = "mapping"
		}
		return path, fmt.Errorf("got a %s, want a %s", got, kindName(te.Type))
	}
	return path, errors.New(strings.TrimPrefix(err.Error(), "json: "))
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "whole number"
	case reflect.Float64, reflect.Float32:
		return "number"
	case reflect.Map, reflect.Struct:
		return "mapping"
	case reflect.Slice:
		return "list"
	default:
		return t.String()
	}
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

// Apply loads path and applies every entry in order. It stops at the first error, which
// is an *EntryError naming the entry (index and name) unless the file itself could not
// be read or parsed. applied counts the entries applied without error, changed those of
// them that created or modified a subscription. A nil log logs nothing.
func Apply(ctx context.Context, path string, a Applier, log *zap.Logger) (applied, changed int, err error) {
	if log == nil {
		log = zap.NewNop()
	}
	entries, err := Load(path)
	if err != nil {
		return 0, 0, err
	}
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return applied, changed, err
		}
		ch, err := a.ApplySubscription(ctx, e.Name, e.Input)
		if err != nil {
			// A *core.FieldError already names its field in its message.
			return applied, changed, fmt.Errorf("%s: %w", path, &EntryError{List: "subscriptions", Index: i, Name: e.Name, Err: err})
		}
		applied++
		if ch {
			changed++
			log.Info("subscription applied from file", zap.String("subscription", e.Name), zap.Bool("changed", true))
		} else {
			log.Debug("subscription unchanged", zap.String("subscription", e.Name))
		}
	}
	log.Info("subscriptions file applied", zap.String("path", path),
		zap.Int("subscriptions", applied), zap.Int("changed", changed))
	return applied, changed, nil
}
