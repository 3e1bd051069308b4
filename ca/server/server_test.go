package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	istioca "istio.io/api/security/v1alpha1"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	web      = ca.Identity{Namespace: "default", ServiceAccount: "web"}
	webID    = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
	adminID  = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/admin")
	serverID = spiffeid.RequireFromString("spiffe://example.org/ns/rampart-system/sa/rampartd")
)

// fixture is a running Server with a real Authority and join-token store.
type fixture struct {
	a      *ca.Authority
	dir    string // the state directory
	tokens *jointoken.Store
	hooks  *hookedTokens           // the server's Authenticator: tokens with a test hook
	clk    *clocktesting.FakeClock // the join tokens' clock
	caClk  clock.WithTicker        // the Authority's and Server's clock
	reg    *prometheus.Registry
	logs   *syncBuffer
	addr   string
	// served records the chain the server presented on each handshake.
	mu     sync.Mutex
	served [][]*x509.Certificate
}

// hookedTokens is the join-token store with a hook that runs as the server
// spends a token.
type hookedTokens struct {
	*jointoken.Store
	onConsume func() // set before the requests it should see
}

func (h *hookedTokens) Consume(ctx context.Context, token string) error {
	if h.onConsume != nil {
		h.onConsume()
	}
	return h.Store.Consume(ctx, token)
}

// syncBuffer is a bytes.Buffer the server's goroutines may write while a test reads.
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

func startServer(t *testing.T) *fixture { return startServerWith(t, nil, 0) }

// startServerWith starts a server whose Authority and Server run on caClk (the
// real clock if nil), with the given propagation delay (0 = default).
func startServerWith(t *testing.T, caClk clock.WithTicker, propagation time.Duration) *fixture {
	t.Helper()
	if caClk == nil {
		// The TLS peers check certificate lifetimes against this clock; the real
		// one unless a test drives time itself.
		caClk = clock.RealClock{}
	}
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	a, err := ca.New(ca.Config{StateDir: dir, TrustDomain: td, Metrics: reg, Clock: caClk, PropagationDelay: propagation})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	clk := clocktesting.NewFakeClock(time.Now())
	f := &fixture{a: a, dir: dir, tokens: jointoken.New(dir, clk), clk: clk, caClk: caClk, reg: reg, logs: &syncBuffer{}}
	f.hooks = &hookedTokens{Store: f.tokens}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Authority: a, Authenticator: f.hooks, Listener: lis, Clock: caClk, Log: slog.New(slog.NewTextHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	// Registered before any client connection, so it runs after they close.
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil after cancel", err)
		}
	})
	addr, err := srv.Addr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.addr = addr.String()
	return f
}

