package main

import (
	"strings"
	"testing"
)

// The mesh config's trustDomain and rootNamespace are the CA's: where the
// file leaves them out the flags' values apply, and where it names others
// rampartd refuses to start rather than compile policies for identities it
// never issues.
func TestMeshConfigAgreesWithTheCA(t *testing.T) {
	for _, tt := range []struct {
		name, file       string
		wantTD, wantRoot string
		wantErr          string
	}{
		{"unset: the flags'", "pathNormalization: {normalization: NONE}\n", "example.org", "mesh-root", ""},
		{"empty file", "", "example.org", "mesh-root", ""},
		{"same", "trustDomain: example.org\nrootNamespace: mesh-root\n", "example.org", "mesh-root", ""},
		{"other trust domain", "trustDomain: cluster.local\n", "", "", `trustDomain "cluster.local" is not the CA's trust domain "example.org"`},
		{"other root namespace", "rootNamespace: istio-system\n", "", "", `rootNamespace "istio-system" is not rampartd's root namespace "mesh-root"`},
		{"bad file", "trustDomain: [\n", "", "", "m.yaml"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := meshConfig("m.yaml", []byte(tt.file), "example.org", "mesh-root")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "m.yaml") {
					t.Fatalf("err = %v; want one naming the file and containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.TrustDomain != tt.wantTD || m.RootNamespace != tt.wantRoot {
				t.Errorf("trust domain %q, root namespace %q; want %q, %q", m.TrustDomain, m.RootNamespace, tt.wantTD, tt.wantRoot)
			}
		})
	}
}
