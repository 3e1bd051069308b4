package workloadapi_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca/workloadapi"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestX509SourceServesAgentSVID(t *testing.T) {
	cp := startControlPlane(t, nil, 0)
	w := startWorkload(t, cp, "shop", "cart")
	want, err := w.Agent.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}

	src := newX509Source(t, w)
	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID.String() != "spiffe://cluster.local/ns/shop/sa/cart" {
		t.Errorf("SVID ID = %s, want spiffe://cluster.local/ns/shop/sa/cart", got.ID)
	}
	if serial(got) != serial(want) {
		t.Errorf("SVID serial = %s, want the agent's %s", serial(got), serial(want))
	}
	if len(got.Certificates) != len(want.Certificates) {
		t.Errorf("SVID chain has %d certificates, want %d", len(got.Certificates), len(want.Certificates))
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := got.PrivateKey.Public().(equaler); !ok || !pub.Equal(got.Certificates[0].PublicKey) {
		t.Error("the private key does not match the SVID")
	}
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(cp.Roots[0]) || len(b.X509Authorities()) != 1 {
		t.Errorf("bundle has %d authorities, want the CA root", len(b.X509Authorities()))
	}
	if _, _, err := x509svid.Verify(got.Certificates, src); err != nil {
		t.Errorf("SVID does not verify against the served bundle: %v", err)
	}
	fi, err := os.Stat(w.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want 0600: whoever connects gets the workload's key", fi.Mode().Perm())
	}
}

// x509Updates collects what a go-spiffe WatchX509Context watcher receives.
type x509Updates struct {
	ctx context.Context
	ch  chan *spiffewl.X509Context
}

func (u x509Updates) OnX509ContextUpdate(c *spiffewl.X509Context) {
	select {
	case u.ch <- c:
	case <-u.ctx.Done():
	}
}

func (u x509Updates) OnX509ContextWatchError(error) {}

func (u x509Updates) next(t *testing.T) *spiffewl.X509Context {
	t.Helper()
	select {
	case c := <-u.ch:
		return c
	case <-time.After(waitFor):
		t.Fatal("no X.509 context update")
		return nil
	}
}

func TestWatchX509ContextPushesRotation(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	cp := startControlPlane(t, clk, time.Hour)
	w := startWorkload(t, cp, "shop", "cart")
	settle(t, clk, 1)
	c := newClient(t, w)

	ctx, cancel := context.WithCancel(t.Context())
	u := x509Updates{ctx: ctx, ch: make(chan *spiffewl.X509Context)}
	done := make(chan error, 1)
	go func() { done <- c.WatchX509Context(ctx, u) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
				t.Errorf("WatchX509Context returned %v, want canceled", err)
			}
		case <-time.After(waitFor):
			t.Error("WatchX509Context did not return after cancel")
		}
	})

	first := u.next(t).DefaultSVID()
	prev, _ := w.Agent.GetX509SVID()
	if serial(first) != serial(prev) {
		t.Fatalf("first update has serial %s, want the agent's %s", serial(first), serial(prev))
	}
	for i := range 3 {
		clk.Step(35 * time.Minute) // past half the hour-long TTL
		got := u.next(t).DefaultSVID()
		settle(t, clk, 1)
		now, _ := w.Agent.GetX509SVID()
		if serial(now) == serial(prev) {
			t.Fatalf("rotation %d: the agent did not renew", i+1)
		}
		if serial(got) != serial(now) {
			t.Errorf("rotation %d: pushed serial %s, want the agent's new %s", i+1, serial(got), serial(now))
		}
		if got.ID != first.ID {
			t.Errorf("rotation %d: ID = %s, want %s", i+1, got.ID, first.ID)
		}
		prev = now
	}
}