// dial connects over TLS, verifying that the server presents rampartd's SVID
// from the authority's bundle. clientCert, when set, is presented for renewal.
func (f *fixture) dial(t *testing.T, clientCert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{
		InsecureSkipVerify: true, // replaced by the SPIFFE verification below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, chains, err := x509svid.ParseAndVerify(raw, f.a.Bundle(), x509svid.WithTime(f.caClk.Now()))
			if err != nil {
				return err
			}
			if id != serverID {
				return fmt.Errorf("server is %s, want %s", id, serverID)
			}
			f.mu.Lock()
			f.served = append(f.served, chains[0])
			f.mu.Unlock()
			return nil
		},
	}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	conn, err := grpc.NewClient("passthrough:///"+f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (f *fixture) token(t *testing.T, ident ca.Identity) string {
	t.Helper()
	tok, err := f.tokens.Create(ident, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// issued returns rampart_ca_certificates_issued_total{result}.
func (f *fixture) issued(t *testing.T, result string) float64 { return f.counts(t)[result] }

// counts returns rampart_ca_certificates_issued_total by result.
func (f *fixture) counts(t *testing.T) map[string]float64 {
	t.Helper()
	families, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, fam := range families {
		if fam.GetName() != "rampart_ca_certificates_issued_total" {
			continue
		}
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrPEM(t *testing.T, key crypto.Signer, ids ...spiffeid.ID) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, id := range ids {
		tmpl.URIs = append(tmpl.URIs, id.URL())
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func bearer(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// parseChain decodes a response chain, one PEM certificate per entry.
func parseChain(t *testing.T, entries []string) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	for i, e := range entries {
		certs, err := ca.ParseCertsPEM([]byte(e))
		if err != nil || len(certs) != 1 {
			t.Fatalf("cert_chain[%d]: %d certificates, %v; want one PEM certificate", i, len(certs), err)
		}
		chain = append(chain, certs[0])
	}
	return chain
}

// svidFor obtains an X.509-SVID for ident with a join token and returns it as a
// TLS client certificate.
func (f *fixture) svidFor(t *testing.T, ident ca.Identity) *tls.Certificate {
	t.Helper()
	id, err := ident.ID(td)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	resp, err := istioca.NewIstioCertificateServiceClient(f.dial(t, nil)).CreateCertificate(
		bearer(t.Context(), f.token(t, ident)), &istioca.IstioCertificateRequest{Csr: csrPEM(t, key, id)})
	if err != nil {
		t.Fatalf("obtain SVID for %s: %v", ident, err)
	}
	cert := &tls.Certificate{PrivateKey: key}
	for _, c := range parseChain(t, resp.GetCertChain()) {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

func TestCreateCertificate(t *testing.T) {
	f := startServer(t)
	admin := ca.Identity{Namespace: "default", ServiceAccount: "admin"}
	webSVID := f.svidFor(t, web)
	foreignSVID := foreignCert(t)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}

	type call struct {
		ctx  context.Context
		conn *grpc.ClientConn
		req  *istioca.IstioCertificateRequest
	}
	tests := []struct {
		name     string
		setup    func(t *testing.T) call
		wantCode codes.Code
		wantMsg  []string
		// wantLog: the server logs the refusal (false for refusals gRPC or TLS
		// make before the handler runs).
		wantLog bool
		// wantResult is the rampart_ca_certificates_issued_total result the request
		// is counted under; "" for requests refused before the handler runs.
		wantResult string
		// check inspects an issued chain; the SVID lifetime is NotAfter-NotBefore.
		check func(t *testing.T, chain []*x509.Certificate)
	}{
		{
			name:       "valid token",
			wantResult: "success",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			wantCode: codes.OK,
			check: func(t *testing.T, chain []*x509.Certificate) {
				if lifetime := chain[0].NotAfter.Sub(chain[0].NotBefore); lifetime != time.Hour+30*time.Second {
					t.Errorf("lifetime = %s, want the 1h default (+30s backdating)", lifetime)
				}
			},
		},
		{
			name:       "requested validity",
			wantResult: "success",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID), ValidityDuration: 600}}
			},
			wantCode: codes.OK,
			check: func(t *testing.T, chain []*x509.Certificate) {
				if lifetime := chain[0].NotAfter.Sub(chain[0].NotBefore); lifetime != 630*time.Second {
					t.Errorf("lifetime = %s, want 10m30s", lifetime)
				}
			},
		},
		{
			// 18446744074 s × 1e9 wraps an int64 to 0.29 s: a huge request must
			// get the maximum, not an SVID that is expired on arrival.
			name:       "enormous validity is capped",
			wantResult: "success",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID), ValidityDuration: 18446744074}}
			},
			wantCode: codes.OK,
			check: func(t *testing.T, chain []*x509.Certificate) {
				if lifetime := chain[0].NotAfter.Sub(chain[0].NotBefore); lifetime != time.Hour+30*time.Second {
					t.Errorf("lifetime = %s, want the 1h cap", lifetime)
				}
			},
		},
		{
			name:       "renewal with the SVID",
			wantResult: "success",
			setup: func(t *testing.T) call {
				return call{t.Context(), f.dial(t, webSVID), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			wantCode: codes.OK,
		},
		{
			name:       "token for another identity",
			wantResult: "identity_mismatch",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), adminID)}}
			},
			wantCode: codes.PermissionDenied,
			wantMsg:  []string{adminID.String(), webID.String()},
			wantLog:  true,
		},
		{
			name:       "renewal for another identity",
			wantResult: "identity_mismatch",
			setup: func(t *testing.T) call {
				return call{t.Context(), f.dial(t, webSVID), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), adminID)}}
			},
			wantCode: codes.PermissionDenied,
			wantMsg:  []string{adminID.String(), webID.String()},
			wantLog:  true,
		},
		{
			name:       "SVID outranks a token",
			wantResult: "identity_mismatch",
			setup: func(t *testing.T) call {
				// A web SVID with an admin token still only gets web.
				return call{bearer(t.Context(), f.token(t, admin)), f.dial(t, webSVID), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), adminID)}}
			},
			wantCode: codes.PermissionDenied,
			wantMsg:  []string{adminID.String(), webID.String()},
			wantLog:  true,
		},
		{
			name:       "expired token",
			wantResult: "unauthenticated",
			setup: func(t *testing.T) call {
				tok, err := f.tokens.Create(web, time.Minute, false)
				if err != nil {
					t.Fatal(err)
				}
				f.clk.Step(2 * time.Minute)
				return call{bearer(t.Context(), tok), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			wantCode: codes.Unauthenticated,
			wantMsg:  []string{"join token expired"},
			wantLog:  true,
		},
		{
			name:       "unknown token",
			wantResult: "unauthenticated",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), jointoken.Prefix+"ZGVmYXVsdC93ZWI.bm9wZQ"), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			wantCode: codes.Unauthenticated,
			wantMsg:  []string{"unknown join token"},
			wantLog:  true,
		},
		{
			name:       "reused token",
			wantResult: "unauthenticated",
			setup: func(t *testing.T) call {
				tok := f.token(t, web)
				if _, err := f.tokens.Check(tok); err != nil {
					t.Fatal(err)
				}
				return call{bearer(t.Context(), tok), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			wantCode: codes.Unauthenticated,
			wantMsg:  []string{"join token already used"},
			wantLog:  true,
		},
		{
			name:       "no credential",
			wantResult: "unauthenticated",
			setup: func(t *testing.T) call {
				return call{t.Context(), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			wantCode: codes.Unauthenticated,
			wantMsg:  []string{"no credential"},
			wantLog:  true,
		},
		{
			name:       "not a bearer credential",
			wantResult: "unauthenticated",
			setup: func(t *testing.T) call {
				ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Basic "+f.token(t, web))
				return call{ctx, f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			wantCode: codes.Unauthenticated,
			wantMsg:  []string{"Bearer"},
			wantLog:  true,
		},
		{
			name: "client certificate from another CA",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, foreignSVID), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}}
			},
			// The TLS handshake fails; gRPC reports the connection as unavailable.
			wantCode: codes.Unavailable,
		},
		{
			name:       "malformed CSR PEM",
			wantResult: "invalid_csr",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n"}}
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"PEM"},
			wantLog:  true,
		},
		{
			name:       "CSR PEM with garbage DER",
			wantResult: "invalid_csr",
			setup: func(t *testing.T) call {
				garbage := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("garbage")}))
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: garbage}}
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"malformed csr"},
			wantLog:  true,
		},
		{
			name:       "two CSRs",
			wantResult: "invalid_csr",
			setup: func(t *testing.T) call {
				two := csrPEM(t, newKey(t), webID) + csrPEM(t, newKey(t), webID)
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: two}}
			},
			wantCode: codes.InvalidArgument,
			wantLog:  true,
		},
		{
			name:       "weak key",
			wantResult: "invalid_csr",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, rsa1024, webID)}}
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"too weak"},
			wantLog:  true,
		},
		{
			name:       "negative validity",
			wantResult: "invalid_request",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID), ValidityDuration: -1}}
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"validity_duration"},
			wantLog:  true,
		},
		{
			name: "oversized request",
			setup: func(t *testing.T) call {
				return call{bearer(t.Context(), f.token(t, web)), f.dial(t, nil), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID) + strings.Repeat(" ", 65<<10)}}
			},
			wantCode: codes.ResourceExhausted,
		},
	}
	var tokensSeen []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.setup(t)
			if md, ok := metadata.FromOutgoingContext(c.ctx); ok {
				for _, v := range md.Get("authorization") {
					tokensSeen = append(tokensSeen, v[strings.Index(v, " ")+1:])
				}
			}
			successBefore := f.issued(t, "success")
			countsBefore := f.counts(t)
			logBefore := len(f.logs.String())

			resp, err := istioca.NewIstioCertificateServiceClient(c.conn).CreateCertificate(c.ctx, c.req)

			// Every request that reaches the handler is counted exactly once.
			wantCounts := countsBefore
			if tt.wantResult != "" {
				wantCounts = maps.Clone(countsBefore)
				wantCounts[tt.wantResult]++
			}
			if got := f.counts(t); !maps.Equal(got, wantCounts) {
				t.Errorf("issued_total by result = %v, want %v", got, wantCounts)
			}

			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("CreateCertificate() code = %s (%v), want %s", got, err, tt.wantCode)
			}
			newLogs := f.logs.String()[logBefore:]
			if tt.wantCode != codes.OK {
				for _, m := range tt.wantMsg {
					if !strings.Contains(status.Convert(err).Message(), m) {
						t.Errorf("message %q does not mention %q", status.Convert(err).Message(), m)
					}
				}
				if resp != nil {
					t.Errorf("a refused request got a response: %v", resp)
				}
				if got := f.issued(t, "success"); got != successBefore {
					t.Errorf("issued{success} went from %v to %v on a refusal", successBefore, got)
				}
				if tt.wantLog && !strings.Contains(newLogs, "certificate request refused") {
					t.Errorf("no refusal logged; new log lines:\n%s", newLogs)
				}
				return
			}
			if got := f.issued(t, "success"); got != successBefore+1 {
				t.Errorf("issued{success} went from %v to %v, want +1", successBefore, got)
			}
			chain := parseChain(t, resp.GetCertChain())
			if len(chain) != 2 {
				t.Fatalf("chain has %d certificates, want leaf and root", len(chain))
			}
			if !chain[len(chain)-1].Equal(f.a.SigningRoot()) {
				t.Error("last certificate in the chain is not the root")
			}
			if id, _, err := x509svid.Verify(chain, f.a.Bundle()); err != nil || id != webID {
				t.Errorf("issued chain: Verify = %s, %v; want %s", id, err, webID)
			}
			if !strings.Contains(newLogs, "issued X.509-SVID") {
				t.Errorf("issuance not logged; new log lines:\n%s", newLogs)
			}
			if tt.check != nil {
				tt.check(t, chain)
			}
		})
	}

	// Logs name the refusal, never the credential.
	logs := f.logs.String()
	for _, tok := range tokensSeen {
		if strings.Contains(logs, tok) {
			t.Errorf("a bearer token appears in the logs: %q", tok)
		}
	}
}

