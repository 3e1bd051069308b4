package kubeapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/internal/freeport"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Version is the Kubernetes release hack/kube-tools.sh builds by default.
const Version = "v1.37.2"

// ToolsDir returns the directory holding kube-apiserver and etcd:
// $RAMPART_KUBE_TOOLS if set, else hack/kube-tools.sh's cache,
// $HOME/.cache/rampart-tools/kube-<Version>.
func ToolsDir() string {
	if d := os.Getenv("RAMPART_KUBE_TOOLS"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "rampart-tools", "kube-"+Version)
}

// Server is a running kube-apiserver with its etcd.
type Server struct {
	// URL is the API server's https://127.0.0.1:PORT.
	URL string
	// Kubeconfig is a kubeconfig file for the admin user (group
	// system:masters), trusting the server's self-generated certificate.
	Kubeconfig string
	// Config is the same as a rest.Config.
	Config *rest.Config
	// RampartdKubeconfig authenticates as rampartd's service account
	// (system:serviceaccount:rampart-system:rampartd, with the groups a
	// service-account token carries), which RBAC grants nothing until a
	// binding names it: deploy/kube/rampartd-rbac.yaml's.
	RampartdKubeconfig string
}

// RampartdUser is the user name RampartdKubeconfig authenticates as.
const RampartdUser = "system:serviceaccount:rampart-system:rampartd"

// randomToken is a static bearer token for the API server's token file.
func randomToken(tb testing.TB) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// Start starts etcd and kube-apiserver on free 127.0.0.1 ports, waits until
// the API server's /readyz answers ok, and writes a kubeconfig. Both are
// stopped when the test ends; their logs are printed if it failed. A missing
// binary fails the test, saying how to build it.
func Start(tb testing.TB) *Server {
	tb.Helper()
	tools := ToolsDir()
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(tools, bin)); err != nil {
			tb.Fatalf("the kube test tier needs %s in %s: run `make kube-tools` (hack/kube-tools.sh builds kube-apiserver %s and etcd from the Go module proxy, about 10-15 minutes once), or set RAMPART_KUBE_TOOLS to a directory holding both",
				bin, tools, Version)
		}
	}
	dir, err := os.MkdirTemp("", "rampart-kubeapi-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })

	etcdClient, etcdPeer := freeAddr(tb), freeAddr(tb)
	etcd := start(tb, dir, filepath.Join(tools, "etcd"),
		"--name", "rampart-test",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://"+etcdClient,
		"--advertise-client-urls", "http://"+etcdClient,
		"--listen-peer-urls", "http://"+etcdPeer,
		"--initial-advertise-peer-urls", "http://"+etcdPeer,
		"--initial-cluster", "rampart-test=http://"+etcdPeer,
		"--unsafe-no-fsync", // a test's data need not survive a power cut
		"--log-level", "warn",
	)
	waitTCP(tb, etcd, etcdClient, 30*time.Second)

	// The service-account signing key (kube-apiserver requires one) and the
	// admin's static bearer token.
	saKey, saPub := serviceAccountKey(tb)
	writeFile(tb, filepath.Join(dir, "sa.key"), saKey)
	writeFile(tb, filepath.Join(dir, "sa.pub"), saPub)
	token, saToken := randomToken(tb), randomToken(tb)
	writeFile(tb, filepath.Join(dir, "tokens.csv"), []byte(token+`,admin,admin,"system:masters"`+"\n"+
		saToken+","+RampartdUser+`,rampartd-uid,"system:serviceaccounts,system:serviceaccounts:rampart-system"`+"\n"))

	apiAddr := freeAddr(tb)
	_, port, _ := net.SplitHostPort(apiAddr)
	certDir := filepath.Join(dir, "certs")
	api := start(tb, dir, filepath.Join(tools, "kube-apiserver"),
		"--etcd-servers", "http://"+etcdClient,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", port,
		// Self-signed serving certificate for localhost and 127.0.0.1,
		// generated into (and trusted from) here.
		"--cert-dir", certDir,
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		// No controller manager creates service-account tokens here.
		"--disable-admission-plugins", "ServiceAccount",
		"--service-cluster-ip-range", "10.96.0.0/24",
		// 127.0.0.1 is not a valid Endpoints address; nothing needs the
		// kubernetes Service's endpoints.
		"--endpoint-reconciler-type", "none",
		"--v", "0",
	)

	url := "https://" + apiAddr
	ready := func() (bool, string) {
		if api.exited() {
			return false, "kube-apiserver exited"
		}
		caPEM, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
		if err != nil {
			return false, "no serving certificate yet"
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return false, "serving certificate does not parse"
		}
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}}
		req, _ := http.NewRequest(http.MethodGet, url+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.Do(req)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var body bytes.Buffer
		_, _ = body.ReadFrom(resp.Body)
		return resp.StatusCode == http.StatusOK, fmt.Sprintf("/readyz %d: %s", resp.StatusCode, strings.TrimSpace(body.String()))
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, why := ready()
		if ok {
			break
		}
		if api.exited() || time.Now().After(deadline) {
			tb.Fatalf("kube-apiserver on %s is not ready after %s: %s\n---- kube-apiserver log ----\n%s", url, 90*time.Second, why, api.tail(40))
		}
		time.Sleep(200 * time.Millisecond)
	}

	writeKubeconfig := func(name, user, token string) string {
		path := filepath.Join(dir, name)
		kc := clientcmdapi.NewConfig()
		kc.Clusters["rampart-test"] = &clientcmdapi.Cluster{Server: url, CertificateAuthority: filepath.Join(certDir, "apiserver.crt"), TLSServerName: "127.0.0.1"}
		kc.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
		kc.Contexts["rampart-test"] = &clientcmdapi.Context{Cluster: "rampart-test", AuthInfo: user}
		kc.CurrentContext = "rampart-test"
		if err := clientcmd.WriteToFile(*kc, path); err != nil {
			tb.Fatal(err)
		}
		return path
	}
	kubeconfig := writeKubeconfig("kubeconfig", "admin", token)
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		tb.Fatal(err)
	}
	return &Server{URL: url, Kubeconfig: kubeconfig, Config: cfg,
		RampartdKubeconfig: writeKubeconfig("kubeconfig-rampartd", "rampartd", saToken)}
}

// proc is a started etcd or kube-apiserver.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func start(tb testing.TB, dir, bin string, args ...string) *proc {
	tb.Helper()
	name := filepath.Base(bin)
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	// Never outlive the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		tb.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.stop(tb)
		if tb.Failed() {
			tb.Logf("---- %s log ----\n%s", name, p.tail(40))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits, then SIGKILL after 15 s.
func (p *proc) stop(tb testing.TB) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		tb.Logf("%s did not stop on SIGTERM; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) tail(n int) string {
	data, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitTCP(tb testing.TB, p *proc, addr string, limit time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if p.exited() || time.Now().After(deadline) {
			tb.Fatalf("%s is not listening on %s: %v\n---- %s log ----\n%s", p.name, addr, err, p.name, p.tail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		tb.Fatal(err)
	}
	return addr
}

// serviceAccountKey returns a P-256 signing key and its public key, PEM.
func serviceAccountKey(tb testing.TB) (key, pub []byte) {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
}

func writeFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// errNotEstablished is what a CRD that never became Established reports.
var errNotEstablished = errors.New("not established")

// withTimeout is the context the helpers' API calls run under.
func withTimeout(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}
