package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// fortioVersion is the load generator Istio's benchmarks use; newer versions
// need a module the module proxy here refuses.
const fortioVersion = "1.68.2"

// tools are the external programs the benchmark drives.
type tools struct {
	fortio, wrk, nginx, haproxy string
}

// ensureTools finds or installs fortio (go install into dir) and wrk, nginx and
// haproxy (Debian packages).
func ensureTools(ctx context.Context, dir string) (tools, error) {
	var t tools
	fortio := filepath.Join(dir, "fortio")
	out, err := exec.CommandContext(ctx, fortio, "version").Output()
	if first, _, _ := strings.Cut(string(out), "\n"); err == nil && strings.TrimSpace(first) == fortioVersion {
		progress("fortio %s: %s", fortioVersion, fortio)
	} else {
		progress("installing fortio %s into %s (go install)", fortioVersion, dir)
		goBin, err := exec.LookPath("go")
		if err != nil {
			return t, fmt.Errorf("go is not on PATH; needed to install fortio: %w", err)
		}
		ictx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ictx, goBin, "install", "fortio.org/fortio@v"+fortioVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			return t, fmt.Errorf("go install fortio.org/fortio@v%s: %w\n%s", fortioVersion, err, out)
		}
	}
	t.fortio = fortio

	need := map[string]string{"wrk": "wrk", "nginx": "nginx", "haproxy": "haproxy"} // binary → Debian package
	var missing []string
	for b, pkg := range need {
		if _, err := lookPath(b); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) > 0 {
		if err := aptInstall(ctx, missing); err != nil {
			return t, err
		}
	}
	for _, b := range []struct {
		name string
		dst  *string
	}{{"wrk", &t.wrk}, {"nginx", &t.nginx}, {"haproxy", &t.haproxy}} {
		p, err := lookPath(b.name)
		if err != nil {
			return t, fmt.Errorf("%s: not found after installing it: %w", b.name, err)
		}
		*b.dst = p
	}
	progress("wrk: %s, nginx: %s, haproxy: %s", t.wrk, t.nginx, t.haproxy)
	return t, nil
}

// lookPath also searches the sbin directories, where Debian puts nginx and
// haproxy and which a non-login PATH may lack.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not on PATH nor in /usr/sbin", name)
}

// aptInstall installs Debian packages, running apt-get update first only when
// the plain install fails (an empty or stale package list).
func aptInstall(ctx context.Context, pkgs []string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing %s and not root: install them (apt-get install -y %s) and run again", strings.Join(pkgs, ", "), strings.Join(pkgs, " "))
	}
	ictx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	apt := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ictx, "apt-get", args...)
		// RUNLEVEL=1 keeps Debian's maintainer scripts from starting the
		// packages' system services (nginx on :80) where init scripts are used.
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "RUNLEVEL=1")
		return cmd.CombinedOutput()
	}
	progress("installing %s (apt-get install -y)", strings.Join(pkgs, " "))
	install := append([]string{"install", "-y", "--no-install-recommends"}, pkgs...)
	if _, err := apt(install...); err == nil {
		return nil
	}
	progress("apt-get install failed; running apt-get update once and retrying")
	if out, err := apt("update"); err != nil {
		return fmt.Errorf("apt-get update: %w\n%s", err, tail(out, 2000))
	}
	if out, err := apt(install...); err != nil {
		return fmt.Errorf("apt-get install %s: %w\n%s", strings.Join(pkgs, " "), err, tail(out, 2000))
	}
	return nil
}

// tail returns the last n bytes of b.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