// foreignCert is an X.509-SVID for web from a CA the server does not trust.
func foreignCert(t *testing.T) *tls.Certificate {
	t.Helper()
	other, err := ca.New(ca.Config{StateDir: t.TempDir(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Load(); err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	key := newKey(t)
	block, _ := pem.Decode([]byte(csrPEM(t, key, webID)))
	chain, err := other.SignCSR(block.Bytes, web, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{chain[0].Raw}, PrivateKey: key}
}

func TestGetBundle(t *testing.T) {
	f := startServer(t)
	out := new(wrapperspb.BytesValue)
	if err := f.dial(t, nil).Invoke(t.Context(), ca.BundleMethod, &emptypb.Empty{}, out); err != nil {
		t.Fatalf("GetBundle: %v", err)
	}
	b, err := spiffebundle.Parse(td, out.GetValue())
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v\n%s", err, out.GetValue())
	}
	roots := b.X509Authorities()
	if len(roots) != 1 || !roots[0].Equal(f.a.SigningRoot()) {
		t.Errorf("bundle holds %d X.509 authorities, want the CA's root", len(roots))
	}
	if !b.Equal(f.a.Bundle()) {
		t.Error("served bundle differs from the Authority's")
	}
}

func TestMintJWTSVID(t *testing.T) {
	f := startServer(t)
	webSVID := f.svidFor(t, web)
	tests := []struct {
		name     string
		cert     *tls.Certificate
		req      *workload.JWTSVIDRequest
		wantCode codes.Code
	}{
		{name: "with SVID", cert: webSVID, req: &workload.JWTSVIDRequest{Audience: []string{"db"}}, wantCode: codes.OK},
		{name: "with SVID naming itself", cert: webSVID, req: &workload.JWTSVIDRequest{Audience: []string{"db"}, SpiffeId: webID.String()}, wantCode: codes.OK},
		{name: "no client certificate", req: &workload.JWTSVIDRequest{Audience: []string{"db"}}, wantCode: codes.Unauthenticated},
		{name: "for another identity", cert: webSVID, req: &workload.JWTSVIDRequest{Audience: []string{"db"}, SpiffeId: adminID.String()}, wantCode: codes.PermissionDenied},
		{name: "no audience", cert: webSVID, req: &workload.JWTSVIDRequest{}, wantCode: codes.InvalidArgument},
		{name: "empty audience", cert: webSVID, req: &workload.JWTSVIDRequest{Audience: []string{""}}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := new(workload.JWTSVIDResponse)
			err := f.dial(t, tt.cert).Invoke(t.Context(), ca.JWTSVIDMethod, tt.req, out)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("MintJWTSVID code = %s (%v), want %s", got, err, tt.wantCode)
			}
			if tt.wantCode != codes.OK {
				if len(out.GetSvids()) != 0 {
					t.Errorf("a refused request got %d JWT-SVIDs", len(out.GetSvids()))
				}
				return
			}
			if len(out.GetSvids()) != 1 || out.GetSvids()[0].GetSpiffeId() != webID.String() {
				t.Fatalf("response = %v, want one JWT-SVID for %s", out, webID)
			}
			svid, err := jwtsvid.ParseAndValidate(out.GetSvids()[0].GetSvid(), f.a.Bundle(), []string{"db"})
			if err != nil {
				t.Fatalf("ParseAndValidate: %v", err)
			}
			if svid.ID != webID {
				t.Errorf("JWT-SVID subject = %s, want %s", svid.ID, webID)
			}
		})
	}
}

