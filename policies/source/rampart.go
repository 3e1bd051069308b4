package source

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/rampart-mesh/rampart/policies/api"
	yaml "go.yaml.in/yaml/v3"
)

// checkRampartKind decodes an object of Rampart's own group strictly, so a
// misspelt field or an unknown kind or version fails the file with the line of
// the field, the object and the reason, as the API server would refuse it.
// Objects of other groups pass unchanged.
func checkRampartKind(file string, node *yaml.Node, o Object) error {
	if o.Group() != api.Group {
		return nil
	}
	where := fmt.Sprintf("%s %s", o.Kind, o.Name)
	if o.Namespace != "" {
		where = fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name)
	}
	if o.Kind != api.KindRateLimitPolicy {
		return fmt.Errorf("%s:%d: %s: %s has no kind %q (known: %s)", file, o.Line, where, api.Group, o.Kind, api.KindRateLimitPolicy)
	}
	if o.APIVersion != api.APIVersion {
		return fmt.Errorf("%s:%d: %s: apiVersion %q: want %s", file, o.Line, where, o.APIVersion, api.APIVersion)
	}
	_, err := api.DecodeRateLimitPolicySpec(o.Spec)
	if err == nil {
		return nil
	}
	var fe *api.FieldError
	if !errors.As(err, &fe) {
		return fmt.Errorf("%s:%d: %s: %w", file, o.Line, where, err)
	}
	line := o.Line
	if l := lineOf(node, fe.Path); l > 0 && node.Line == o.Line {
		line = l // not for List items, whose nodes are re-parsed JSON
	}
	return fmt.Errorf("%s:%d: %s: %s: %s", file, line, where, fe.Path, fe.Reason)
}

// lineOf returns the line of the deepest node on path ("spec.limits[0].rat")
// under the mapping node, or 0.
func lineOf(node *yaml.Node, path string) int {
	line := 0
	cur := node
	for _, seg := range strings.Split(path, ".") {
		name, rest, _ := strings.Cut(seg, "[")
		if cur == nil || cur.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(cur.Content); i += 2 {
			if cur.Content[i].Value == name {
				line, next = cur.Content[i].Line, cur.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		cur = next
		for rest != "" {
			idx, after, ok := strings.Cut(rest, "]")
			n, err := strconv.Atoi(idx)
			if !ok || err != nil || cur.Kind != yaml.SequenceNode || n < 0 || n >= len(cur.Content) {
				return line
			}
			cur = cur.Content[n]
			line = cur.Line
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return line
}
