// Command identity-demo runs Rampart on loopback, the way a user would by hand:
// rampartd (watching a policy directory), and three workloads with sidecars and
// fresh join tokens. The frontend app is SPIFFE-aware (go-spiffe) and calls the
// backend over mTLS with the identity its sidecar hands it; the backend is a plain
// HTTP app behind its sidecar, which enforces the policies (STRICT mTLS, only the
// frontend may call); an intruder with a valid identity is denied, and its denials
// land in the tamper-evident decision log. SVIDs are short-lived so rotations show
// within seconds; a root rotation starts by itself after --rotate-after.
// Ctrl-C stops everything.
//
//	make demo
//	go run ./deploy/examples/identity-demo --bin ./bin --state-dir .rampart
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rampart-mesh/rampart/internal/freeport"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "identity-demo:", err)
		os.Exit(1)
	}
}

type demo struct {
	bin      string
	stateDir string
	out      io.Writer
	mu       sync.Mutex
	procs    []*exec.Cmd
	wg       sync.WaitGroup
	exited   chan string
}

func run() error {
	bin := flag.String("bin", envOr("RAMPART_BIN", "bin"), "directory with rampartd, rampart-sidecar, rampartctl and spiffe-app")
	stateDir := flag.String("state-dir", ".rampart", "rampartd state directory (a second run reuses its CA)")
	duration := flag.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	rotateAfter := flag.Duration("rotate-after", 20*time.Second, "start a root rotation after this long (0: never)")
	svidTTL := flag.Duration("svid-ttl", 20*time.Second, "SVID lifetime, short so rotations show")
	policies := flag.String("policies", "deploy/examples/identity-demo/policies", "policy directory rampartd watches (edit it while the demo runs)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	abs, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	d := &demo{bin: *bin, stateDir: abs, out: os.Stdout, exited: make(chan string, 8)}
	defer d.stopAll()
	for _, b := range []string{"rampartd", "rampart-sidecar", "rampartctl", "spiffe-app"} {
		if _, err := os.Stat(filepath.Join(d.bin, b)); err != nil {
			return fmt.Errorf("%s not found in %s (run 'make build' and build deploy/examples/spiffe-app, or 'make demo')", b, d.bin)
		}
	}
	runDir, err := os.MkdirTemp("", "rampart-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runDir)

	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	cpPort, appPort, inboundPort := ports[0], ports[1], ports[2]
	policyDir, err := filepath.Abs(*policies)
	if err != nil {
		return err
	}
	if _, err := os.Stat(policyDir); err != nil {
		return fmt.Errorf("--policies: %w", err)
	}
	decisionLog := filepath.Join(d.stateDir, "decisions.log")
	cp := fmt.Sprintf("127.0.0.1:%d", cpPort)
	d.start("rampartd", "rampartd", "--state-dir", d.stateDir, "--listen", cp, "--monitoring-listen", "127.0.0.1:0",
		"--svid-ttl", svidTTL.String(), "--jwt-svid-ttl", "10s", "--bundle-refresh-hint", "3s",
		"--rotation-propagation", "8s", "--rotation-retire-margin", "5s", "--config-dir", policyDir)
	if err := waitFor(ctx, 20*time.Second, func() bool {
		c, err := net.Dial("tcp", cp)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		return fmt.Errorf("rampartd did not start on %s: %w", cp, err)
	}
	root := filepath.Join(runDir, "root.pem")
	if err := d.ctl(root, "ca", "root", "--state-dir", d.stateDir); err != nil {
		return err
	}
	socks := map[string]string{}
	for _, w := range []string{"backend", "frontend", "intruder"} {
		tok := filepath.Join(runDir, w+".token")
		if err := d.ctl(tok, "token", "create", "--state-dir", d.stateDir, "--namespace", "default", "--service-account", w, "--ttl", "5m"); err != nil {
			return err
		}
		socks[w] = filepath.Join(runDir, w+".sock")
		args := []string{"--control-plane", cp, "--root-cert", root, "--token-file", tok, "--workload-api-socket", socks[w], "--metrics-listen", ""}
		if w == "backend" {
			args = append(args, "--inbound-listen", fmt.Sprintf("127.0.0.1:%d", inboundPort), "--app", fmt.Sprintf("127.0.0.1:%d", appPort),
				"--labels", "app=backend", "--decision-log", decisionLog)
		}
		d.start("sidecar/"+w, "rampart-sidecar", args...)
	}
	for w, s := range socks {
		if err := waitFor(ctx, 20*time.Second, func() bool { _, err := os.Stat(s); return err == nil }); err != nil {
			return fmt.Errorf("sidecar %s did not open its Workload API socket: %w", w, err)
		}
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/", inboundPort)
	d.start("app/backend", "spiffe-app", "serve-plain", "--listen", fmt.Sprintf("127.0.0.1:%d", appPort), "--name", "backend")
	time.Sleep(300 * time.Millisecond)
	d.start("app/frontend", "spiffe-app", "call", "--socket", socks["frontend"], "--url", url, "--interval", "2s",
		"--server-id", "spiffe://cluster.local/ns/default/sa/backend")
	d.start("app/intruder", "spiffe-app", "call", "--socket", socks["intruder"], "--url", url, "--interval", "5s",
		"--server-id", "spiffe://cluster.local/ns/default/sa/backend")

	fmt.Fprintf(d.out, `
Rampart demo is running.
  control plane  %s   (state in %s, policies from %s)
  backend        %s   behind its sidecar: STRICT mTLS, only the frontend may call
  frontend       calls it every 2 s as spiffe://cluster.local/ns/default/sa/frontend  → 200
  intruder       calls it every 5 s as spiffe://cluster.local/ns/default/sa/intruder  → 403
SVIDs live %s and renew at about half that; watch the serials change.
Try in another terminal:
  %s/rampartctl ca status --state-dir %s
  %s/rampartctl audit verify %s      (the intruder's denials, hash-chained)
  edit %s/policies.yaml (add the intruder's principal) and watch its 403s turn into 200s
Ctrl-C stops everything.

`, cp, d.stateDir, policyDir, url, svidTTL, d.bin, d.stateDir, d.bin, decisionLog, policyDir)

	var rotate <-chan time.Time
	if *rotateAfter > 0 {
		rotate = time.After(*rotateAfter)
	}
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(d.out, "\nstopping…")
			return nil
		case name := <-d.exited:
			return fmt.Errorf("%s exited unexpectedly; see its log above", name)
		case <-rotate:
			fmt.Fprintln(d.out, "\n== starting a root rotation: rampartctl ca rotate ==")
			if err := d.ctl("", "ca", "rotate", "--state-dir", d.stateDir); err != nil {
				fmt.Fprintln(d.out, "rotate:", err)
			}
		}
	}
}

// start launches a process whose output is prefixed with its name. It dies with
// the demo even if the demo is killed (Pdeathsig).
func (d *demo) start(name, bin string, args ...string) {
	cmd := exec.Command(filepath.Join(d.bin, bin), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(d.out, "%-14s failed to start: %v\n", name, err)
		d.exited <- name
		return
	}
	d.mu.Lock()
	d.procs = append(d.procs, cmd)
	d.mu.Unlock()
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintf(d.out, "%-14s %s\n", name, compact(sc.Text()))
		}
	}()
	go func() {
		defer d.wg.Done()
		err := cmd.Wait()
		pw.Close()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled()) {
			select {
			case d.exited <- name:
			default:
			}
		}
	}()
}

// compact drops slog's time= field; the demo's reader wants the message.
func compact(line string) string {
	if strings.HasPrefix(line, "time=") {
		if i := strings.IndexByte(line, ' '); i > 0 {
			return line[i+1:]
		}
	}
	return line
}

// ctl runs rampartctl, writing its stdout to file (or the demo's output if "").
func (d *demo) ctl(file string, args ...string) error {
	cmd := exec.Command(filepath.Join(d.bin, "rampartctl"), args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("rampartctl %s: %w", strings.Join(args, " "), err)
	}
	if file == "" {
		_, err = d.out.Write(out)
		return err
	}
	return os.WriteFile(file, out, 0o600)
}

func (d *demo) stopAll() {
	d.mu.Lock()
	procs := d.procs
	d.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- { // apps first, rampartd last
		_ = syscall.Kill(-procs[i].Process.Pid, syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		for _, p := range procs {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		}
		<-done
	}
}

func freePort() (int, error) { return freeport.Port() }

func waitFor(ctx context.Context, limit time.Duration, ok func() bool) error {
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
