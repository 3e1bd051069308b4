package source

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// Object is one Kubernetes-style object as read from a file.
type Object struct {
	File string // path it was read from ("" for objects built in code)
	Line int    // line of the document's first key

	APIVersion        string
	Kind              string
	Name              string
	Namespace         string // "" when the file does not set it
	Labels            map[string]string
	Annotations       map[string]string
	CreationTimestamp time.Time

	// Spec is the object's spec as JSON, for typed decoding (protojson for Istio kinds).
	Spec json.RawMessage
	// Lines holds, for an object read from a file, the line of each field
	// under spec, by path: "spec.rules[0].to[0].operation.paths"; a mapping's
	// keys are also under "path[key]" (a map field's entries).
	Lines map[string]int
}

// LineOf returns the line of the field at path ("spec.rules[0].to"), or of
// the deepest field on it that has one, else the object's line. A map
// entry may be named either way: "spec.portLevelMtls[8080]" or
// "spec.portLevelMtls.8080".
func (o Object) LineOf(path string) int {
	cur, line := "", o.Line
	for _, seg := range pathSegments(path) {
		next := ""
		switch {
		case cur == "":
			next = seg.name
		case seg.bracket:
			if _, ok := o.Lines[cur+"["+seg.name+"]"]; ok {
				next = cur + "[" + seg.name + "]"
			} else {
				next = cur + "." + seg.name
			}
		default:
			next = cur + "." + seg.name
		}
		l, ok := o.Lines[next]
		if !ok {
			break
		}
		cur, line = next, l
	}
	return line
}

type pathSegment struct {
	name    string
	bracket bool // [name]: a list index or a map key
}

// pathSegments splits "spec.a[0].b[k.x]" into spec, a, [0], b, [k.x].
func pathSegments(path string) []pathSegment {
	var out []pathSegment
	for path != "" {
		switch path[0] {
		case '.':
			path = path[1:]
		case '[':
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return append(out, pathSegment{name: path[1:], bracket: true})
			}
			out = append(out, pathSegment{name: path[1:end], bracket: true})
			path = path[end+1:]
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			out = append(out, pathSegment{name: path[:end]})
			path = path[end:]
		}
	}
	return out
}

// Bounds on the lines kept for one object: enough for any real spec, and a
// hostile file cannot make them costly.
const (
	maxLineDepth   = 64
	maxLineEntries = 100000
)

// specLines records the line of every node under n, the spec's value node,
// down to maxLineDepth and up to maxLineEntries.
func specLines(n *yaml.Node, path string, depth int, out map[string]int) {
	if depth > maxLineDepth || len(out) >= maxLineEntries {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			out[path+"."+k.Value] = k.Line
			specLines(v, path+"."+k.Value, depth+1, out)
		}
	case yaml.SequenceNode:
		for i, v := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			out[p] = v.Line
			specLines(v, p, depth+1, out)
		}
	}
}

// Group returns the API group of the object's apiVersion ("" for core).
func (o Object) Group() string {
	if g, _, ok := strings.Cut(o.APIVersion, "/"); ok {
		return g
	}
	return ""
}

// Where names the object and its location for messages: "AuthorizationPolicy foo/bar (policies.yaml:12)".
func (o Object) Where() string {
	s := o.Kind + " " + o.Namespace + "/" + o.Name
	if o.Namespace == "" {
		s = o.Kind + " " + o.Name
	}
	switch {
	case o.File != "" && o.Line > 0:
		s += fmt.Sprintf(" (%s:%d)", o.File, o.Line)
	case o.File != "": // objects without lines, e.g. from Kubernetes
		s += " (" + o.File + ")"
	}
	return s
}

// MaxFileBytes bounds one config file.
const MaxFileBytes = 8 << 20

// ReadPaths reads every object in the given files and directories (recursively,
// *.yaml / *.yml / *.json, in name order). A file that cannot be parsed is an error
// naming the file and line; nothing from a bad input is returned.
func ReadPaths(paths []string) ([]Object, error) {
	var files []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		// A directory named through a symlink is walked through it: WalkDir
		// does not follow its root, and would find nothing there.
		root := p
		if lfi, err := os.Lstat(p); err == nil && lfi.Mode()&fs.ModeSymlink != 0 {
			root = p + string(filepath.Separator)
		}
		var found []string
		err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && path != root && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			switch strings.ToLower(filepath.Ext(path)) {
			case ".yaml", ".yml", ".json":
				if !d.IsDir() {
					found = append(found, path)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	var out []Object
	for _, f := range files {
		data, err := readFile(f)
		if err == nil {
			var objs []Object
			objs, err = Parse(f, data)
			out = append(out, objs...)
		}
		if err != nil {
			return nil, fileError(f, err)
		}
	}
	return out, nil
}

// FileError is a file ReadPaths could not read or parse. Its message names the
// file (and the line, where there is one), as the error it wraps does.
type FileError struct {
	File string
	Line int // 0 when the error is about the whole file
	Err  error
}

func (e *FileError) Error() string { return e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// Message is the error without its "file:line: " prefix.
func (e *FileError) Message() string {
	msg := e.Err.Error()
	if e.Line > 0 {
		if m, ok := strings.CutPrefix(msg, fmt.Sprintf("%s:%d: ", e.File, e.Line)); ok {
			return m
		}
	}
	if m, ok := strings.CutPrefix(msg, e.File+": "); ok {
		return m
	}
	return msg
}

// fileError finds the line in the messages this file writes ("FILE:LINE: ...",
// or the YAML parser's "FILE: yaml: line N: ...").
func fileError(file string, err error) *FileError {
	e := &FileError{File: file, Err: err}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, file+":"); ok {
		if rest, ok = strings.CutPrefix(rest, " yaml: line "); ok {
			rest = " " + rest
		}
		if n, _, ok := strings.Cut(strings.TrimSpace(rest), ":"); ok {
			if line, err := strconv.Atoi(n); err == nil && line > 0 {
				e.Line = line
			}
		}
	}
	return e
}

// readFile reads a config file of at most MaxFileBytes: a file that is not a
// regular one (a FIFO would block, a device never end) or is larger is
// refused before it is read whole.
func readFile(name string) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", name, fi.Mode().Type())
	}
	if fi.Size() > MaxFileBytes {
		return nil, fmt.Errorf("%s: %d bytes is over the %d-byte limit", name, fi.Size(), MaxFileBytes)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("%s: over the %d-byte limit", name, MaxFileBytes)
	}
	return data, nil
}