func TestNewValidatesConfig(t *testing.T) {
	a, err := ca.New(ca.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	tokens := jointoken.New(t.TempDir(), nil)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no authority", cfg: Config{Authenticator: tokens, Listen: ":0"}, wantErr: "Authority is required"},
		{name: "no authenticator", cfg: Config{Authority: a, Listen: ":0"}, wantErr: "Authenticator is required"},
		{name: "no address", cfg: Config{Authority: a, Authenticator: tokens}, wantErr: "Listen is required"},
		{name: "address", cfg: Config{Authority: a, Authenticator: tokens, Listen: "127.0.0.1:0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil || s.cfg.MaxRequestBytes != 64<<10 || len(s.cfg.DNSNames) == 0 {
					t.Fatalf("New() = %+v, %v; want defaults filled", s, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

var _ Authenticator = (*jointoken.Store)(nil)

// lastServed returns the chain the server presented on the latest handshake.
func (f *fixture) lastServed(t *testing.T) []*x509.Certificate {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.served) == 0 {
		t.Fatal("no handshake recorded")
	}
	return f.served[len(f.served)-1]
}

// TestServingCertificate checks that rampartd's serving SVID is renewed at half
// its life and follows the signing root through a rotation, on a fake clock
// shared by the Authority, the Server and the client's verification.
func TestServingCertificate(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	f := startServerWith(t, clk, 30*time.Second)
	getBundle := func() {
		t.Helper()
		// A new connection per call: the serving certificate is chosen per handshake.
		if err := f.dial(t, nil).Invoke(t.Context(), ca.BundleMethod, &emptypb.Empty{}, new(wrapperspb.BytesValue)); err != nil {
			t.Fatalf("GetBundle: %v", err)
		}
	}
	root1 := f.a.SigningRoot()

	getBundle()
	first := f.lastServed(t)
	if !first[len(first)-1].Equal(root1) {
		t.Fatal("serving certificate does not chain to the root")
	}
	getBundle()
	if again := f.lastServed(t); !again[0].Equal(first[0]) {
		t.Error("serving certificate reissued while fresh")
	}

	clk.Step(31 * time.Minute) // past half of the 1h SVID lifetime
	getBundle()
	renewed := f.lastServed(t)
	if renewed[0].Equal(first[0]) {
		t.Error("serving certificate not renewed past half its life")
	}

	// Rotate and let the Authority's Run switch signing to the new root.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Authority.Run = %v", err)
		}
	}()
	if _, err := f.a.Rotate(); err != nil {
		t.Fatal(err)
	}
	clk.Step(30 * time.Second)
	deadline := time.Now().Add(10 * time.Second) // guards a hang only
	for f.a.Status().Phase != ca.PhaseSwitched {
		if time.Now().After(deadline) {
			t.Fatal("rotation did not switch")
		}
		clk.Step(0) // fire the Run loop's due timer
		time.Sleep(time.Millisecond)
	}
	root2 := f.a.SigningRoot()
	if root2.Equal(root1) {
		t.Fatal("signing root unchanged after the switch")
	}
	getBundle()
	switched := f.lastServed(t)
	if !switched[len(switched)-1].Equal(root2) {
		t.Error("after the switch the serving certificate still chains to the old root")
	}
}

// A request the CA refuses does not spend its single-use join token: the
// sidecar corrects its CSR and retries with the same token.
func TestRefusedRequestDoesNotSpendToken(t *testing.T) {
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		csr      func(t *testing.T) string
		wantCode codes.Code
	}{
		{name: "another identity", csr: func(t *testing.T) string { return csrPEM(t, newKey(t), adminID) }, wantCode: codes.PermissionDenied},
		{name: "weak key", csr: func(t *testing.T) string { return csrPEM(t, rsa1024, webID) }, wantCode: codes.InvalidArgument},
		{name: "two URI SANs", csr: func(t *testing.T) string { return csrPEM(t, newKey(t), webID, adminID) }, wantCode: codes.InvalidArgument},
		{name: "bad signature", csr: func(t *testing.T) string {
			block, _ := pem.Decode([]byte(csrPEM(t, newKey(t), webID)))
			block.Bytes[len(block.Bytes)-1] ^= 0xff // the last byte of the signature
			return string(pem.EncodeToMemory(block))
		}, wantCode: codes.InvalidArgument},
		{name: "malformed CSR", csr: func(*testing.T) string { return "not a CSR" }, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startServer(t)
			tok := f.token(t, web)
			client := istioca.NewIstioCertificateServiceClient(f.dial(t, nil))
			_, err := client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: tt.csr(t)})
			if status.Code(err) != tt.wantCode {
				t.Fatalf("refused request: %v, want %s", err, tt.wantCode)
			}
			resp, err := client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)})
			if err != nil {
				t.Fatalf("the corrected request with the same single-use token was refused: %v (the refused one spent it)", err)
			}
			if id, _, err := x509svid.Verify(parseChain(t, resp.GetCertChain()), f.a.Bundle()); err != nil || id != webID {
				t.Errorf("issued chain: Verify = %s, %v; want %s", id, err, webID)
			}
			// Granted, the token is spent.
			_, err = client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)})
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "join token already used") {
				t.Errorf("a third request with the token: %v, want Unauthenticated (join token already used)", err)
			}
		})
	}
}