// Two workloads, each with its own agent and X509Source, talk mTLS over loopback
// while their SVIDs (3 s TTL) rotate underneath. The SVIDs must be valid in real
// time for go-spiffe's verification, so this runs on the real clock.
func TestMTLSAcrossRotations(t *testing.T) {
	cp := startControlPlane(t, nil, 3*time.Second)
	client := newX509Source(t, startWorkload(t, cp, "shop", "frontend"))
	server := newX509Source(t, startWorkload(t, cp, "shop", "backend"))
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/frontend")
	serverID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/backend")

	lis, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeMemberOf(td)))
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, lis)
	addr := lis.Addr().String()
	clientCfg := tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeMemberOf(td))

	first, _ := client.GetX509SVID()
	long := dialMTLS(t, addr, clientCfg)
	if got := peerID(t, long); got != serverID {
		t.Fatalf("server presented %s, want %s", got, serverID)
	}
	// What the server saw in this handshake; the SVID may have rotated since first.
	firstSeen, err := roundTrip(long)
	if id, _, _ := strings.Cut(firstSeen, " "); err != nil || id != clientID.String() {
		t.Fatalf("round trip = %q, %v; want the server to have seen %s", firstSeen, err, clientID)
	}

	for i := range 3 {
		prevClient, _ := client.GetX509SVID()
		prevServer, _ := server.GetX509SVID()
		waitRotated(t, client, prevClient)
		waitRotated(t, server, prevServer)

		c := dialMTLS(t, addr, clientCfg)
		seen, err := roundTrip(c)
		if err != nil {
			t.Fatalf("rotation %d: round trip on a new connection: %v", i+1, err)
		}
		if id, sn, _ := strings.Cut(seen, " "); id != clientID.String() || sn == serial(prevClient) {
			t.Errorf("rotation %d: the server saw %q; want %s with a new SVID (not %s)", i+1, seen, clientID, serial(prevClient))
		}
		if got := c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16); got == serial(prevServer) {
			t.Errorf("rotation %d: the server presented its old SVID %s", i+1, got)
		}
		if got := peerID(t, c); got != serverID {
			t.Errorf("rotation %d: server presented %s, want %s", i+1, got, serverID)
		}
		c.Close()

		if got, err := roundTrip(long); err != nil || got != firstSeen {
			t.Errorf("rotation %d: established connection round trip = %q, %v; want %q", i+1, got, err, firstSeen)
		}
	}

	// The rotations were needed: the first SVID has expired and no longer gets in.
	if time.Now().Before(first.Certificates[0].NotAfter) {
		t.Fatalf("first SVID still valid after three rotations (expires %s)", first.Certificates[0].NotAfter)
	}
	stale := tlsconfig.MTLSClientConfig(first, client, tlsconfig.AuthorizeMemberOf(td))
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: waitFor}, "tcp", addr, stale)
	if err == nil {
		_, err = roundTrip(c)
		c.Close()
	}
	if err == nil {
		t.Error("the expired first SVID still completed a handshake")
	}
}

