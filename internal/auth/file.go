package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/bridge-dev/bridge/internal/yamlfile"
	"io"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Limits of a tokens file.
const (
	// MaxFileSize is the largest tokens file Load and Parse accept, in bytes.
	MaxFileSize = 1 << 20
	// MaxTokens is the largest number of tokens a file may hold.
	MaxTokens = 10000
)

// TokenError is an error about one token of the tokens file (List "tokens"). It never
// holds the value of token_sha256, in case someone put the token itself there by mistake.
type TokenError = yamlfile.EntryError

// Load reads and parses the tokens file at path. Errors name the path.
func Load(path string) (*Set, error) {
	data, err := yamlfile.ReadFile(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Parse parses a tokens file:
//
//	tokens:
//	  - name: billing-publisher      # unique, non-empty
//	    token_sha256: 9f86d0...0a08  # hex SHA-256 of the token, 64 digits, unique
//	    scopes: ["publish:orders.*", "subscriptions:read"]
//
// Unknown keys, unknown scopes, an empty scope list and more than MaxTokens tokens are
// errors (a *TokenError when about one token). An empty file, or an empty or null token
// list, gives an empty set.
func Parse(data []byte) (*Set, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &Set{}, nil // empty file, or only comments
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
			return &Set{}, nil
		}
		root = yamlfile.Resolve(root.Content[0])
	}
	if yamlfile.IsNull(root) {
		return &Set{}, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the top level must be a mapping with the key \"tokens\"", root.Line)
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value != "tokens" {
			return nil, fmt.Errorf("line %d: unknown top-level key %q (only \"tokens\" is allowed)", k.Line, k.Value)
		}
		if list != nil {
			return nil, fmt.Errorf("line %d: key \"tokens\" appears twice", k.Line)
		}
		list = yamlfile.Resolve(v)
	}
	if list == nil || yamlfile.IsNull(list) {
		return &Set{}, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: \"tokens\" must be a list", list.Line)
	}
	if len(list.Content) > MaxTokens {
		return nil, fmt.Errorf("%d tokens, more than the limit of %d", len(list.Content), MaxTokens)
	}
	s := &Set{
		digests:    make([][sha256.Size]byte, 0, len(list.Content)),
		principals: make([]*Principal, 0, len(list.Content)),
	}
	names := make(map[string]int, len(list.Content))
	// Digests are not secret, so indexing them in a map at load time is harmless; only
	// Authenticate must avoid secret-dependent lookups.
	digests := make(map[[sha256.Size]byte]int, len(list.Content))
	for i, n := range list.Content {
		d, p, err := parseToken(i, yamlfile.Resolve(n))
		if err != nil {
			return nil, err
		}
		if first, dup := names[p.Name]; dup {
			return nil, &TokenError{List: "tokens", Index: i, Name: p.Name, Line: n.Line, Field: "name",
				Err: fmt.Errorf("duplicate name, already used by tokens[%d]", first)}
		}
		if first, dup := digests[d]; dup {
			return nil, &TokenError{List: "tokens", Index: i, Name: p.Name, Line: n.Line, Field: "token_sha256",
				Err: fmt.Errorf("same token as tokens[%d] (name %q)", first, s.principals[first].Name)}
		}
		names[p.Name] = i
		digests[d] = i
		s.digests = append(s.digests, d)
		s.principals = append(s.principals, p)
	}
	return s, nil
}

func parseToken(i int, n *yaml.Node) ([sha256.Size]byte, *Principal, error) {
	var d [sha256.Size]byte
	p := &Principal{}
	fail := func(field string, err error) ([sha256.Size]byte, *Principal, error) {
		return d, nil, &TokenError{List: "tokens", Index: i, Name: p.Name, Line: n.Line, Field: field, Err: err}
	}
	if n.Kind != yaml.MappingNode {
		return fail("", errors.New("must be a mapping with name, token_sha256 and scopes"))
	}
	// Fields are read from the node by hand, not decoded into a struct: Node.Decode has
	// no way to refuse unknown fields, and a type error from the yaml package would quote
	// the value, which for token_sha256 might be a token pasted there by mistake.
	var name, sum, scopes *yaml.Node
	// A bad key is reported after the name is read, so the error can name the token.
	var badField string
	var badErr error
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := n.Content[j], yamlfile.Resolve(n.Content[j+1])
		var dst **yaml.Node
		switch {
		case k.Kind != yaml.ScalarNode:
			dst = nil
		case k.Value == "name":
			dst = &name
		case k.Value == "token_sha256":
			dst = &sum
		case k.Value == "scopes":
			dst = &scopes
		}
		switch {
		case badErr != nil:
		case dst == nil:
			badField, badErr = k.Value, fmt.Errorf("line %d: unknown field (a token has name, token_sha256 and scopes)", k.Line)
		case *dst != nil:
			badField, badErr = k.Value, fmt.Errorf("line %d: appears twice", k.Line)
		default:
			*dst = v
		}
	}

	if name == nil || yamlfile.IsNull(name) {
		return fail("name", errors.New("required"))
	}
	if name.Kind != yaml.ScalarNode {
		return fail("name", errors.New("must be a string"))
	}
	if err := checkName(name.Value); err != nil {
		return fail("name", err)
	}
	p.Name = name.Value
	if badErr != nil {
		return fail(badField, badErr)
	}

	if sum == nil || yamlfile.IsNull(sum) {
		return fail("token_sha256", errors.New("required"))
	}
	// The raw scalar text is used whatever tag YAML resolved, so a digest made only of
	// decimal digits (which YAML reads as a number) still works.
	if sum.Kind != yaml.ScalarNode || len(sum.Value) != 2*sha256.Size {
		return fail("token_sha256", fmt.Errorf("must be %d hex digits (the SHA-256 of the token, not the token itself)", 2*sha256.Size))
	}
	if _, err := hex.Decode(d[:], []byte(sum.Value)); err != nil {
		// hex's error quotes the offending byte; say only that it is not hex.
		return fail("token_sha256", fmt.Errorf("must be %d hex digits (the SHA-256 of the token, not the token itself)", 2*sha256.Size))
	}

	if scopes == nil || yamlfile.IsNull(scopes) {
		return fail("scopes", errors.New("required"))
	}
	if scopes.Kind != yaml.SequenceNode {
		return fail("scopes", errors.New("must be a list"))
	}
	// A token without scopes could authenticate but do nothing: almost certainly a
	// mistake, so it is refused rather than silently useless.
	if len(scopes.Content) == 0 {
		return fail("scopes", errors.New("must not be empty (give at least one scope)"))
	}
	for _, sc := range scopes.Content {
		sc = yamlfile.Resolve(sc)
		if sc.Kind != yaml.ScalarNode || yamlfile.IsNull(sc) {
			return fail("scopes", fmt.Errorf("line %d: each scope must be a string", sc.Line))
		}
		if !p.parseScope(sc.Value) {
			return fail("scopes", fmt.Errorf("line %d: unknown scope %q (want publish:<subject glob>, subscriptions:read, subscriptions:write, dead-letters:write, schedules:read, schedules:write or admin)", sc.Line, sc.Value))
		}
	}
	return d, p, nil
}

// checkName accepts any non-empty printable name: names only identify callers in logs,
// but a control character there could forge log lines.
func checkName(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > 200 {
		return errors.New("longer than 200 bytes")
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("contains the non-printable character %U", r)
		}
	}
	return nil
}
