package workloadapi_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/catest"
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

func bufferLogger(b *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// The shared CA fixture.
const waitFor = catest.WaitFor

type (
	controlPlane = catest.ControlPlane
	syncBuffer   = catest.SyncBuffer
)

func TestMain(m *testing.M) { catest.MainWithLeakCheck(m) }

func goRun(t *testing.T, name string, fn func(context.Context) error) (stop func()) {
	t.Helper()
	return catest.GoRun(t, name, fn)
}

// startControlPlane starts a CA on clk (nil: the real clock) issuing SVIDs for
// svidTTL (0: the default hour).
func startControlPlane(t *testing.T, clk clock.WithTicker, svidTTL time.Duration) *controlPlane {
	t.Helper()
	return catest.Start(t, catest.Options{Clock: clk, SVIDTTL: svidTTL})
}