// serveEcho answers each line on each connection with the client's SPIFFE ID and
// SVID serial as the server saw them in the handshake.
func serveEcho(t *testing.T, lis net.Listener) {
	done := make(chan struct{})
	t.Cleanup(func() {
		lis.Close()
		<-done
	})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				leaf := tc.ConnectionState().PeerCertificates[0]
				id, _ := x509svid.IDFromCert(leaf)
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s\n", id, leaf.SerialNumber.Text(16)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

func dialMTLS(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: waitFor}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("mTLS dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends a line and returns the answer. In TLS 1.3 the server checks
// the client certificate after the client's handshake ends, so a refusal shows here.
func roundTrip(c *tls.Conn) (string, error) {
	_ = c.SetDeadline(time.Now().Add(waitFor))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

func peerID(t *testing.T, c *tls.Conn) spiffeid.ID {
	t.Helper()
	id, err := x509svid.IDFromCert(c.ConnectionState().PeerCertificates[0])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// waitRotated waits until src serves an SVID other than prev.
func waitRotated(t *testing.T, src *spiffewl.X509Source, prev *x509svid.SVID) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		if s, err := src.GetX509SVID(); err == nil && serial(s) != serial(prev) {
			return
		}
		select {
		case <-src.Updated():
		case <-deadline:
			t.Fatalf("X509Source still serves %s", serial(prev))
		}
	}
}

// withHeader adds the metadata the Workload API requires on every call.
func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

// rawClient is a plain gRPC client on w's socket that sends only what it is told.
func rawClient(t *testing.T, w *workload) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(conn)
}

// JWT-SVIDs are checked against the real time, so this test runs on the real clock.
func TestJWTSVID(t *testing.T) {
	cp := startControlPlane(t, nil, 0)
	w := startWorkload(t, cp, "shop", "cart")
	me := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/cart")
	const aud = "spiffe://cluster.local/ns/shop/sa/db"
	c := newClient(t, w)
	raw := rawClient(t, w)

	j, err := c.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	if j.ID != me || len(j.Audience) != 1 || j.Audience[0] != aud {
		t.Errorf("JWT-SVID sub %s aud %v, want %s and [%s]", j.ID, j.Audience, me, aud)
	}

	t.Run("validate with go-spiffe client", func(t *testing.T) {
		v, err := c.ValidateJWTSVID(t.Context(), j.Marshal(), aud)
		if err != nil {
			t.Fatal(err)
		}
		if v.ID != me || len(v.Audience) != 1 || v.Audience[0] != aud {
			t.Errorf("validated sub %s aud %v, want %s and [%s]", v.ID, v.Audience, me, aud)
		}
	})
	t.Run("validate response carries ID and claims", func(t *testing.T) {
		resp, err := raw.ValidateJWTSVID(withHeader(t.Context()), &workloadpb.ValidateJWTSVIDRequest{Svid: j.Marshal(), Audience: aud})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetSpiffeId() != me.String() {
			t.Errorf("spiffe_id = %q, want %s", resp.GetSpiffeId(), me)
		}
		fields := resp.GetClaims().GetFields()
		if got := fields["sub"].GetStringValue(); got != me.String() {
			t.Errorf("sub claim = %q, want %s", got, me)
		}
		var auds []string
		for _, v := range fields["aud"].GetListValue().GetValues() {
			auds = append(auds, v.GetStringValue())
		}
		if s := fields["aud"].GetStringValue(); s != "" {
			auds = append(auds, s)
		}
		if len(auds) != 1 || auds[0] != aud {
			t.Errorf("aud claim = %v, want [%s]", auds, aud)
		}
		if fields["exp"].GetNumberValue() <= float64(time.Now().Unix()) {
			t.Errorf("exp claim = %v, want in the future", fields["exp"].GetNumberValue())
		}
	})
	t.Run("JWTSource bundle validates", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), waitFor)
		defer cancel()
		src, err := spiffewl.NewJWTSource(ctx, spiffewl.WithClientOptions(spiffewl.WithAddr(w.Addr())))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		v, err := jwtsvid.ParseAndValidate(j.Marshal(), src, []string{aud})
		if err != nil {
			t.Fatalf("JWT-SVID does not validate against the JWT bundle the API serves: %v", err)
		}
		if v.ID != me {
			t.Errorf("sub = %s, want %s", v.ID, me)
		}
	})

	tampered := j.Marshal()
	tampered = tampered[:len(tampered)-4] + strings.Map(func(r rune) rune {
		if r == 'A' {
			return 'B'
		}
		return 'A'
	}, tampered[len(tampered)-4:])
	errTests := []struct {
		name string
		call func(ctx context.Context) error
		want codes.Code
	}{
		{name: "validate without audience", want: codes.InvalidArgument, call: func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, j.Marshal(), "")
			return err
		}},
		{name: "validate for another audience", want: codes.InvalidArgument, call: func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, j.Marshal(), "spiffe://cluster.local/ns/shop/sa/other")
			return err
		}},
		{name: "validate a tampered token", want: codes.InvalidArgument, call: func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, tampered, aud)
			return err
		}},
		{name: "validate without token", want: codes.InvalidArgument, call: func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, "", aud)
			return err
		}},
		{name: "fetch with empty audience", want: codes.InvalidArgument, call: func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{})
			return err
		}},
		{name: "fetch with no audience", want: codes.InvalidArgument, call: func(ctx context.Context) error {
			_, err := raw.FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{})
			return err
		}},
		{name: "fetch for another identity", want: codes.PermissionDenied, call: func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, Subject: spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other")})
			return err
		}},
	}
	for _, tc := range errTests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(t.Context()); status.Code(err) != tc.want {
				t.Errorf("err = %v, want code %s", err, tc.want)
			}
		})
	}
}

// The Workload API refuses every call without the 'workload.spiffe.io: true'
// metadata the SPIFFE Workload Endpoint spec requires.
func TestSecurityHeaderRequired(t *testing.T) {
	cp := startControlPlane(t, nil, 0)
	w := startWorkload(t, cp, "shop", "cart")
	raw := rawClient(t, w)
	calls := map[string]func(ctx context.Context) error{
		"FetchX509SVID": func(ctx context.Context) error {
			s, err := raw.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"FetchX509Bundles": func(ctx context.Context) error {
			s, err := raw.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"FetchJWTBundles": func(ctx context.Context) error {
			s, err := raw.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"FetchJWTSVID": func(ctx context.Context) error {
			_, err := raw.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"db"}})
			return err
		},
	}
	tests := []struct {
		name   string
		header []string // key, value pairs
		want   codes.Code
	}{
		{name: "no header", want: codes.InvalidArgument},
		{name: "header false", header: []string{"workload.spiffe.io", "false"}, want: codes.InvalidArgument},
		{name: "header true", header: []string{"workload.spiffe.io", "true"}, want: codes.OK},
	}
	for _, tc := range tests {
		for method, call := range calls {
			t.Run(tc.name+"/"+method, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), waitFor)
				defer cancel()
				if len(tc.header) > 0 {
					ctx = metadata.AppendToOutgoingContext(ctx, tc.header...)
				}
				err := call(ctx)
				if status.Code(err) != tc.want {
					t.Fatalf("err = %v, want code %s", err, tc.want)
				}
				if tc.want == codes.InvalidArgument && !strings.Contains(status.Convert(err).Message(), "workload.spiffe.io") {
					t.Errorf("error %q does not name the missing header", status.Convert(err).Message())
				}
			})
		}
	}
}

