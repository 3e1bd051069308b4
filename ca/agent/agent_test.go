package agent_test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func TestAgentJoinsWithTokenThenRenewsWithSVID(t *testing.T) {
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk})
	tok := cp.Token(t, "shop", "cart")
	tokenFn, tokenCalls := oneToken(tok)
	reg := prometheus.NewRegistry()
	a := newAgent(t, cp, agent.Config{Token: tokenFn, Metrics: reg})
	startAgent(t, a)

	svid := mustSVID(t, a)
	if want := "spiffe://cluster.local/ns/shop/sa/cart"; svid.ID.String() != want {
		t.Errorf("SVID ID = %s, want %s (the identity the join token names)", svid.ID, want)
	}
	b := a.Bundle()
	if b == nil || !b.HasX509Authority(cp.Roots[0]) {
		t.Fatalf("agent bundle does not hold the CA root")
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b, x509svid.WithTime(clk.Now())); err != nil {
		t.Errorf("SVID does not verify against the agent's bundle: %v", err)
	}
	if _, err := cp.Tokens.Check(tok); !errors.Is(err, jointoken.ErrUsed) {
		t.Errorf("join token after the agent joined: Check = %v, want %v", err, jointoken.ErrUsed)
	}

	// The token is spent and the Token func now fails: renewals must authenticate
	// with the SVID.
	prev := serial(svid)
	for i := range 2 {
		step(t, clk, 35*time.Minute, 1)
		got := mustSVID(t, a)
		if serial(got) == prev {
			t.Fatalf("renewal %d: serial unchanged (%s); renewals failed: %v", i+1, prev, renewals(t, reg, "failure"))
		}
		if got.ID != svid.ID {
			t.Errorf("renewal %d: ID = %s, want %s", i+1, got.ID, svid.ID)
		}
		prev = serial(got)
	}
	if n := tokenCalls(); n != 1 {
		t.Errorf("Token called %d times, want 1 (renewals authenticate with the SVID)", n)
	}
	if got := renewals(t, reg, "success"); got != 3 {
		t.Errorf("successful renewals = %v, want 3", got)
	}
	if got := renewals(t, reg, "failure"); got != 0 {
		t.Errorf("failed renewals = %v, want 0", got)
	}
}

// The agent renews at half the SVID's life ±5%: not before 45%, always by 55%.
func TestAgentRenewsAtHalfLife(t *testing.T) {
	const ttl = time.Hour
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: ttl})
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	a := newAgent(t, cp, agent.Config{Token: tokenFn})
	startAgent(t, a)
	settle(t, clk, 1)

	seen := map[string]bool{}
	for i := range 3 {
		before := mustSVID(t, a)
		seen[serial(before)] = true
		if got, want := before.Certificates[0].NotAfter, clk.Now().Add(ttl); !got.Equal(want) {
			t.Fatalf("rotation %d: SVID NotAfter = %s, want issue time + TTL = %s", i+1, got, want)
		}
		updated := a.Updated()

		step(t, clk, time.Duration(0.44*float64(ttl)), 1)
		if got := mustSVID(t, a); serial(got) != serial(before) {
			t.Fatalf("rotation %d: renewed at 44%% of the TTL, before the 45%% lower bound", i+1)
		}
		if closed(updated) {
			t.Fatalf("rotation %d: Updated fired without a change", i+1)
		}

		step(t, clk, time.Duration(0.12*float64(ttl)), 1) // 56%
		after := mustSVID(t, a)
		if seen[serial(after)] {
			t.Fatalf("rotation %d: no new SVID at 56%% of the TTL (serial %s seen before)", i+1, serial(after))
		}
		if !closed(updated) {
			t.Errorf("rotation %d: Updated did not fire for the new SVID", i+1)
		}
		if after.ID != before.ID {
			t.Errorf("rotation %d: ID changed from %s to %s", i+1, before.ID, after.ID)
		}
		if after.PrivateKey == before.PrivateKey {
			t.Errorf("rotation %d: the key was reused; each renewal must generate a new key", i+1)
		}
	}
}

