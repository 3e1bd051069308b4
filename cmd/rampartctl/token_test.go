package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/ca"
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

// Without --root-namespace, 'token create' guards the root namespace rampartd
// recorded in the state directory; a --root-namespace that disagrees with it
// is an error; a state directory from before the record, or without a CA
// yet, keeps the default.
func TestTokenCreateReadsRootNamespace(t *testing.T) {
	tests := []struct {
		name    string
		state   string // rampartd's --root-namespace; "older" a state without the record, "" no CA yet
		args    []string
		wantErr string // "" for a token
	}{
		{name: "rampartd's identity in the recorded namespace", state: "mesh-root", args: []string{"-n", "mesh-root", "--service-account", "rampartd"},
			wantErr: "mesh-root/rampartd (spiffe://<trust-domain>/ns/mesh-root/sa/rampartd) is rampartd's own identity"},
		{name: "rampartd outside the recorded namespace", state: "mesh-root", args: []string{"-n", "rampart-system", "--service-account", "rampartd"}},
		{name: "--root-namespace agrees", state: "mesh-root", args: []string{"-n", "default", "--service-account", "web", "--root-namespace", "mesh-root"}},
		{name: "--root-namespace disagrees", state: "mesh-root", args: []string{"-n", "default", "--service-account", "web", "--root-namespace", "rampart-system"},
			wantErr: `--root-namespace "rampart-system" is not "mesh-root", the root namespace rampartd last started with on `},
		{name: "older state, default", state: "older", args: []string{"-n", "rampart-system", "--service-account", "rampartd"},
			wantErr: "rampart-system/rampartd (spiffe://<trust-domain>/ns/rampart-system/sa/rampartd) is rampartd's own identity"},
		{name: "older state, --root-namespace", state: "older", args: []string{"-n", "mesh-root", "--service-account", "rampartd", "--root-namespace", "mesh-root"},
			wantErr: "mesh-root/rampartd (spiffe://<trust-domain>/ns/mesh-root/sa/rampartd) is rampartd's own identity"},
		{name: "no CA yet, --root-namespace", args: []string{"-n", "default", "--service-account", "web", "--root-namespace", "mesh-root"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			switch tt.state {
			case "":
			case "older":
				startCA(t, state, "mesh-root")
				dropRootNamespace(t, state)
			default:
				startCA(t, state, tt.state)
			}
			cmd := newTokenCmd()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(append([]string{"create", "--state-dir", state}, tt.args...))
			err := cmd.Execute()
			if tt.wantErr == "" {
				if err != nil || !strings.HasPrefix(out.String(), "rampart-join.") {
					t.Fatalf("token create: %v, output %q; want a token", err, out.String())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("token create: err = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(out.String(), "rampart-join.") {
				t.Errorf("a refused token create printed %q", out.String())
			}
		})
	}
}

// startCA starts (and stops) a CA on state as rampartd --root-namespace rootNS would.
func startCA(t *testing.T, state, rootNS string) {
	t.Helper()
	a, err := ca.New(ca.Config{StateDir: state, RootNamespace: rootNS})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}

// dropRootNamespace makes state's CA record look as an older rampartd wrote it.
func dropRootNamespace(t *testing.T, state string) {
	t.Helper()
	path := filepath.Join(state, "ca", "state.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	if _, ok := st["root_namespace"]; !ok {
		t.Fatalf("%s records no root_namespace: %s", path, data)
	}
	delete(st, "root_namespace")
	if data, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
