// Package yamlfile holds what the bridge's YAML configuration files (subscriptions,
// tokens) share: errors that point at one entry of a list, and node helpers.
package yamlfile

import (
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// EntryError is an error about one entry of a file's list. List names the list
// ("subscriptions", "tokens"); Index counts from 0 in file order; Name is empty when the
// entry has no valid name yet; Line is the entry's line in the file (0 when unknown);
// Field is the offending field as a dotted path, empty when the error is about the entry
// as a whole.
type EntryError struct {
	List  string
	Index int
	Name  string
	Line  int
	Field string
	Err   error
}

func (e *EntryError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s[%d]", e.List, e.Index)
	var where []string
	if e.Name != "" {
		where = append(where, fmt.Sprintf("name %q", e.Name))
	}
	if e.Line > 0 {
		where = append(where, fmt.Sprintf("line %d", e.Line))
	}
	if len(where) > 0 {
		b.WriteString(" (" + strings.Join(where, ", ") + ")")
	}
	if e.Field != "" {
		fmt.Fprintf(&b, ": field %q", e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *EntryError) Unwrap() error { return e.Err }

// Resolve follows YAML aliases to the node they stand for.
func Resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// IsNull reports whether n is a YAML null.
func IsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// ReadFile reads at most limit+1 bytes of path: one byte past the limit tells "exactly the
// limit" from "over it" without trusting Stat, which says nothing useful for pipes and some
// mounted files. The caller's parser refuses anything longer than limit.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
}
