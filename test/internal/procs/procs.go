// Package procs starts the real Rampart binaries for end-to-end tests and
// benchmarks: it finds (or builds) them, captures each process's output to a log
// file and stops every process when the test ends.
package procs

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/internal/freeport"
)

// BuildTags are the tags the Makefile builds the binaries with (see its
// GOFLAGS): grpcnotrace leaves out grpc's request tracing.
const BuildTags = "grpcnotrace"

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// BinDir returns the directory holding rampartd, rampart-sidecar, rampartctl and bookinfo:
// $RAMPART_BIN if set (make test sets it), else a fresh build in a temp dir.
func BinDir(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("RAMPART_BIN"); d != "" {
			binDir = d
			return
		}
		_, file, _, _ := runtime.Caller(0)
		repo := filepath.Join(filepath.Dir(file), "..", "..", "..")
		dir, err := os.MkdirTemp("", "rampart-bin-")
		if err != nil {
			buildErr = err
			return
		}
		for _, args := range [][]string{
			{"build", "-tags=" + BuildTags, "-o", dir + "/", "./cmd/rampartd", "./cmd/rampart-sidecar", "./cmd/rampartctl"},
			{"build", "-tags=" + BuildTags, "-o", dir + "/bookinfo", "./deploy/examples/bookinfo/app"},
		} {
			cmd := exec.Command("go", args...)
			cmd.Dir = repo
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build: %v\n%s", err, out)
				return
			}
		}
		binDir = dir
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binDir
}

// Proc is a running process.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // path of its combined output
	done chan struct{}
	err  error
}

// Start runs bin (a name in BinDir) with args; its output goes to a log file in
// dir. The process is killed when the test ends, and its log is printed if the
// test failed.
func Start(tb testing.TB, dir, name, bin string, args ...string) *Proc {
	tb.Helper()
	logPath := filepath.Join(dir, strings.ReplaceAll(name, "/", "_")+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(BinDir(tb), bin), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		tb.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Stop(tb)
		if tb.Failed() {
			data, _ := os.ReadFile(logPath)
			tb.Logf("---- %s log ----\n%s", name, tail(data, 60))
		}
	})
	return p
}

// Stop sends SIGTERM and waits, then SIGKILL after 10 s.
func (p *Proc) Stop(tb testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		tb.Logf("%s did not stop on SIGTERM; killing it", p.Name)
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output returns what the process has logged so far.
func (p *Proc) Output() string {
	data, _ := os.ReadFile(p.Log)
	return string(data)
}

// WaitLog waits until the process's log contains s.
func (p *Proc) WaitLog(tb testing.TB, s string, limit time.Duration) {
	tb.Helper()
	Eventually(tb, limit, fmt.Sprintf("%s logs %q", p.Name, s), func() bool { return strings.Contains(p.Output(), s) })
}

// Run runs a short-lived binary and returns its stdout; a failure fails the test.
func Run(tb testing.TB, bin string, args ...string) string {
	tb.Helper()
	out, err := RunErr(tb, bin, args...)
	if err != nil {
		tb.Fatalf("%s %s: %v", bin, strings.Join(args, " "), err)
	}
	return out
}

// RunErr runs a short-lived binary and returns its stdout and an error that
// includes its stderr.
func RunErr(tb testing.TB, bin string, args ...string) (string, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(BinDir(tb), bin), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), nil
}

// FreeAddr returns a loopback address with a port that was free a moment ago,
// from below the ephemeral range (internal/freeport), so that another test's
// :0 listener cannot take it before the process it is for binds it.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		tb.Fatal(err)
	}
	return addr
}

// WaitTCP waits until addr accepts connections.
func WaitTCP(tb testing.TB, addr string, limit time.Duration) {
	tb.Helper()
	Eventually(tb, limit, "listening on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// Eventually polls cond every 50 ms until it holds, failing the test after limit.
func Eventually(tb testing.TB, limit time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for: %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ShortTempDir returns a temp dir with a short path (Unix socket paths are
// limited to 108 bytes), removed when the test ends.
func ShortTempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "rmp")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// RSS returns the resident set size of pid in bytes, from /proc.
func RSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