// Of concurrent requests with one single-use token, exactly one gets a
// certificate, although the token is checked before it is spent.
func TestSingleUseTokenIssuesOnce(t *testing.T) {
	const n = 8
	f := startServer(t)
	tok := f.token(t, web)
	client := istioca.NewIstioCertificateServiceClient(f.dial(t, nil))
	csrs := make([]string, n)
	for i := range csrs {
		csrs[i] = csrPEM(t, newKey(t), webID)
	}
	errs := make([]error, n)
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
	)
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrs[i]})
		})
	}
	close(start)
	wg.Wait()
	granted := 0
	for _, err := range errs {
		switch {
		case err == nil:
			granted++
		case status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "join token already used"):
			t.Errorf("a losing request: %v, want Unauthenticated (join token already used)", err)
		}
	}
	if granted != 1 {
		t.Errorf("%d of %d concurrent requests with one single-use token got a certificate, want 1", granted, n)
	}
	if got := f.issued(t, "success"); got != 1 {
		t.Errorf("issued{success} = %v, want 1", got)
	}
}

// A join token is spent only by a request that gets its certificate. Here the
// CA's signing root expires while the token is being spent: spent before
// signing, the token would be gone with no certificate to show for it, and
// the workload could never join.
func TestTokenSpentOnlyWithCertificate(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	f := startServerWith(t, clk, 0)
	tok := f.token(t, web)
	client := istioca.NewIstioCertificateServiceClient(f.dial(t, nil))
	var once sync.Once
	f.hooks.onConsume = func() {
		once.Do(func() { clk.Step(f.a.SigningRoot().NotAfter.Sub(clk.Now()) + time.Second) })
	}
	resp, err := client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)})
	_, authErr := f.tokens.Authenticate(t.Context(), tok)
	spent := errors.Is(authErr, jointoken.ErrUsed)
	if delivered := err == nil; delivered != spent {
		t.Fatalf("certificate delivered: %v (err %v), token spent: %v (Authenticate = %v); want both or neither", delivered, err, spent, authErr)
	}
	if err != nil {
		t.Fatalf("CreateCertificate = %v, want the certificate signed before the root expired", err)
	}
	if id, err := x509svid.IDFromCert(parseChain(t, resp.GetCertChain())[0]); err != nil || id != webID {
		t.Errorf("issued SVID for %s (%v), want %s", id, err, webID)
	}
	if got := f.issued(t, "success"); got != 1 {
		t.Errorf("issued{success} = %v, want 1", got)
	}
}

