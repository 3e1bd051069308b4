package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// Every binary answers --help and --version, and refuses what it does not know with
// a message that names it.
func TestBinariesHelpVersionAndBadInput(t *testing.T) {
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badConfig, []byte("listen: 127.0.0.1:0\nstateDri: /tmp/x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"rampartd", "rampart-sidecar", "rampartctl"} {
		t.Run(bin, func(t *testing.T) {
			help := procs.Run(t, bin, "--help")
			if !strings.Contains(help, "Usage:") || !strings.Contains(help, "--help") {
				t.Errorf("--help output lacks usage:\n%s", help)
			}
			if v := procs.Run(t, bin, "--version"); !strings.Contains(v, "version") {
				t.Errorf("--version printed %q", v)
			}
			_, err := procs.RunErr(t, bin, "--no-such-flag")
			if err == nil || !strings.Contains(err.Error(), "unknown flag: --no-such-flag") {
				t.Errorf("unknown flag: err = %v", err)
			}
		})
	}
	_, err := procs.RunErr(t, "rampartd", "--config", badConfig)
	if err == nil || !strings.Contains(err.Error(), `unknown field "stateDri"`) || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("unknown config key: err = %v; want the key and the file named", err)
	}
	// A mesh config naming another trust domain than the CA's would compile
	// policies whose principals no identity carries (a DENY never firing).
	meshTD := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshTD, []byte("trustDomain: example.org\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = procs.RunErr(t, "rampartd", "--state-dir", filepath.Join(dir, "td"), "--listen", "127.0.0.1:0", "--mesh-config", meshTD)
	if err == nil || !strings.Contains(err.Error(), `trustDomain "example.org" is not the CA's trust domain "cluster.local"`) {
		t.Errorf("mesh config with another trust domain: err = %v", err)
	}
	_, err = procs.RunErr(t, "rampart-sidecar", "--control-plane", "127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "--root-cert is required") {
		t.Errorf("sidecar without --root-cert: err = %v", err)
	}
	_, err = procs.RunErr(t, "rampartctl", "ca", "root", "--state-dir", dir)
	if err == nil || !strings.Contains(err.Error(), "start rampartd with --state-dir") {
		t.Errorf("ca root on an empty state dir: err = %v", err)
	}
	_, err = procs.RunErr(t, "rampartctl", "token", "create", "--state-dir", dir, "--namespace", "Bad_NS", "--service-account", "web")
	if err == nil || !strings.Contains(err.Error(), "not a valid DNS-1123 label") {
		t.Errorf("token for an invalid namespace: err = %v", err)
	}
	// -o is checked as the flags are parsed, before the command does any work.
	for _, args := range [][]string{{"analyze"}, {"authz", "check"}, {"authz", "test"}, {"ca", "status"}, {"ca", "rotate"}, {"proxy-status"}} {
		_, err = procs.RunErr(t, "rampartctl", append(args, "-o", "yaml")...)
		if err == nil || !strings.Contains(err.Error(), `invalid argument "yaml" for "-o, --output" flag: want text or json`) {
			t.Errorf("rampartctl %s -o yaml: err = %v", strings.Join(args, " "), err)
		}
	}
}