func TestAgentKeepsLastGoodSVIDWhileCADown(t *testing.T) {
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: time.Hour})
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	reg := prometheus.NewRegistry()
	var logs syncBuffer
	a := newAgent(t, cp, agent.Config{Token: tokenFn, Metrics: reg, Log: bufferLogger(&logs)})
	startAgent(t, a)
	good := mustSVID(t, a)
	addr := cp.Addr

	cp.StopServer()
	step(t, clk, 35*time.Minute, 1)

	if got := renewals(t, reg, "failure"); got != 1 {
		t.Errorf("failed renewals = %v, want 1", got)
	}
	if got := mustSVID(t, a); serial(got) != serial(good) {
		t.Errorf("while the CA is down GetX509SVID = serial %s, want the last good %s", serial(got), serial(good))
	}
	if got, _ := metric(t, reg, "rampart_agent_svid_expiry_seconds", nil); got != (25 * time.Minute).Seconds() {
		t.Errorf("svid expiry = %vs, want %vs", got, (25 * time.Minute).Seconds())
	}
	if !strings.Contains(logs.String(), "keeping the last good SVID") {
		t.Errorf("no warning about the failed renewal in the log:\n%s", logs.String())
	}

	// The CA comes back on the same address; the agent's retry (within MaxRetry)
	// renews without help.
	cp.StartServer(t, addr)
	step(t, clk, 30*time.Second, 1)

	got := mustSVID(t, a)
	if serial(got) == serial(good) {
		t.Fatalf("the agent did not renew after the CA came back; failures %v", renewals(t, reg, "failure"))
	}
	if got := renewals(t, reg, "success"); got != 2 {
		t.Errorf("successful renewals = %v, want 2", got)
	}
}

func TestAgentFollowsRootRotation(t *testing.T) {
	const waiters = 2 // the agent and the Authority's rotation loop
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: time.Hour, runAuthority: true})
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	reg := prometheus.NewRegistry()
	a := newAgent(t, cp, agent.Config{Token: tokenFn, Metrics: reg})
	startAgent(t, a)
	settle(t, clk, waiters)
	first := mustSVID(t, a)
	oldRoot := cp.Roots[0]

	if _, err := cp.Authority.Rotate(); err != nil {
		t.Fatal(err)
	}
	settle(t, clk, waiters)
	roots := cp.Authority.Roots()
	if len(roots) != 2 {
		t.Fatalf("CA bundle has %d roots after Rotate, want 2", len(roots))
	}
	newRoot := roots[1]
	if n := len(a.Bundle().X509Authorities()); n != 1 {
		t.Fatalf("agent bundle has %d roots before its refresh is due, want 1", n)
	}

	// The refresh hint (5 min) passes: the agent picks up the new root.
	updated := a.Updated()
	step(t, clk, 5*time.Minute, waiters)
	if b := a.Bundle(); len(b.X509Authorities()) != 2 || !b.HasX509Authority(oldRoot) || !b.HasX509Authority(newRoot) {
		t.Fatalf("agent bundle after the refresh has %d roots, want the old and the new", len(b.X509Authorities()))
	}
	if !closed(updated) {
		t.Error("Updated did not fire for the bundle change")
	}
	if got := mustSVID(t, a); serial(got) != serial(first) {
		t.Error("a bundle refresh replaced the SVID")
	}
	if got, _ := metric(t, reg, "rampart_agent_bundle_sequence", nil); got != 2 {
		t.Errorf("bundle sequence = %v, want 2", got)
	}

	// Past the propagation delay (10 min) the new root signs.
	step(t, clk, 6*time.Minute, waiters)
	if !cp.Authority.SigningRoot().Equal(newRoot) {
		t.Fatalf("CA did not switch to the new root; phase %s", cp.Authority.Status().Phase)
	}

	// The agent's next SVID chains to the new root, and only to it.
	step(t, clk, 23*time.Minute, waiters)
	renewed := mustSVID(t, a)
	if serial(renewed) == serial(first) {
		t.Fatal("the agent did not renew")
	}
	now := x509svid.WithTime(clk.Now())
	if _, _, err := x509svid.Verify(renewed.Certificates, x509bundle.FromX509Authorities(td, roots[1:]), now); err != nil {
		t.Errorf("renewed SVID does not chain to the new root: %v", err)
	}
	if _, _, err := x509svid.Verify(renewed.Certificates, x509bundle.FromX509Authorities(td, roots[:1]), now); err == nil {
		t.Error("renewed SVID still chains to the old root")
	}

	// Once the old root's last SVID has expired the CA drops it, and so does the agent.
	for cp.Authority.Status().Phase != ca.PhaseIdle {
		if clk.Since(first.Certificates[0].NotBefore) > 3*time.Hour {
			t.Fatalf("the CA never retired the old root; status %+v", cp.Authority.Status())
		}
		step(t, clk, 35*time.Minute, waiters)
	}
	step(t, clk, 5*time.Minute, waiters)
	if b := a.Bundle(); len(b.X509Authorities()) != 1 || !b.HasX509Authority(newRoot) {
		t.Errorf("agent bundle after retirement has %d roots, want only the new one", len(b.X509Authorities()))
	}
	if got := renewals(t, reg, "failure"); got != 0 {
		t.Errorf("failed renewals across the rotation = %v, want 0", got)
	}
}