// A token refused as it is spent (spent or expired since it was checked) makes
// the request Unauthenticated; a token store that fails to spend it (an I/O
// error) is the server's failure, Unavailable and counted as an error, and the
// token stays usable for a retry.
func TestConsumeFailure(t *testing.T) {
	tests := []struct {
		name       string
		onConsume  func(t *testing.T, f *fixture, tok string)
		wantCode   codes.Code
		wantMsg    string
		wantCounts map[string]float64
		wantRetry  bool // the same token then gets a certificate
	}{
		{name: "spent meanwhile", onConsume: func(t *testing.T, f *fixture, tok string) {
			if _, err := f.tokens.Check(tok); err != nil {
				t.Errorf("spend the token: %v", err)
			}
		}, wantCode: codes.Unauthenticated, wantMsg: "credential rejected: join token already used",
			wantCounts: map[string]float64{"unauthenticated": 1, "error": 0, "success": 0}},
		{name: "expired meanwhile", onConsume: func(t *testing.T, f *fixture, tok string) { f.clk.Step(2 * time.Hour) },
			wantCode: codes.Unauthenticated, wantMsg: "credential rejected: join token expired",
			wantCounts: map[string]float64{"unauthenticated": 1, "error": 0, "success": 0}},
		{name: "token store fails", onConsume: func(t *testing.T, f *fixture, tok string) {
			// used/ replaced by a file: the store's rename fails (ENOTDIR).
			used := filepath.Join(f.dir, "tokens", "used")
			if err := os.Remove(used); err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(used, nil, 0o600); err != nil {
				t.Error(err)
			}
		}, wantCode: codes.Unavailable, wantMsg: "spending the credential failed; retry",
			wantCounts: map[string]float64{"unauthenticated": 0, "error": 1, "success": 0}, wantRetry: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startServer(t)
			tok := f.token(t, web)
			var once sync.Once
			f.hooks.onConsume = func() { once.Do(func() { tt.onConsume(t, f, tok) }) }
			client := istioca.NewIstioCertificateServiceClient(f.dial(t, nil))
			_, err := client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)})
			if status.Code(err) != tt.wantCode || !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
				t.Fatalf("CreateCertificate = %v, want %s containing %q", err, tt.wantCode, tt.wantMsg)
			}
			got := f.counts(t)
			for result, want := range tt.wantCounts {
				if got[result] != want {
					t.Errorf("issued{%s} = %v, want %v", result, got[result], want)
				}
			}
			if !tt.wantRetry {
				return
			}
			used := filepath.Join(f.dir, "tokens", "used")
			if err := os.Remove(used); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(used, 0o700); err != nil {
				t.Fatal(err)
			}
			if _, err := client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}); err != nil {
				t.Errorf("a retry with the token, the store repaired: %v; want a certificate (the failure must not spend it)", err)
			}
		})
	}
}

