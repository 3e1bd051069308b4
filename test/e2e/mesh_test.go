package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// mesh is a running rampartd with its state directory, on loopback.
type mesh struct {
	dir      string // short temp dir: logs, tokens, sockets
	state    string
	cp       string // rampartd's listen address
	args     []string
	rampartd *procs.Proc
	root     string // root.pem for sidecars
}

func startMesh(t *testing.T, args ...string) *mesh {
	t.Helper()
	dir := procs.ShortTempDir(t)
	m := &mesh{dir: dir, state: filepath.Join(dir, "state"), cp: procs.FreeAddr(t), args: args}
	m.startCP(t)
	m.root = filepath.Join(dir, "root.pem")
	if err := os.WriteFile(m.root, []byte(procs.Run(t, "rampartctl", "ca", "root", "--state-dir", m.state)), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *mesh) startCP(t *testing.T) {
	t.Helper()
	args := append([]string{"--state-dir", m.state, "--listen", m.cp, "--monitoring-listen", ""}, m.args...)
	m.rampartd = procs.Start(t, m.dir, "rampartd", "rampartd", args...)
	procs.WaitTCP(t, m.cp, 20*time.Second)
}

func (m *mesh) token(t *testing.T, ns, sa string, extra ...string) string {
	t.Helper()
	tok := filepath.Join(m.dir, fmt.Sprintf("%s.%s.%d.token", ns, sa, time.Now().UnixNano()))
	out := procs.Run(t, "rampartctl", append([]string{"token", "create", "--state-dir", m.state, "--namespace", ns, "--service-account", sa}, extra...)...)
	if err := os.WriteFile(tok, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	return tok
}

// sidecar starts rampart-sidecar with exactly the contract's flags and waits for
// its Workload API socket.
func (m *mesh) sidecar(t *testing.T, ns, sa string) (string, *procs.Proc) {
	t.Helper()
	sock := filepath.Join(m.dir, sa+".sock")
	p := procs.Start(t, m.dir, "sidecar-"+sa, "rampart-sidecar",
		"--control-plane", m.cp, "--root-cert", m.root, "--token-file", m.token(t, ns, sa), "--workload-api-socket", sock)
	procs.Eventually(t, 20*time.Second, "workload API socket "+sock, func() bool { _, err := os.Stat(sock); return err == nil })
	return sock, p
}

// source is what an app does: go-spiffe's X509Source on the sidecar's socket.
func source(t *testing.T, sock string) *workloadapi.X509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatalf("NewX509Source(%s): %v", sock, err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func serialOf(t *testing.T, src x509svid.Source) string {
	t.Helper()
	s, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates[0].SerialNumber.String()
}

// traffic is an mTLS HTTP server app (identity from server) and a client app
// (identity from client) that count every request and failure.
type traffic struct {
	url       string
	fresh     *http.Client // new connection (and handshake) per request
	kept      *http.Client // one long-lived connection
	ok, fails atomic.Int64
	mu        sync.Mutex
	errs      []string
}

func newTraffic(t *testing.T, server, client *workloadapi.X509Source, td spiffeid.TrustDomain) *traffic {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvTLS := tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeMemberOf(td))
	srvTLS.MinVersion = tls.VersionTLS13
	srv := &http.Server{TLSConfig: srvTLS, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		fmt.Fprint(w, id.String())
	})}
	go func() { _ = srv.ServeTLS(lis, "", "") }()
	t.Cleanup(func() { srv.Close() })
	cliTLS := tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeMemberOf(td))
	cliTLS.MinVersion = tls.VersionTLS13
	return &traffic{
		url:   "https://" + lis.Addr().String() + "/",
		fresh: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cliTLS, DisableKeepAlives: true}},
		kept:  &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cliTLS.Clone(), MaxIdleConnsPerHost: 1}},
	}
}

// do sends one request and records the outcome; want is the client's SPIFFE ID the
// server must have seen.
func (tr *traffic) do(c *http.Client, want string) {
	resp, err := c.Get(tr.url)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 && string(body) == want {
			tr.ok.Add(1)
			return
		}
		err = fmt.Errorf("status %d body %q", resp.StatusCode, body)
	}
	tr.fails.Add(1)
	tr.mu.Lock()
	tr.errs = append(tr.errs, err.Error())
	tr.mu.Unlock()
}

// run sends requests every interval on both clients until ctx ends.
func (tr *traffic) run(ctx context.Context, interval time.Duration, want string) {
	for ctx.Err() == nil {
		tr.do(tr.fresh, want)
		tr.do(tr.kept, want)
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}

func (tr *traffic) check(t *testing.T, minOK int64) {
	t.Helper()
	if n := tr.fails.Load(); n > 0 {
		t.Errorf("%d of %d requests failed; first errors: %s", n, n+tr.ok.Load(), strings.Join(tr.errs[:min(len(tr.errs), 5)], "; "))
	}
	if tr.ok.Load() < minOK {
		t.Errorf("only %d requests succeeded, want at least %d", tr.ok.Load(), minOK)
	}
}

// statusVia returns a function that GETs path from addr over mTLS with the
// identity served on the Workload API socket sock, and returns the status.
func statusVia(t *testing.T, sock, addr string) func(path string) int {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: meshPeerTLS(source(t, sock), td), DisableKeepAlives: true}}
	return func(path string) int {
		t.Helper()
		resp, err := client.Get("https://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
}
