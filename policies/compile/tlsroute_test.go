package compile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/policies/source"
	"golang.org/x/tools/txtar"
	"google.golang.org/protobuf/encoding/protojson"
)

// A TLS routing case is testdata/tls/<case>.txtar: input.yaml (registry and
// networking objects), workload ("ns/name k=v,..."), and the expected
// listeners.json (the proxy's listeners with a tls_inspector, as indented
// protojson) and findings ("SEVERITY CODE object path" per line, sorted).
func TestOutboundTLSGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/tls/*.txtar")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found %d cases in testdata/tls, want at least 3", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
			ar, err := txtar.ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			sections := map[string][]byte{}
			for _, f := range ar.Files {
				sections[f.Name] = f.Data
			}
			wl, err := parseWorkload(string(sections["workload"]))
			if err != nil {
				t.Fatal(err)
			}
			objs, err := source.Parse("input.yaml", sections["input.yaml"])
			if err != nil {
				t.Fatal(err)
			}
			n, fs := DecodeNetworking(objs, Mesh{}, "default")
			out, err := CompileOutbound(n, Mesh{}, wl)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{"listeners.json": tlsListenersJSON(t, out), "findings": formatNetworkingFindings(fs)}
			if *update {
				var keep []txtar.File
				for _, f := range ar.Files {
					if _, gen := got[f.Name]; !gen {
						keep = append(keep, f)
					}
				}
				ar.Files = append(keep, txtar.File{Name: "listeners.json", Data: []byte(got["listeners.json"])}, txtar.File{Name: "findings", Data: []byte(got["findings"])})
				if err := os.WriteFile(file, txtar.Format(ar), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			for _, section := range []string{"listeners.json", "findings"} {
				want, ok := sections[section]
				if !ok {
					t.Errorf("no %s section; run go test ./policies/compile -run TestOutboundTLSGolden -update", section)
					continue
				}
				if diff := cmp.Diff(string(want), got[section]); diff != "" {
					t.Errorf("%s mismatch (-want +got); if intended, run go test ./policies/compile -run TestOutboundTLSGolden -update\n%s", section, diff)
				}
			}
		})
	}
}

// tlsListenersJSON renders the listeners that inspect TLS, in order, as
// stable indented JSON (protojson alone varies its whitespace on purpose).
func tlsListenersJSON(t *testing.T, out *Outbound) string {
	t.Helper()
	var b bytes.Buffer
	for _, l := range out.Listeners {
		if len(l.GetListenerFilters()) == 0 {
			continue
		}
		raw, err := protojson.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		pretty, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		b.Write(pretty)
		b.WriteByte('\n')
	}
	return b.String()
}

func formatNetworkingFindings(fs []Finding) string {
	lines := make([]string, len(fs))
	for i, f := range fs {
		lines[i] = fmt.Sprintf("%s %s %s %s", f.Severity, f.Code, f.Object, f.Path)
	}
	sort.Strings(lines)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}