// Connections that do not speak gRPC are closed at once and logged; the server
// goes on serving real clients.
func TestNonGRPCConnectionClosed(t *testing.T) {
	cp := startControlPlane(t, nil, 0)
	w := startWorkload(t, cp, "shop", "cart")
	garbage := make([]byte, 64)
	if _, err := rand.Read(garbage); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		send       []byte
		closeWrite bool // end the stream early instead of sending a full preface
	}{
		{name: "random bytes", send: garbage},
		{name: "HTTP/1.1", send: []byte("GET /SpiffeWorkloadAPI/FetchX509SVID HTTP/1.1\r\nHost: localhost\r\n\r\n")},
		{name: "short write then EOF", send: []byte("PRI *"), closeWrite: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(w.Logs.String(), "workload API connection closed")
			c, err := net.Dial("unix", w.Socket)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.closeWrite {
				if err := c.(*net.UnixConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			_ = c.SetReadDeadline(time.Now().Add(waitFor))
			got, err := io.ReadAll(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the server kept the connection open")
			}
			if len(got) != 0 {
				t.Errorf("the server answered %q; want it to close without a word", got)
			}
			waitUntil(t, "the log line", func() bool {
				return strings.Count(w.Logs.String(), "workload API connection closed") > before
			})
		})
	}

	svid, err := newClient(t, w).FetchX509SVID(t.Context())
	if err != nil {
		t.Fatalf("a real client after the garbage: %v", err)
	}
	if svid.ID.String() != "spiffe://cluster.local/ns/shop/sa/cart" {
		t.Errorf("SVID ID = %s", svid.ID)
	}
}

func TestSocketFile(t *testing.T) {
	cp := startControlPlane(t, nil, 0)
	w := startWorkload(t, cp, "shop", "cart")
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string)
		wantErr string // empty: the server starts
	}{
		{name: "no file"},
		{name: "stale socket from a previous run", prepare: func(t *testing.T, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			l.Close()
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("stale socket not left behind: %v", err)
			}
		}},
		{name: "socket of a live server", wantErr: "in use", prepare: func(t *testing.T, path string) {
			startServer(t, w.Agent, path, &syncBuffer{})
		}},
		{name: "regular file", wantErr: "not a socket", prepare: func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := socketPath(t)
			if tc.prepare != nil {
				tc.prepare(t, path)
			}
			before, _ := os.Stat(path)
			if tc.wantErr != "" {
				srv, err := workloadapi.New(workloadapi.Config{Source: w.Agent, SocketPath: path})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(t.Context(), waitFor)
				defer cancel()
				err = srv.Run(ctx)
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("Run err = %v, want one naming %s and saying %q", err, path, tc.wantErr)
				}
				after, err := os.Stat(path)
				if err != nil || !os.SameFile(before, after) {
					t.Fatalf("the file in the way was replaced or removed (%v)", err)
				}
				if strings.Contains(tc.wantErr, "in use") {
					// The live server is unharmed.
					if _, err := fetchX509(t, path); err != nil {
						t.Errorf("the live server stopped answering: %v", err)
					}
				}
				return
			}
			stop := startServer(t, w.Agent, path, &syncBuffer{})
			svid, err := fetchX509(t, path)
			if err != nil {
				t.Fatalf("FetchX509SVID: %v", err)
			}
			if svid.ID.String() != "spiffe://cluster.local/ns/shop/sa/cart" {
				t.Errorf("SVID ID = %s", svid.ID)
			}
			stop()
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket left behind after Run returned: %v", err)
			}
		})
	}
}

func fetchX509(t *testing.T, path string) (*x509svid.SVID, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	c, err := spiffewl.New(ctx, spiffewl.WithAddr("unix://"+path))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.FetchX509SVID(ctx)
}