// A token store that cannot read a token's record has decided nothing about
// the credential: the client gets Unavailable (and may retry), not a refusal,
// and the failure is counted as an error.
func TestAuthenticateStoreFailure(t *testing.T) {
	f := startServer(t)
	tok := f.token(t, web)
	pending, err := os.ReadDir(filepath.Join(f.dir, "tokens", "pending"))
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending tokens: %v, %v; want the one just made", pending, err)
	}
	record := filepath.Join(f.dir, "tokens", "pending", pending[0].Name())
	data, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	// The record replaced by a directory: reading it fails (EISDIR).
	if err := os.Remove(record); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(record, 0o700); err != nil {
		t.Fatal(err)
	}
	client := istioca.NewIstioCertificateServiceClient(f.dial(t, nil))
	_, err = client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)})
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "checking the credential failed; retry" {
		t.Fatalf("CreateCertificate with an unreadable token record = %v, want Unavailable: checking the credential failed; retry (the store's error is for the log)", err)
	}
	if got := f.counts(t); got["error"] != 1 || got["unauthenticated"] != 0 {
		t.Errorf("issued = %v, want error 1 and unauthenticated 0", got)
	}
	if err := os.Remove(record); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateCertificate(bearer(t.Context(), tok), &istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), webID)}); err != nil {
		t.Errorf("a retry with the token, the store repaired: %v; want a certificate", err)
	}
}

