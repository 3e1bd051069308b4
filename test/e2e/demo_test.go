package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// make demo, shortened: the frontend's calls succeed through SVID rotations and a
// root rotation, the intruder is denied and logged, and every process stops.
func TestIdentityDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 40 s")
	}
	bin := t.TempDir()
	for _, b := range []string{"rampartd", "rampart-sidecar", "rampartctl"} {
		if err := os.Symlink(filepath.Join(procs.BinDir(t), b), filepath.Join(bin, b)); err != nil {
			t.Fatal(err)
		}
	}
	_, file, _, _ := runtime.Caller(0)
	repo := filepath.Join(filepath.Dir(file), "..", "..")
	build := exec.Command("go", "build", "-o", bin+"/", "./deploy/examples/spiffe-app", "./deploy/examples/identity-demo")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build demo: %v\n%s", err, out)
	}
	state := filepath.Join(procs.ShortTempDir(t), "state")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "identity-demo"), "--bin", bin, "--state-dir", state,
		"--duration", "40s", "--rotate-after", "4s", "--svid-ttl", "6s",
		"--policies", filepath.Join(repo, "deploy", "examples", "identity-demo", "policies"))
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("identity-demo: %v\n%s", err, text)
	}
	for _, want := range []string{
		"Rampart demo is running",
		"200 OK (my svid",
		"this is backend behind its sidecar",
		"app/intruder   request 1: 403 Forbidden",
		"root rotation started",
		"root rotation: new root now signing",
		"root rotation complete: old root removed from the bundle",
		"X.509-SVID rotated",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Contains(text, "FAILED") {
		t.Errorf("a request failed during the demo")
	}
	if strings.Contains(text, "app/frontend   request") && strings.Contains(text, "app/frontend   request 1: 403") {
		t.Errorf("the frontend was denied")
	}
	// The intruder's denials are in the decision log, whose chain verifies.
	if out := procs.Run(t, "rampartctl", "audit", "verify", filepath.Join(state, "decisions.log")); !strings.Contains(out, "chain:   intact") {
		t.Errorf("audit verify:\n%s", out)
	}
	if n := strings.Count(text, "200 OK"); n < 10 {
		t.Errorf("only %d successful requests", n)
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
	// No process the demo started may outlive it.
	// Every child runs from bin, so its command line names it.
	if out, err := exec.Command("pgrep", "-f", bin+"/").Output(); err == nil {
		t.Errorf("processes left behind after the demo stopped: %s", out)
	}
}
