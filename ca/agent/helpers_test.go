package agent_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

type cpOptions struct {
	clock         clock.WithTicker
	svidTTL       time.Duration
	rootNamespace string
	runAuthority  bool // drive root rotation (Authority.Run) on the clock
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

func bufferLogger(b *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// newFakeClock starts at the current whole second: certificates carry whole
// seconds, so SVID lifetimes come out exact.
func newFakeClock() *clocktesting.FakeClock {
	return clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
}

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

func startControlPlane(t *testing.T, o cpOptions) *controlPlane {
	t.Helper()
	return catest.Start(t, catest.Options{Clock: o.clock, SVIDTTL: o.svidTTL, RootNamespace: o.rootNamespace, RunAuthority: o.runAuthority})
}

// forwarder is the network path from the agent to its control plane: a TCP relay
// that can be pointed elsewhere, as an attacker on the path (or in DNS) would.
type forwarder struct {
	lis    net.Listener
	target atomic.Pointer[string]
	wg     sync.WaitGroup
}

func newForwarder(t *testing.T, target string) *forwarder {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{lis: lis}
	f.target.Store(&target)
	f.wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", *f.target.Load())
			if err != nil {
				c.Close()
				continue
			}
			f.wg.Go(func() { io.Copy(up, c); up.Close() })
			f.wg.Go(func() { io.Copy(c, up); c.Close() })
		}
	})
	t.Cleanup(func() {
		lis.Close()
		f.wg.Wait()
	})
	return f
}

// Addr is where the agent dials.
func (f *forwarder) Addr() string { return f.lis.Addr().String() }

// Redirect sends new connections to target.
func (f *forwarder) Redirect(target string) { f.target.Store(&target) }
