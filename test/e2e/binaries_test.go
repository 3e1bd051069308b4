package e2e

import (
	"debug/elf"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// TestBinariesLeaveOutGRPCTracing checks that the binaries were built without
// grpc's request tracing (the grpcnotrace tag in the Makefile's GOFLAGS). That
// tracing pulls in html/template, and its reflection by method name stops the
// linker from dropping any exported method of any type: the sidecar is 59 MB
// with it and 50 MB without, and idles about 2 MB larger.
func TestBinariesLeaveOutGRPCTracing(t *testing.T) {
	for _, name := range []string{"rampart-sidecar", "rampartd", "rampartctl"} {
		path := filepath.Join(procs.BinDir(t), name)
		f, err := elf.Open(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		syms, err := f.Symbols()
		f.Close()
		if err != nil {
			t.Fatalf("%s: symbols: %v", path, err)
		}
		var traced, templated []string
		for _, s := range syms {
			switch {
			case strings.HasPrefix(s.Name, "golang.org/x/net/trace."):
				traced = append(traced, s.Name)
			case strings.HasPrefix(s.Name, "text/template.(*state).evalField"):
				templated = append(templated, s.Name)
			}
		}
		if len(traced) > 0 {
			t.Errorf("%s links golang.org/x/net/trace (%d symbols, e.g. %s): build it with -tags=%s", name, len(traced), traced[0], procs.BuildTags)
		}
		if len(templated) > 0 {
			t.Errorf("%s links text/template's method lookup (%s), which keeps every exported method in the binary", name, templated[0])
		}
	}
}