func TestAgentMetrics(t *testing.T) {
	const ttl = time.Hour
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: ttl})
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	reg := prometheus.NewRegistry()
	a := newAgent(t, cp, agent.Config{Token: tokenFn, Metrics: reg})

	if got, ok := metric(t, reg, "rampart_agent_svid_expiry_seconds", nil); !ok || got != 0 {
		t.Errorf("svid expiry before the first SVID = %v (present %v), want 0", got, ok)
	}
	startAgent(t, a)

	got, ok := metric(t, reg, "rampart_agent_svid_expiry_seconds", nil)
	if !ok || got <= 0 || got > ttl.Seconds() {
		t.Errorf("svid expiry = %v (present %v), want in (0, %v]", got, ok, ttl.Seconds())
	}
	step(t, clk, 20*time.Minute, 1)
	if got, _ := metric(t, reg, "rampart_agent_svid_expiry_seconds", nil); got != (40 * time.Minute).Seconds() {
		t.Errorf("svid expiry 20 min after issue = %v, want %v", got, (40 * time.Minute).Seconds())
	}
	if got, _ := metric(t, reg, "rampart_agent_bundle_sequence", nil); got != 1 {
		t.Errorf("bundle sequence = %v, want 1", got)
	}
	if got := renewals(t, reg, "success"); got != 1 {
		t.Errorf("successful renewals = %v, want 1", got)
	}
}

// JWT-SVIDs are checked against the real time, so this test runs on the real clock.
func TestAgentFetchJWTSVID(t *testing.T) {
	cp := startControlPlane(t, cpOptions{})
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	a := newAgent(t, cp, agent.Config{Token: tokenFn})
	if _, err := a.FetchJWTSVID(t.Context(), []string{"x"}); !errors.Is(err, agent.ErrNoSVID) {
		t.Errorf("FetchJWTSVID before the first SVID: err = %v, want %v", err, agent.ErrNoSVID)
	}
	startAgent(t, a)
	me := mustSVID(t, a).ID

	tests := []struct {
		name     string
		audience []string
	}{
		{name: "one audience", audience: []string{"spiffe://cluster.local/ns/shop/sa/db"}},
		{name: "two audiences", audience: []string{"db", "cache"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j, err := a.FetchJWTSVID(t.Context(), tc.audience)
			if err != nil {
				t.Fatal(err)
			}
			v, err := jwtsvid.ParseAndValidate(j.Marshal(), a, tc.audience)
			if err != nil {
				t.Fatalf("JWT-SVID does not validate against the agent's JWT bundle: %v", err)
			}
			if v.ID != me {
				t.Errorf("sub = %s, want %s", v.ID, me)
			}
			if strings.Join(v.Audience, ",") != strings.Join(tc.audience, ",") {
				t.Errorf("aud = %v, want %v", v.Audience, tc.audience)
			}
			if left := time.Until(v.Expiry); left <= 0 || left > 5*time.Minute {
				t.Errorf("expires in %s, want within the 5 min JWT-SVID TTL", left)
			}
			if _, err := jwtsvid.ParseAndValidate(j.Marshal(), a, []string{"someone-else"}); err == nil {
				t.Error("JWT-SVID validated for an audience it was not minted for")
			}
			again, err := a.FetchJWTSVID(t.Context(), tc.audience)
			if err != nil {
				t.Fatal(err)
			}
			if again.Marshal() != j.Marshal() {
				t.Error("second fetch minted a new token; want the cached one while it has more than half its life")
			}
		})
	}
}

