package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// 'token create' refuses rampartd's own identity, saying which identity and
// why, and stores nothing; every other identity gets a token.
func TestTokenCreateRefusesControlPlaneIdentity(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" for a token
	}{
		{name: "rampartd in the default root namespace", args: []string{"-n", "rampart-system", "--service-account", "rampartd"},
			wantErr: "rampart-system/rampartd (spiffe://<trust-domain>/ns/rampart-system/sa/rampartd) is rampartd's own identity, reserved for the control plane"},
		{name: "rampartd in --root-namespace", args: []string{"-n", "mesh-root", "--service-account", "rampartd", "--root-namespace", "mesh-root"},
			wantErr: "mesh-root/rampartd (spiffe://<trust-domain>/ns/mesh-root/sa/rampartd) is rampartd's own identity"},
		{name: "rampartd outside --root-namespace", args: []string{"-n", "rampart-system", "--service-account", "rampartd", "--root-namespace", "mesh-root"}},
		{name: "a workload", args: []string{"-n", "default", "--service-account", "web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			cmd := newTokenCmd()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(append([]string{"create", "--state-dir", state}, tt.args...))
			err := cmd.Execute()
			pending, _ := os.ReadDir(filepath.Join(state, "tokens", "pending"))
			if tt.wantErr == "" {
				if err != nil || !strings.HasPrefix(out.String(), "rampart-join.") || len(pending) != 1 {
					t.Fatalf("token create: %v, output %q, %d stored tokens; want one token", err, out.String(), len(pending))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("token create: err = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(out.String(), "rampart-join.") || len(pending) != 0 {
				t.Errorf("a refused token create printed %q and stored %d tokens", out.String(), len(pending))
			}
		})
	}
}