// No credential gets a workload an X.509-SVID for rampartd's own identity, which
// agents trust as their control plane: not a join token for it (one minted by a
// store that did not know the root namespace, or before tokens for it were
// refused), not rampartd's serving certificate presented for a "renewal".
func TestNoWorkloadSVIDForControlPlaneIdentity(t *testing.T) {
	f := startServer(t)
	cpIdent := ca.ControlPlaneIdentity(ca.DefaultRootNamespace)
	if _, err := f.tokens.Create(cpIdent, time.Hour, false); !errors.Is(err, ca.ErrReservedIdentity) {
		t.Errorf("join token for %s: Create err = %v, want %v", cpIdent, err, ca.ErrReservedIdentity)
	}
	tok, err := jointoken.New(f.dir, f.clk, jointoken.WithRootNamespace("elsewhere")).Create(cpIdent, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := f.a.IssueServingCert(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ctx  context.Context
		conn *grpc.ClientConn
	}{
		{name: "join token", ctx: bearer(t.Context(), tok), conn: f.dial(t, nil)},
		{name: "rampartd's serving certificate", ctx: t.Context(), conn: f.dial(t, serving)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.issued(t, "reserved_identity")
			resp, err := istioca.NewIstioCertificateServiceClient(tt.conn).CreateCertificate(tt.ctx,
				&istioca.IstioCertificateRequest{Csr: csrPEM(t, newKey(t), serverID)})
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("CreateCertificate for %s: %v (response %v), want PermissionDenied", serverID, err, resp != nil)
			}
			if !strings.Contains(err.Error(), serverID.String()) || !strings.Contains(err.Error(), "reserved for the control plane") {
				t.Errorf("refusal %q does not name %s as reserved for the control plane", err, serverID)
			}
			if got := f.issued(t, "reserved_identity"); got != before+1 {
				t.Errorf("issued{reserved_identity} went from %v to %v, want +1", before, got)
			}
		})
	}
}