// The agent sends its join token only to a control plane that proves rampartd's
// identity from a trusted root.
func TestAgentVerifiesControlPlane(t *testing.T) {
	tests := []struct {
		name          string
		rootNamespace string // of the CA that serves
		untrusted     bool   // agent trusts another CA's root
		wantLog       string
	}{
		{name: "rampartd identity"},
		{name: "another identity", rootNamespace: "impostor",
			wantLog: "control plane presented spiffe://cluster.local/ns/impostor/sa/rampartd, want spiffe://cluster.local/ns/rampart-system/sa/rampartd"},
		{name: "untrusted root", untrusted: true, wantLog: "control plane certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			cp := startControlPlane(t, cpOptions{clock: clk, rootNamespace: tc.rootNamespace})
			roots := cp.Roots
			if tc.untrusted {
				roots = startControlPlane(t, cpOptions{clock: clk}).Roots
			}
			tok := cp.Token(t, "shop", "cart")
			reg := prometheus.NewRegistry()
			var logs syncBuffer
			a := newAgent(t, cp, agent.Config{Token: func() (string, error) { return tok, nil }, RootCerts: roots, Metrics: reg, Log: bufferLogger(&logs)})
			goRun(t, "agent", a.Run)
			settle(t, clk, 1) // first attempt done

			_, tokenErr := cp.Tokens.Check(tok)
			if tc.wantLog == "" {
				if !closed(a.Ready()) {
					t.Fatalf("agent not ready; log:\n%s", logs.String())
				}
				if !errors.Is(tokenErr, jointoken.ErrUsed) {
					t.Errorf("token Check = %v, want %v", tokenErr, jointoken.ErrUsed)
				}
				return
			}
			if closed(a.Ready()) {
				t.Fatal("agent accepted an SVID from a control plane it must not trust")
			}
			if _, err := a.GetX509SVID(); !errors.Is(err, agent.ErrNoSVID) {
				t.Errorf("GetX509SVID err = %v, want %v", err, agent.ErrNoSVID)
			}
			if tokenErr != nil {
				t.Errorf("the join token reached the untrusted server (Check = %v); it must not be sent before the server is verified", tokenErr)
			}
			if got := renewals(t, reg, "failure"); got != 1 {
				t.Errorf("failed renewals = %v, want 1", got)
			}
			if !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log does not say %q:\n%s", tc.wantLog, logs.String())
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cp := startControlPlane(t, cpOptions{})
	tok := func() (string, error) { return "", nil }
	tests := []struct {
		name    string
		cfg     agent.Config
		wantErr string
	}{
		{name: "no control plane", cfg: agent.Config{RootCerts: cp.Roots, Token: tok}, wantErr: "ControlPlane is required"},
		{name: "no roots", cfg: agent.Config{ControlPlane: cp.Addr, Token: tok}, wantErr: "RootCerts is required"},
		{name: "no credential", cfg: agent.Config{ControlPlane: cp.Addr, RootCerts: cp.Roots}, wantErr: "Token source is required"},
		{name: "renew fraction", cfg: agent.Config{ControlPlane: cp.Addr, RootCerts: cp.Roots, Token: tok, RenewFraction: 1.5}, wantErr: "RenewFraction"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := agent.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	t.Run("trust domain from root", func(t *testing.T) {
		a, err := agent.New(agent.Config{ControlPlane: cp.Addr, RootCerts: cp.Roots, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		if a.TrustDomain() != td {
			t.Errorf("TrustDomain = %s, want %s", a.TrustDomain(), td)
		}
	})
}

// While the CA is down the backoff grows to MaxRetry, but near the SVID's expiry
// retries come at least every MinRetry, so a CA that returns just in time is used.
func TestAgentRetriesFasterNearExpiry(t *testing.T) {
	const ttl = time.Hour
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: ttl})
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	reg := prometheus.NewRegistry()
	a := newAgent(t, cp, agent.Config{Token: tokenFn, Metrics: reg, MinRetry: 500 * time.Millisecond, MaxRetry: 30 * time.Second})
	startAgent(t, a)
	good := mustSVID(t, a)
	addr := cp.Addr

	cp.StopServer()
	step(t, clk, 35*time.Minute, 1)
	// Each failure doubles the backoff until it reaches MaxRetry; a step of
	// MaxRetry sets off exactly one attempt.
	for range 7 {
		step(t, clk, 30*time.Second, 1)
	}
	if got := renewals(t, reg, "failure"); got != 8 {
		t.Fatalf("failed renewals = %v, want 8", got)
	}

	// 2 s before expiry another attempt fails; the CA comes back, and the next
	// retry must come within MinRetry, while the SVID can still authenticate.
	step(t, clk, good.Certificates[0].NotAfter.Add(-2*time.Second).Sub(clk.Now()), 1)
	if got := renewals(t, reg, "failure"); got != 9 {
		t.Fatalf("failed renewals = %v, want 9", got)
	}
	cp.StartServer(t, addr)
	step(t, clk, 500*time.Millisecond, 1)
	if got := mustSVID(t, a); serial(got) == serial(good) {
		t.Fatalf("no renewal within MinRetry of the CA's return 1.5 s before expiry (failures %v)", renewals(t, reg, "failure"))
	}
}

// After a rotation has retired the root the agent was started with (--root-cert),
// that root no longer authenticates the control plane: whoever holds its key
// (rotation is what an operator does when a key may have leaked) cannot pose as
// rampartd and replace the agent's trust bundle. Nor after a restart with the
// same --root-cert, when the agent keeps its bundle in a data dir.
func TestAgentStopsTrustingRetiredRoot(t *testing.T) {
	t.Run("running", func(t *testing.T) { testStopsTrustingRetiredRoot(t, false) })
	t.Run("restarted with a data dir", func(t *testing.T) { testStopsTrustingRetiredRoot(t, true) })
}

func testStopsTrustingRetiredRoot(t *testing.T, restart bool) {
	const waiters = 2 // the agent and the Authority's rotation loop
	clk := newFakeClock()
	dir := t.TempDir()
	auth, err := ca.New(ca.Config{StateDir: dir, Clock: clk, SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { auth.Close() })
	oldKeyPEM, err := os.ReadFile(filepath.Join(dir, "ca", "gen-1.key")) // the key that leaks
	if err != nil {
		t.Fatal(err)
	}
	oldKey, err := ca.ParseKeyPEM(oldKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cp := &controlPlane{Authority: auth, Tokens: jointoken.New(dir, clk), Clock: clk, Roots: auth.Roots()}
	goRun(t, "authority", auth.Run)
	cp.StartServer(t, "127.0.0.1:0")
	oldRoot := cp.Roots[0]

	path := newForwarder(t, cp.Addr)
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	var logs syncBuffer
	cfg := agent.Config{ControlPlane: path.Addr(), Token: tokenFn, Log: bufferLogger(&logs)}
	if restart {
		cfg.DataDir = t.TempDir()
	}
	a := newAgent(t, cp, cfg)
	stop := startAgent(t, a)
	settle(t, clk, waiters)

	if _, err := auth.Rotate(); err != nil {
		t.Fatal(err)
	}
	for i := 0; auth.Status().Phase != ca.PhaseIdle; i++ {
		if i > 40 {
			t.Fatalf("the rotation did not complete: %+v", auth.Status())
		}
		step(t, clk, 5*time.Minute, waiters)
	}
	step(t, clk, 5*time.Minute, waiters) // the agent's bundle refresh
	if a.Bundle().HasX509Authority(oldRoot) {
		t.Fatal("precondition: the agent's bundle still holds the retired root")
	}
	if restart {
		stop()
		// Its configuration is unchanged: RootCerts still holds only the old root.
		a = newAgent(t, cp, cfg)
		startAgent(t, a)
		settle(t, clk, waiters)
		if a.Bundle().HasX509Authority(oldRoot) {
			t.Fatal("precondition: the restarted agent's bundle holds the retired root")
		}
	}

	// The attacker's "rampartd": the control plane's identity, certified by the
	// retired root's key, serving a bundle that holds only the attacker's root.
	cpID, err := ca.ControlPlaneIdentity(ca.DefaultRootNamespace).ID(td)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ca.GenerateKey(ca.KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(666), NotBefore: clk.Now().Add(-time.Hour), NotAfter: clk.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs: []*url.URL{cpID.URL()},
	}, oldRoot, leafKey.Public(), oldKey)
	if err != nil {
		t.Fatal(err)
	}
	evilRoot := selfSignedRoot(t, clk.Now())
	evilBundle := spiffebundle.FromX509Authorities(td, []*x509.Certificate{evilRoot})
	evilBundle.SetSequenceNumber(1 << 40)
	evilJSON, err := evilBundle.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}})),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			if err := ss.RecvMsg(new(emptypb.Empty)); err != nil {
				return err
			}
			return ss.SendMsg(wrapperspb.Bytes(evilJSON))
		}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	path.Redirect(lis.Addr().String())

	step(t, clk, 5*time.Minute, waiters) // the next bundle refresh reaches the attacker
	if a.Bundle().HasX509Authority(evilRoot) {
		t.Fatal("the agent accepted a control plane certified by the retired root and installed its trust bundle")
	}
	if !a.Bundle().HasX509Authority(cp.Authority.Roots()[0]) {
		t.Error("the agent lost the current root from its bundle")
	}
	// The refresh or a renewal, whichever jitter made due first, was refused.
	if want := "control plane certificate: x509svid: could not verify leaf certificate"; !strings.Contains(logs.String(), want) {
		t.Errorf("the log does not say %q:\n%s", want, logs.String())
	}
}

// selfSignedRoot is a CA certificate that no Rampart CA made.
func selfSignedRoot(t *testing.T, now time.Time) *x509.Certificate {
	t.Helper()
	key, err := ca.GenerateKey(ca.KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not rampart"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
