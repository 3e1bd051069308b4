package agent_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/rampart-mesh/rampart/ca/server"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

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
	// Addr is where the server listens; Roots are what an agent trusts at first.
	Addr  string
	Roots []*x509.Certificate

	stopServer func()
}

type cpOptions struct {
	clock         clock.WithTicker
	svidTTL       time.Duration
	rootNamespace string
	runAuthority  bool // drive root rotation (Authority.Run) on the clock
}

func startControlPlane(t *testing.T, o cpOptions) *controlPlane {
	t.Helper()
	if o.clock == nil {
		o.clock = clock.RealClock{}
	}
	dir := t.TempDir()
	a, err := ca.New(ca.Config{StateDir: dir, Clock: o.clock, SVIDTTL: o.svidTTL, RootNamespace: o.rootNamespace})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	cp := &controlPlane{Authority: a, Tokens: jointoken.New(dir, o.clock), Clock: o.clock, Roots: a.Roots()}
	if o.runAuthority {
		goRun(t, "authority", a.Run)
	}
	cp.StartServer(t, "127.0.0.1:0")
	return cp
}

// StartServer starts a CA server for the Authority on addr and records its
// address; StopServer ends it.
func (cp *controlPlane) StartServer(t *testing.T, addr string) {
	t.Helper()
	srv, err := server.New(server.Config{Authority: cp.Authority, Authenticator: cp.Tokens, Listen: addr, Clock: cp.Clock})
	if err != nil {
		t.Fatal(err)
	}
	cp.stopServer = goRun(t, "ca server", srv.Run)
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	a, err := srv.Addr(ctx)
	if err != nil {
		t.Fatalf("ca server did not start listening: %v", err)
	}
	cp.Addr = a.String()
}

// StopServer stops the CA server and waits until it has returned.
func (cp *controlPlane) StopServer() { cp.stopServer() }

// Token mints a single-use join token for ns/sa.
func (cp *controlPlane) Token(t *testing.T, ns, sa string) string {
	t.Helper()
	tok, err := cp.Tokens.Create(ca.Identity{Namespace: ns, ServiceAccount: sa}, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// oneToken returns a Token func that hands out tok once and fails afterwards, and
// a counter of its calls: an agent that holds an SVID must not need it again.
func oneToken(tok string) (func() (string, error), func() int) {
	var (
		mu    sync.Mutex
		calls int
	)
	return func() (string, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			if calls > 1 {
				return "", errors.New("the join token was spent already")
			}
			return tok, nil
		}, func() int {
			mu.Lock()
			defer mu.Unlock()
			return calls
		}
}

// newAgent builds an agent for cp; cfg may preset fields.
func newAgent(t *testing.T, cp *controlPlane, cfg agent.Config) *agent.Agent {
	t.Helper()
	if cfg.ControlPlane == "" {
		cfg.ControlPlane = cp.Addr
	}
	if cfg.RootCerts == nil {
		cfg.RootCerts = cp.Roots
	}
	if cfg.Clock == nil {
		cfg.Clock = cp.Clock
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// startAgent runs a and waits for its first SVID.
func startAgent(t *testing.T, a *agent.Agent) (stop func()) {
	t.Helper()
	stop = goRun(t, "agent", a.Run)
	select {
	case <-a.Ready():
	case <-time.After(waitFor):
		t.Fatal("agent not ready")
	}
	return stop
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

// settle waits until n goroutines wait on clk: everything the last Step started
// has finished and re-armed its timer.
func settle(t *testing.T, clk *clocktesting.FakeClock, n int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for clk.Waiters() != n {
		if time.Now().After(deadline) {
			t.Fatalf("clock has %d waiters, want %d", clk.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// step advances clk by d and waits for the n timer holders to settle.
func step(t *testing.T, clk *clocktesting.FakeClock, d time.Duration, n int) {
	t.Helper()
	settle(t, clk, n)
	clk.Step(d)
	settle(t, clk, n)
}

func mustSVID(t *testing.T, a *agent.Agent) *x509svid.SVID {
	t.Helper()
	s, err := a.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	return s
}

func serial(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.Text(16) }

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// metric returns the value of the gauge or counter name{labels} in reg, and
// whether it exists.
func metric(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func renewals(t *testing.T, reg prometheus.Gatherer, result string) float64 {
	t.Helper()
	v, _ := metric(t, reg, "rampart_agent_svid_renewals_total", map[string]string{"result": result})
	return v
}

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

// newFakeClock starts at the current whole second: certificates carry whole
// seconds, so SVID lifetimes come out exact.
func newFakeClock() *clocktesting.FakeClock {
	return clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
}