// Parse reads the objects in one multi-document YAML (or JSON) file. Empty
// documents are skipped; a document that is a List (kind: List, items: [...]) is
// expanded.
func Parse(file string, data []byte) ([]Object, error) {
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("%s: %d bytes is over the %d-byte limit", file, len(data), MaxFileBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []Object
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue
		}
		if root.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s:%d: a document must be a mapping (an object with apiVersion and kind)", file, root.Line)
		}
		objs, err := decodeObject(file, root, false)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
}

type rawObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		CreationTimestamp *time.Time        `json:"creationTimestamp"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

func decodeObject(file string, node *yaml.Node, inList bool) ([]Object, error) {
	var v any
	if err := node.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", file, node.Line, err)
	}
	sk, err := stringKeys(v)
	if err != nil {
		return nil, fmt.Errorf("%s:%d: %w", file, node.Line, err)
	}
	js, err := json.Marshal(sk)
	if err != nil {
		return nil, fmt.Errorf("%s:%d: %w", file, node.Line, err)
	}
	var raw rawObject
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, fmt.Errorf("%s:%d: %s", file, node.Line, strings.TrimPrefix(err.Error(), "json: "))
	}
	if raw.Kind == "" || raw.APIVersion == "" {
		return nil, fmt.Errorf("%s:%d: object without apiVersion and kind", file, node.Line)
	}
	if raw.Kind == "List" {
		if inList {
			return nil, fmt.Errorf("%s:%d: a List inside a List: give the objects in one List", file, node.Line)
		}
		// The items are decoded from their own YAML nodes, so each keeps
		// its line.
		var items *yaml.Node
		for i := 0; i+1 < len(node.Content); i += 2 {
			if node.Content[i].Value == "items" {
				items = node.Content[i+1]
			}
		}
		if items == nil || (items.Kind == yaml.ScalarNode && items.Tag == "!!null") {
			return nil, nil
		}
		if items.Kind != yaml.SequenceNode {
			return nil, fmt.Errorf("%s:%d: List items must be a list of objects", file, items.Line)
		}
		var out []Object
		for i, item := range items.Content {
			if item.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("%s:%d: items[%d]: want an object with apiVersion and kind", file, item.Line, i)
			}
			objs, err := decodeObject(file, item, true)
			if err != nil {
				return nil, fmt.Errorf("items[%d]: %w", i, err)
			}
			out = append(out, objs...)
		}
		return out, nil
	}
	if raw.Metadata.Name == "" {
		return nil, fmt.Errorf("%s:%d: %s without metadata.name", file, node.Line, raw.Kind)
	}
	o := Object{
		File: file, Line: node.Line,
		APIVersion: raw.APIVersion, Kind: raw.Kind,
		Name: raw.Metadata.Name, Namespace: raw.Metadata.Namespace,
		Labels: raw.Metadata.Labels, Annotations: raw.Metadata.Annotations,
		Spec: raw.Spec,
	}
	if raw.Metadata.CreationTimestamp != nil {
		o.CreationTimestamp = *raw.Metadata.CreationTimestamp
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		if node.Content[i].Value == "spec" {
			o.Lines = map[string]int{"spec": node.Content[i].Line}
			specLines(node.Content[i+1], "spec", 0, o.Lines)
		}
	}
	if err := checkIstioKind(file, o); err != nil {
		return nil, err
	}
	if err := checkRampartKind(file, node, o); err != nil {
		return nil, err
	}
	return []Object{o}, nil
}

// stringKeys turns mappings with non-string keys (YAML allows `8080: ...`, which
// PeerAuthentication's portLevelMtls uses) into string-keyed maps, as JSON needs.
// Keys that become the same string (8080 and 8080.0, or 8080 and "8080")
// are an error: which one JSON kept would be left to map order.
func stringKeys(v any) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			c, err := stringKeys(e)
			if err != nil {
				return nil, err
			}
			t[k] = c
		}
		return t, nil
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			ks := fmt.Sprint(k)
			if _, dup := out[ks]; dup {
				return nil, fmt.Errorf("two keys read as %q: write each key once", ks)
			}
			c, err := stringKeys(e)
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	case []any:
		for i, e := range t {
			c, err := stringKeys(e)
			if err != nil {
				return nil, err
			}
			t[i] = c
		}
		return t, nil
	}
	return v, nil
}
