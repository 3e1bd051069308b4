package workloadapi_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/rampart-mesh/rampart/ca/server"
	"github.com/rampart-mesh/rampart/ca/workloadapi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// The agent is the Source the server is built for.
var _ workloadapi.Source = (*agent.Agent)(nil)

// waitFor bounds every wait on another goroutine. It is a deadline, never an
// assertion about speed.
const waitFor = 10 * time.Second

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := checkGoroutines(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// checkGoroutines fails if goroutines other than the test binary's own outlive
// the tests, waiting a little for ones that are already on their way out.
func checkGoroutines() error {
	deadline := time.Now().Add(waitFor)
	for {
		leaked := leakedGoroutines()
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leaked %d goroutines:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var leaked []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 { // this goroutine
			continue
		}
		if strings.Contains(g, "testing.(*M).") || strings.Contains(g, "os/signal.signal_recv") {
			continue
		}
		leaked = append(leaked, g)
	}
	return leaked
}

// controlPlane is a real CA: an Authority with its state in a temporary
// directory, a join-token store and a CA server on loopback.
type controlPlane struct {
	Authority *ca.Authority
	Tokens    *jointoken.Store
	Clock     clock.WithTicker
	Addr      string
	Roots     []*x509.Certificate
}

// startControlPlane starts a CA on clk (nil: the real clock) issuing SVIDs for
// svidTTL (0: the default hour).
func startControlPlane(t *testing.T, clk clock.WithTicker, svidTTL time.Duration) *controlPlane {
	t.Helper()
	if clk == nil {
		clk = clock.RealClock{}
	}
	dir := t.TempDir()
	a, err := ca.New(ca.Config{StateDir: dir, Clock: clk, SVIDTTL: svidTTL})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	tokens := jointoken.New(dir, clk)
	srv, err := server.New(server.Config{Authority: a, Authenticator: tokens, Listen: "127.0.0.1:0", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	goRun(t, "ca server", srv.Run)
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	addr, err := srv.Addr(ctx)
	if err != nil {
		t.Fatalf("ca server did not start listening: %v", err)
	}
	return &controlPlane{Authority: a, Tokens: tokens, Clock: clk, Addr: addr.String(), Roots: a.Roots()}
}

// workload is one workload's identity agent and its Workload API socket.
type workload struct {
	Agent  *agent.Agent
	Socket string
	Logs   *syncBuffer
}

// Addr is the socket as go-spiffe's WithAddr takes it.
func (w *workload) Addr() string { return "unix://" + w.Socket }

// startWorkload joins ns/sa with a join token, waits for its first SVID and
// serves the Workload API for it.
func startWorkload(t *testing.T, cp *controlPlane, ns, sa string) *workload {
	t.Helper()
	tok, err := cp.Tokens.Create(ca.Identity{Namespace: ns, ServiceAccount: sa}, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{
		ControlPlane: cp.Addr,
		RootCerts:    cp.Roots,
		Token:        func() (string, error) { return tok, nil },
		Clock:        cp.Clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	goRun(t, "agent "+ns+"/"+sa, a.Run)
	select {
	case <-a.Ready():
	case <-time.After(waitFor):
		t.Fatalf("agent %s/%s not ready", ns, sa)
	}
	w := &workload{Agent: a, Socket: socketPath(t), Logs: &syncBuffer{}}
	startServer(t, a, w.Socket, w.Logs)
	return w
}

// socketPath returns a path for a Unix socket in a fresh directory. t.TempDir
// names can outgrow the 108 bytes a socket path may have, so it is short.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "api.sock")
}

// startServer serves the Workload API for src on path and waits until a client
// can connect.
func startServer(t *testing.T, src workloadapi.Source, path string, logs *syncBuffer) (stop func()) {
	t.Helper()
	srv, err := workloadapi.New(workloadapi.Config{Source: src, SocketPath: path, Log: bufferLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	stop = goRun(t, "workload API", srv.Run)
	waitUntil(t, "workload API socket "+path, func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Mode()&os.ModeSocket != 0 && strings.Contains(logs.String(), "workload API serving")
	})
	return stop
}

// newX509Source is go-spiffe's X509Source on w's socket.
func newX509Source(t *testing.T, w *workload) *spiffewl.X509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	src, err := spiffewl.NewX509Source(ctx, spiffewl.WithClientOptions(spiffewl.WithAddr(w.Addr())))
	if err != nil {
		t.Fatalf("NewX509Source: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// newClient is go-spiffe's Workload API client on w's socket.
func newClient(t *testing.T, w *workload) *spiffewl.Client {
	t.Helper()
	c, err := spiffewl.New(t.Context(), spiffewl.WithAddr(w.Addr()))
	if err != nil {
		t.Fatalf("workload API client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// goRun runs fn in a goroutine until the returned stop is called or the test
// ends, and fails the test if fn returns an error or does not return.
func goRun(t *testing.T, name string, fn func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: Run returned %v, want nil on cancel", name, err)
				}
			case <-time.After(waitFor):
				t.Errorf("%s: Run did not return after cancel", name)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitUntil polls cond until it holds, failing the test at the deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settle waits until n goroutines wait on clk: everything the last Step started
// has finished and re-armed its timer.
func settle(t *testing.T, clk *clocktesting.FakeClock, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d clock waiters", n), func() bool { return clk.Waiters() == n })
}

func serial(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.Text(16) }

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func bufferLogger(b *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }
