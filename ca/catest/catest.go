// Package catest starts a real control-plane CA for tests of the packages that
// talk to one: an Authority with its state in a temporary directory, a join-token
// store and the CA server on loopback. It is built on the real code, not a fake,
// and is imported only by tests.
package catest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/rampart-mesh/rampart/ca/server"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"k8s.io/utils/clock"
)

// WaitFor bounds every wait on another goroutine. It is a deadline, never an
// assertion about speed.
const WaitFor = 10 * time.Second

// ControlPlane is a running CA.
type ControlPlane struct {
	Authority *ca.Authority
	Tokens    *jointoken.Store
	Clock     clock.WithTicker
	// Addr is where the server listens; Roots are what an agent trusts at first.
	Addr  string
	Roots []*x509.Certificate

	stopServer func()
}

// Options configure Start. Zero values take the CA's defaults and the real clock.
type Options struct {
	Clock         clock.WithTicker
	SVIDTTL       time.Duration
	RootNamespace string
	// RunAuthority drives root rotation (Authority.Run) on the clock.
	RunAuthority bool
}

// Authority is a new CA with its state in a temporary directory, loaded, and
// closed when the test ends.
func Authority(t testing.TB) *ca.Authority {
	t.Helper()
	a, err := ca.New(ca.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// Start starts a CA for the test; everything stops when the test ends.
func Start(t *testing.T, o Options) *ControlPlane {
	t.Helper()
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	dir := t.TempDir()
	a, err := ca.New(ca.Config{StateDir: dir, Clock: o.Clock, SVIDTTL: o.SVIDTTL, RootNamespace: o.RootNamespace})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	cp := &ControlPlane{Authority: a, Tokens: jointoken.New(dir, o.Clock), Clock: o.Clock, Roots: a.Roots()}
	if o.RunAuthority {
		GoRun(t, "authority", a.Run)
	}
	cp.StartServer(t, "127.0.0.1:0")
	return cp
}

// StartServer starts a CA server for the Authority on addr and records its
// address; StopServer ends it.
func (cp *ControlPlane) StartServer(t *testing.T, addr string) {
	t.Helper()
	srv, err := server.New(server.Config{Authority: cp.Authority, Authenticator: cp.Tokens, Listen: addr, Clock: cp.Clock})
	if err != nil {
		t.Fatal(err)
	}
	cp.stopServer = GoRun(t, "ca server", srv.Run)
	ctx, cancel := context.WithTimeout(t.Context(), WaitFor)
	defer cancel()
	a, err := srv.Addr(ctx)
	if err != nil {
		t.Fatalf("ca server did not start listening: %v", err)
	}
	cp.Addr = a.String()
}

// StopServer stops the CA server and waits until it has returned.
func (cp *ControlPlane) StopServer() { cp.stopServer() }

// Token mints a single-use join token for ns/sa.
func (cp *ControlPlane) Token(t *testing.T, ns, sa string) string {
	t.Helper()
	tok, err := cp.Tokens.Create(ca.Identity{Namespace: ns, ServiceAccount: sa}, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// GoRun runs fn in a goroutine until the returned stop (or the test's end)
// cancels it, and checks it returns nil promptly, as Run methods must.
func GoRun(t *testing.T, name string, fn func(context.Context) error) (stop func()) {
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
			case <-time.After(WaitFor):
				t.Errorf("%s: Run did not return after cancel", name)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// SyncBuffer is a log sink safe for concurrent writers.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// MainWithLeakCheck runs the tests, then fails the binary if goroutines outlive
// them. Call it from TestMain.
func MainWithLeakCheck(m *testing.M) { goleak.VerifyTestMain(m) }

// IssueSVID signs an X.509-SVID for ns/sa with the Authority a and a fresh
// P-256 key, the way an agent gets one (key, CSR, signature) but without a server.
func IssueSVID(t testing.TB, a *ca.Authority, ns, sa string) *x509svid.SVID {
	t.Helper()
	key, err := ca.GenerateKey(ca.KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	ident := ca.Identity{Namespace: ns, ServiceAccount: sa}
	id, err := ident.ID(a.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := a.SignCSR(csr, ident, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain[:len(chain)-1], PrivateKey: key}
}

// TLSCertificate is svid as a tls.Certificate (chain without the root).
func TLSCertificate(svid *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}
