package xds

import (
	"context"
	"testing"

	"github.com/rampart-mesh/rampart/policies/compile"
)

// A mesh provider setting every sidecar would refuse must not pass rampartd:
// the sidecars would NACK the whole bundle (every workload's); the mesh
// config is refused instead.
func TestWireHTTPBadHeaderRefused(t *testing.T) {
	for _, extra := range []string{
		"includeAdditionalHeadersInCheck: {\"x bad\": v}",
		"pathPrefix: \"/check x\"",
	} {
		m, err := compile.ParseMesh([]byte("extensionProviders:\n- name: h\n  envoyExtAuthzHttp:\n    service: ext.foo.svc.cluster.local\n    port: 8000\n    " + extra + "\n"))
		if err == nil {
			m, err = m.WithDefaults()
		}
		if err != nil {
			continue // refused by rampartd: fine
		}
		wb, err := Compile(nil, m, compile.Workload{Namespace: "foo", Name: "x"})
		if err != nil {
			continue
		}
		if _, err := wb.LoadProviders(context.Background()); err != nil {
			t.Errorf("%s: rampartd accepted it, the sidecar refuses the bundle: %v", extra, err)
		}
	}
}
