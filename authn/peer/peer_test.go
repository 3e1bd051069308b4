package peer

import (
	"bufio"
	"crypto/tls"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// rotatingSource is an x509svid.Source whose SVID the test replaces, as the agent does.
type rotatingSource struct{ cur atomic.Pointer[x509svid.SVID] }

func (s *rotatingSource) GetX509SVID() (*x509svid.SVID, error) { return s.cur.Load(), nil }

type testCA struct {
	t *testing.T
	a *ca.Authority
}

func newCA(t *testing.T, td string) *testCA {
	t.Helper()
	a, err := ca.New(ca.Config{StateDir: t.TempDir(), TrustDomain: spiffeid.RequireTrustDomainFromString(td)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return &testCA{t: t, a: a}
}

func (c *testCA) issue(ns, sa string) *x509svid.SVID { return catest.IssueSVID(c.t, c.a, ns, sa) }

func (c *testCA) bundle() x509bundle.Source { return c.a.Bundle() }

// echo serves lines back, prefixed with the peer's SPIFFE ID.
func echo(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				id, _ := ID(tc.ConnectionState())
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(id.String() + " " + line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return lis.Addr().String()
}

func roundTrip(t *testing.T, c *tls.Conn, r *bufio.Reader, msg string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return strings.TrimSpace(line)
}

// New handshakes pick up each rotated SVID on both sides, an established connection
// keeps working through every rotation, and the server sees the client's identity.
func TestRotationKeepsConnectionsAndHandshakes(t *testing.T) {
	c := newCA(t, "cluster.local")
	td := c.a.TrustDomain()
	srvSrc, cliSrc := &rotatingSource{}, &rotatingSource{}
	srvSrc.cur.Store(c.issue("default", "api"))
	cliSrc.cur.Store(c.issue("default", "web"))
	addr := echo(t, ServerConfig(srvSrc, c.bundle(), td, "h2", "http/1.1"))
	cliCfg := ClientConfig(cliSrc, c.bundle(), td, "h2")

	long, err := tls.Dial("tcp", addr, cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	longR := bufio.NewReader(long)
	if got := roundTrip(t, long, longR, "hi"); got != "spiffe://cluster.local/ns/default/sa/web hi" {
		t.Fatalf("echo = %q", got)
	}
	if st := long.ConnectionState(); st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != "h2" {
		t.Fatalf("version %x ALPN %q; want TLS 1.3 and h2", st.Version, st.NegotiatedProtocol)
	}
	for i := range 3 {
		oldSrv := srvSrc.cur.Load().Certificates[0].SerialNumber
		srvSrc.cur.Store(c.issue("default", "api"))
		cliSrc.cur.Store(c.issue("default", "web"))
		fresh, err := tls.Dial("tcp", addr, cliCfg)
		if err != nil {
			t.Fatalf("rotation %d: new handshake failed: %v", i+1, err)
		}
		if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(oldSrv) == 0 {
			t.Fatalf("rotation %d: the server still presents its old SVID", i+1)
		}
		if got := roundTrip(t, fresh, bufio.NewReader(fresh), "new"); !strings.HasPrefix(got, "spiffe://cluster.local/ns/default/sa/web") {
			t.Fatalf("rotation %d: %q", i+1, got)
		}
		fresh.Close()
		if got := roundTrip(t, long, longR, "still"); got != "spiffe://cluster.local/ns/default/sa/web still" {
			t.Fatalf("rotation %d: the established connection broke: %q", i+1, got)
		}
	}
}

// A peer from another trust domain, a client without a certificate and a TLS 1.2
// client are all refused at the handshake.
func TestHandshakeRefusals(t *testing.T) {
	c := newCA(t, "cluster.local")
	other := newCA(t, "other.example")
	td := c.a.TrustDomain()
	srvSrc := &rotatingSource{}
	srvSrc.cur.Store(c.issue("default", "api"))
	// The server trusts both bundles, so only the trust-domain authorizer can refuse the stranger.
	both := x509bundle.NewSet(c.a.Bundle().X509Bundle(), other.a.Bundle().X509Bundle())
	addr := echo(t, ServerConfig(srvSrc, both, td))

	stranger := &rotatingSource{}
	stranger.cur.Store(other.issue("default", "web"))
	good := &rotatingSource{}
	good.cur.Store(c.issue("default", "web"))

	tls12 := ClientConfig(good, c.bundle(), td)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	noCert := ClientConfig(good, c.bundle(), td)
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }

	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"other trust domain", ClientConfig(stranger, both, td)},
		{"no client certificate", noCert},
		{"TLS 1.2", tls12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", addr, tc.cfg)
			if err == nil {
				// TLS 1.3 reports a client-certificate rejection on the first read.
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = conn.Write([]byte("x\n"))
				_, err = bufio.NewReader(conn).ReadString('\n')
				conn.Close()
			}
			if err == nil {
				t.Fatal("the connection was accepted")
			}
		})
	}
	// The control case: the same server accepts a member of its trust domain.
	conn, err := tls.Dial("tcp", addr, ClientConfig(good, c.bundle(), td))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := roundTrip(t, conn, bufio.NewReader(conn), "ok"); got != "spiffe://cluster.local/ns/default/sa/web ok" {
		t.Fatalf("echo = %q", got)
	}
}

func TestIDWithoutCertificate(t *testing.T) {
	if _, err := ID(tls.ConnectionState{}); err != ErrNoPeerCertificate {
		t.Fatalf("err = %v, want ErrNoPeerCertificate", err)
	}
}
