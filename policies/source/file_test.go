package source

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		names   []string
		lines   []int
		wantErr string
	}{
		{name: "two documents and an empty one", in: "kind: A\napiVersion: v1\nmetadata: {name: a}\n---\n---\nkind: B\napiVersion: x/v1\nmetadata: {name: b, namespace: n}\n", names: []string{"a", "n/b"}, lines: []int{1, 6}},
		{name: "a List is expanded", in: "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: A, metadata: {name: x}}\n- {apiVersion: v1, kind: A, metadata: {name: y}}\n", names: []string{"x", "y"}, lines: []int{4, 5}},
		{name: "a List item's error names its line", in: "# c\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: A, metadata: {name: x}}\n- {apiVersion: v1, kind: A, metadata: {}}\n", wantErr: "items[1]: f.yaml:6: A without metadata.name"},
		{name: "a List inside a List", in: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n", wantErr: "f.yaml:4: a List inside a List"},
		{name: "an empty List", in: "apiVersion: v1\nkind: List\nitems: []\n"},
		{name: "keys that read the same", in: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {portLevelMtls: {8080: {mode: DISABLE}, 8080.0: {mode: STRICT}}}\n", wantErr: `f.yaml:1: two keys read as "8080"`},
		{name: "integer mapping keys", in: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {portLevelMtls: {8080: {mode: STRICT}}}\n", names: []string{"p"}, lines: []int{1}},
		{name: "bad YAML names the file", in: "kind: [\n", wantErr: "f.yaml"},
		{name: "a scalar document", in: "just a string\n", wantErr: "f.yaml:1: a document must be a mapping"},
		{name: "no kind", in: "apiVersion: v1\nmetadata: {name: a}\n", wantErr: "f.yaml:1: object without apiVersion and kind"},
		{name: "no name", in: "apiVersion: v1\nkind: A\n---\napiVersion: v1\nkind: B\nmetadata: {}\n", wantErr: "f.yaml:1: A without metadata.name"},
		{name: "metadata of the wrong type", in: "apiVersion: v1\nkind: A\nmetadata: [1]\n", wantErr: "f.yaml:1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Parse("f.yaml", []byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) != len(tc.names) {
				t.Fatalf("%d objects, want %d", len(objs), len(tc.names))
			}
			for i, o := range objs {
				name := o.Name
				if o.Namespace != "" {
					name = o.Namespace + "/" + o.Name
				}
				if name != tc.names[i] || o.Line != tc.lines[i] || o.File != "f.yaml" {
					t.Errorf("object %d = %s at line %d, want %s at %d", i, name, o.Line, tc.names[i], tc.lines[i])
				}
			}
		})
	}
}

func TestReadPaths(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, ".hidden"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("apiVersion: v1\nkind: A\nmetadata: {name: b}\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sub", "a.yml"), []byte("apiVersion: v1\nkind: A\nmetadata: {name: a}\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, ".hidden", "x.yaml"), []byte("apiVersion: v1\nkind: A\nmetadata: {name: hidden}\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not config"), 0o644))
	objs, err := ReadPaths([]string{dir})
	must(err)
	var got []string
	for _, o := range objs {
		got = append(got, o.Name)
	}
	if strings.Join(got, ",") != "b,a" {
		t.Fatalf("objects %v; want b (b.yaml) then a (sub/a.yml), hidden dirs and other files skipped", got)
	}
	if _, err := ReadPaths([]string{filepath.Join(dir, "missing.yaml")}); err == nil {
		t.Fatal("a missing file was not an error")
	}
}

// A directory named through a symlink is read (WalkDir alone finds nothing
// there, and rampartd would serve no policy at all); files that are not
// regular, or too large, are refused before they are read.
func TestReadPathsSymlinkAndSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "p.yaml"), []byte("apiVersion: v1\nkind: A\nmetadata: {name: x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	objs, err := ReadPaths([]string{link})
	if err != nil || len(objs) != 1 || objs[0].Name != "x" || objs[0].File != filepath.Join(link, "p.yaml") {
		t.Fatalf("ReadPaths(symlink to a directory) = %+v, %v; want object x from %s", objs, err, filepath.Join(link, "p.yaml"))
	}

	fifoDir := filepath.Join(dir, "fifo")
	if err := os.MkdirAll(fifoDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(fifoDir, "p.yaml"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, err := ReadPaths([]string{fifoDir}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO named p.yaml: %v; want it refused (reading it would block)", err)
	}

	big := filepath.Join(dir, "big.yaml")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxFileBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadPaths([]string{big}); err == nil || !strings.Contains(err.Error(), "over the") {
		t.Errorf("a file over MaxFileBytes: %v; want it refused", err)
	}
}

// Findings point at the field: an object read from a file knows the line of
// every field under spec, and of the nearest one above a path it lacks.
func TestObjectLineOf(t *testing.T) {
	doc := `# comment
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: [/admin]
  - from:
    - source:
        principals:
        - x
        - y
`
	objs, err := Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	o := objs[0]
	for path, want := range map[string]int{
		"spec":                                5,
		"spec.action":                         6,
		"spec.rules[0].to[0].operation.paths": 10,
		"spec.rules[1].from[0].source.principals[1]": 15,
		"spec.rules[1].from[0].source.notPrincipals": 12, // absent: its parent's
		"metadata.name": 2, // outside spec: the object's
	} {
		if got := o.LineOf(path); got != want {
			t.Errorf("LineOf(%s) = %d, want %d", path, got, want)
		}
	}
}

// Field lines cost one entry per node: a deeply nested spec (hostile or
// not) is parsed in linear time, with a bounded table, and a map entry is
// found under either spelling.
func TestObjectLinesBounded(t *testing.T) {
	spec := "{x: 1}"
	for range 40 {
		spec = "{a: " + spec + "}"
	}
	doc := "apiVersion: v1\nkind: X\nmetadata: {name: a}\nspec: " + spec + "\n"
	objs, err := Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(objs[0].Lines); n > 100 {
		t.Errorf("%d line entries for a 41-node spec", n)
	}
	objs, err = Parse("p.yaml", []byte("apiVersion: v1\nkind: X\nmetadata: {name: a}\nspec:\n  portLevelMtls:\n    \"8080\":\n      mode: STRICT\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"spec.portLevelMtls[8080].mode", "spec.portLevelMtls.8080.mode"} {
		if got := objs[0].LineOf(p); got != 7 {
			t.Errorf("LineOf(%s) = %d, want 7", p, got)
		}
	}
}
