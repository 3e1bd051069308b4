// Command rampart-sidecar is Rampart's data plane: today the identity agent and the
// SPIFFE Workload API for the app beside it.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/cmd/internal/cli"
	"github.com/rampart-mesh/rampart/cmd/internal/version"
	"github.com/rampart-mesh/rampart/proxy"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
)

type config struct {
	ControlPlane      string       `json:"controlPlane"`
	RootCert          string       `json:"rootCert"`
	TokenFile         string       `json:"tokenFile"`
	DataDir           string       `json:"dataDir"`
	WorkloadAPISocket string       `json:"workloadAPISocket"`
	Namespace         string       `json:"namespace"`
	ServiceAccount    string       `json:"serviceAccount"`
	TrustDomain       string       `json:"trustDomain"`
	RootNamespace     string       `json:"rootNamespace"`
	KeyType           string       `json:"keyType"`
	SVIDTTL           cli.Duration `json:"svidTTL"`
	MetricsListen     string       `json:"metricsListen"`
	InboundListen     string       `json:"inboundListen"`
	App               string       `json:"app"`
	MTLSMode          string       `json:"mtlsMode"`
	AuthzBundle       string       `json:"authzBundle"`
	Workload          string       `json:"workload"`
	Labels            string       `json:"labels"`
	DecisionLog       string       `json:"decisionLog"`
	LogAllows         bool         `json:"logAllows"`
	DecisionLogOpts
	OutboundListen  string   `json:"outboundListen"`
	InboundProtocol string   `json:"inboundProtocol"`
	Transparent     bool     `json:"transparent"`
	Pprof           bool     `json:"pprof"`
	GCPercent       int      `json:"gcPercent"`
	Concurrency     int      `json:"concurrency"`
	AccessLog       string   `json:"accessLog"`
	GatewayListen   []string `json:"gatewayListen"`
	Proxyless       bool     `json:"proxyless"`
	GRPCBootstrap   string   `json:"grpcBootstrap"`
	CertDir         string   `json:"certDir"`
	LogLevel        string   `json:"logLevel"`
	LogFormat       string   `json:"logFormat"`
}

// DecisionLogOpts are the decision log's flags besides its path.
type DecisionLogOpts struct {
	DecisionLogLossless bool     `json:"decisionLogLossless"`
	DecisionLogMaxSize  cli.Size `json:"decisionLogMaxSize"`
	DecisionLogMaxFiles int      `json:"decisionLogMaxFiles"`
	DecisionLogPolicy   string   `json:"decisionLogPolicy"`
}

func main() {
	if err := newCommand().ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "rampart-sidecar:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	c := config{
		ControlPlane:  "127.0.0.1:15012",
		RootNamespace: ca.DefaultRootNamespace,
		KeyType:       string(ca.KeyECDSAP256),
		MetricsListen: "127.0.0.1:0",
		LogLevel:      "info",
		LogFormat:     "text",
	}
	var configFile string
	cmd := &cobra.Command{
		Use:   "rampart-sidecar",
		Short: "Rampart sidecar: workload identity agent, SPIFFE Workload API, proxy, or the agent of a proxyless gRPC app",
		Long: `rampart-sidecar runs beside one workload.

It generates the workload's private key in memory (the key leaves the process
only for the app, through the Workload API or with --proxyless as a file in
--cert-dir, and with --data-dir for a file only the sidecar's user can read),
sends a CSR to rampartd with the join token from --token-file, and renews its
X.509-SVID at about half its lifetime. Renewals authenticate with the current
SVID, so the token is needed to join only. If rampartd is unreachable the last
good SVID keeps being served until it expires, and renewal resumes on its own
when rampartd returns.

Without --data-dir the SVID and its key live in memory only: a restarted
sidecar joins again with its token, which a single-use token (the default of
'rampartctl token create') no longer allows. With --data-dir DIR the sidecar
keeps its SVID, key and trust bundle in DIR (created 0700; files 0600, replaced
atomically on every rotation), and at start an SVID stored there that is still
valid, chains to the stored bundle and is for this sidecar's identity is served
at once and renewed with itself instead of the token. If it has expired (the
sidecar was down longer than the SVID's TTL), the sidecar needs a new token.
The stored bundle, not --root-cert, authenticates rampartd after a restart
(remove DIR to start over from --root-cert). DIR also records the SPIFFE ID the
sidecar was issued (DIR/identity): an SVID stored for another identity (say,
copied from another sidecar's DIR) stops the sidecar with an error. Give each
sidecar its own DIR; it holds the workload's private key.

Once it holds an SVID it serves the SPIFFE Workload API on --workload-api-socket
(point SPIFFE_ENDPOINT_SOCKET=unix://<path> at it for go-spiffe and other clients).

Proxyless gRPC (--proxyless): for a gRPC app that talks xDS itself (grpc-go's
xds resolver) and has no proxy in front. The sidecar serves no listeners; it
keeps the workload's SVID in --cert-dir (cert-chain.pem, key.pem mode 0600,
root-cert.pem), rewritten atomically on every rotation, and writes a gRPC xDS
bootstrap to --grpc-bootstrap: rampartd at --control-plane over mTLS with those
files (channel_creds "tls"), node id <SPIFFE ID>~<workload> with metadata
GENERATOR=grpc, and the "default" file_watcher certificate provider that
rampartd's clusters use for mTLS to mesh services. Point the app at it with
GRPC_XDS_BOOTSTRAP=<file>, dial xds:///HOST:PORT (e.g.
xds:///echo.default.svc.cluster.local:9090, or a short form from the app's
namespace) with xDS transport credentials (google.golang.org/grpc/credentials/xds),
and it gets rampartd's routes, clusters and endpoints and talks mTLS to the
mesh's sidecars. The --control-plane host must be one rampartd's certificate
names (its --listen host, localhost or a loopback address): gRPC checks it.
/healthz/ready answers 200 once the files are written.`,
		Example: `  rampartctl token create --state-dir .rampart --namespace default --service-account web > web.token
  rampartctl ca root --state-dir .rampart > root.pem
  rampart-sidecar --control-plane 127.0.0.1:15012 --root-cert root.pem \
      --token-file web.token --data-dir /var/lib/rampart/web --workload-api-socket /tmp/web/agent.sock

  # a proxyless gRPC app: no proxy, its identity and bootstrap in files
  rampart-sidecar --control-plane 127.0.0.1:15012 --root-cert root.pem \
      --token-file client.token --workload default/client --labels app=client \
      --proxyless --cert-dir /tmp/client/certs --grpc-bootstrap /tmp/client/bootstrap.json
  GRPC_XDS_BOOTSTRAP=/tmp/client/bootstrap.json ./client --target xds:///echo.default.svc.cluster.local:9090`,
		Version:       version.String(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          cli.RunE(&configFile, &c, func(ctx context.Context) error { return run(ctx, c) }),
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file; keys are the flag names in camelCase (controlPlane, rootCert, …); flags win; unknown keys are errors")
	f.StringVar(&c.ControlPlane, "control-plane", c.ControlPlane, "rampartd's identity endpoint, host:port")
	f.StringVar(&c.RootCert, "root-cert", "", "PEM file with the mesh root certificate(s) ('rampartctl ca root' prints it); trusted for the first contact with rampartd only, then the trust bundle fetched from it")
	f.StringVar(&c.TokenFile, "token-file", "", "file holding the join token (re-read whenever a token is needed)")
	f.StringVar(&c.DataDir, "data-dir", "", "directory where the sidecar keeps its SVID, key and trust bundle across restarts, so that a single-use token is enough (see above); one per sidecar; empty: memory only")
	f.StringVar(&c.WorkloadAPISocket, "workload-api-socket", "", "Unix socket path for the SPIFFE Workload API; empty disables it")
	f.StringVar(&c.Namespace, "namespace", "", "namespace to request (default: the one the join token names)")
	f.StringVar(&c.ServiceAccount, "service-account", "", "service account to request (default: the one the join token names)")
	f.StringVar(&c.TrustDomain, "trust-domain", "", "trust domain (default: the one in the root certificate, else cluster.local)")
	f.StringVar(&c.RootNamespace, "root-namespace", c.RootNamespace, "mesh root namespace, where rampartd's identity lives")
	f.StringVar(&c.KeyType, "key-type", c.KeyType, "workload key type: ecdsa-p256, rsa-2048 or rsa-3072")
	f.Var(&c.SVIDTTL, "svid-ttl", "SVID lifetime to request (default: the CA's)")
	f.StringVar(&c.InboundListen, "inbound-listen", "", "serve the inbound path (mTLS, authorization) on this address, e.g. 127.0.0.1:15006; empty disables it")
	f.StringVar(&c.App, "app", "", "with --inbound-listen: the app's address, where allowed requests go")
	f.StringVar(&c.InboundProtocol, "inbound-protocol", "auto", "with --inbound-listen: the port's protocol, as Istio reads it from the port's name or appProtocol: http (HTTP/1.1, HTTP/2, gRPC, WebSocket), tcp (authorization on connection attributes, then bytes to the app), or auto (a port with no protocol name: each connection is detected, by an HTTP ALPN name or by its first bytes; a client that sends nothing within the sniffing timeout is TCP, so give server-first protocols tcp)")
	f.StringVar(&c.MTLSMode, "mtls-mode", c.MTLSMode, "with --inbound-listen: force the port's mTLS mode (DISABLE, PERMISSIVE or STRICT); by default the bundle's PeerAuthentication decides")
	f.StringVar(&c.AuthzBundle, "authz-bundle", "", "with --inbound-listen: take the compiled policy from this directory ('rampartctl authz compile --out DIR', reloaded when it changes) instead of from rampartd over xDS")
	f.StringVar(&c.Workload, "workload", "", "this workload, NAMESPACE/NAME (default: the identity's namespace and service account); rampartd compiles its config for it")
	f.StringVar(&c.Labels, "labels", "", "the workload's labels, k=v,k2=v2 (policy selectors, subsets and sourceLabels match them)")
	f.StringVar(&c.OutboundListen, "outbound-listen", "", "serve the outbound path on this address, e.g. 127.0.0.1:15001: the app uses it as HTTP_PROXY (or sends with the service's Host) and rampartd's routes and clusters take it into the mesh; empty disables it")
	f.StringVar(&c.AccessLog, "access-log", "failures", "outbound and gateway access log: failures (requests with a response flag or a 5xx) or all")
	f.IntVar(&c.GCPercent, "gc-percent", 200, "heap growth that triggers Go's garbage collector, in percent of the live heap (GOGC, which wins when set): the sidecar's heap is small, and collecting half as often saves CPU on every request for a few MB under load; -1 disables collection")
	f.IntVar(&c.Concurrency, "concurrency", 0, "how many CPUs the proxy runs on at once (Go's GOMAXPROCS; Istio's proxy concurrency); 0: all the machine's or the container's CPU limit")
	f.BoolVar(&c.Pprof, "pprof", false, "serve Go's profiler under /debug/pprof/ on --metrics-listen (for performance work; keep that address private)")
	f.BoolVar(&c.Transparent, "transparent", false, "take connections iptables redirected ('rampart-sidecar init'): on --outbound-listen each one's original destination picks its route, and unknown destinations pass through; on --inbound-listen the app's port (--app's) gets HTTP authorization, the pod's other ports TCP authorization and are passed to the pod's address there, and a connection straight to the listener is refused")
	f.StringArrayVar(&c.GatewayListen, "gateway-listen", nil, "serve as an ingress gateway on this address (repeatable); the port picks the Istio Gateway server whose routes apply")
	f.StringVar(&c.DecisionLog, "decision-log", "", "with --inbound-listen or --gateway-listen: append denials and dry-run hits to this tamper-evident decision log (both listeners share the one file)")
	f.BoolVar(&c.LogAllows, "log-allows", false, "with --decision-log: log allowed requests too")
	f.BoolVar(&c.DecisionLogLossless, "decision-log-lossless", false, "with --decision-log: when the log's buffer is full, a request waits for room (until it ends) instead of its event being dropped and counted in decision_logs_dropped_total{reason=\"buffer_full\"}")
	f.Var(&c.DecisionLogMaxSize, "decision-log-max-size", "with --decision-log: rotate the file at this size, e.g. 100Mi (default 100Mi); rotated files are FILE.1 (newest) to FILE.N, and 'rampartctl audit verify FILE' checks them all")
	f.IntVar(&c.DecisionLogMaxFiles, "decision-log-max-files", 0, "with --decision-log: how many rotated files to keep (default 5)")
	f.StringVar(&c.DecisionLogPolicy, "decision-log-policy", "", "with --decision-log: a Rego file, \"package system.log\", with OPA's decision-log rules: \"mask contains PATH\" (or {op: remove|upsert, path, value}) to erase fields of each event, \"drop if ...\" to leave events out; its input is the event")
	f.BoolVar(&c.Proxyless, "proxyless", false, "agent-only mode for a proxyless gRPC app: no listeners; write --cert-dir and --grpc-bootstrap for grpc-go's xds resolver (see above)")
	f.StringVar(&c.GRPCBootstrap, "grpc-bootstrap", "", "with --proxyless: the gRPC xDS bootstrap file to write (the app's GRPC_XDS_BOOTSTRAP)")
	f.StringVar(&c.CertDir, "cert-dir", "", "with --proxyless: directory for cert-chain.pem, key.pem and root-cert.pem, rewritten on every rotation")
	f.StringVar(&c.MetricsListen, "metrics-listen", c.MetricsListen, "address serving /metrics and /healthz/ready (port 0 picks one and logs it); \"\" disables it")
	f.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	f.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	cmd.AddCommand(newInitCmd())
	return cmd
}

func run(ctx context.Context, c config) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(c.GCPercent)
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("--concurrency %d: want 0 (all CPUs) or more", c.Concurrency)
	}
	if c.Concurrency > 0 {
		runtime.GOMAXPROCS(c.Concurrency)
	}
	log, err := cli.NewLogger(os.Stderr, c.LogLevel, c.LogFormat)
	if err != nil {
		return err
	}
	if c.RootCert == "" {
		return errors.New("--root-cert is required (get it with 'rampartctl ca root --state-dir DIR > root.pem')")
	}
	rootPEM, err := os.ReadFile(c.RootCert)
	if err != nil {
		return fmt.Errorf("--root-cert: %w", err)
	}
	roots, err := ca.ParseCertsPEM(rootPEM)
	if err != nil {
		return fmt.Errorf("--root-cert %s: %w", c.RootCert, err)
	}
	kt, err := ca.ParseKeyType(c.KeyType)
	if err != nil {
		return fmt.Errorf("--key-type: %w", err)
	}
	var td spiffeid.TrustDomain
	if c.TrustDomain != "" {
		if td, err = spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
			return fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err)
		}
	}
	ident := ca.Identity{Namespace: c.Namespace, ServiceAccount: c.ServiceAccount}
	if (ident.Namespace == "") != (ident.ServiceAccount == "") {
		return errors.New("--namespace and --service-account go together")
	}
	if ident.Namespace != "" {
		if err := ident.Validate(); err != nil {
			return err
		}
	}
	var token func() (string, error)
	if c.TokenFile != "" {
		path := c.TokenFile
		token = func() (string, error) {
			b, err := os.ReadFile(path)
			if err != nil {
				return "", err
			}
			return string(b), nil
		}
	} else if ident.Namespace == "" {
		return errors.New("--token-file is required (make one with 'rampartctl token create')")
	}
	wl, err := workloadOf(c, ident, token)
	if err != nil {
		return err
	}
	var pl *proxy.ProxylessConfig
	switch {
	case c.Proxyless:
		if c.InboundListen != "" || c.OutboundListen != "" || len(c.GatewayListen) > 0 {
			return errors.New("--proxyless serves no listeners: drop --inbound-listen, --outbound-listen and --gateway-listen")
		}
		if c.GRPCBootstrap == "" || c.CertDir == "" {
			return errors.New("--proxyless needs --grpc-bootstrap FILE and --cert-dir DIR (where the app's bootstrap and certificates go)")
		}
		if wl.Namespace == "" || wl.Name == "" {
			return errors.New("--proxyless needs --workload NAMESPACE/NAME (it could not be read from the token)")
		}
		pl = &proxy.ProxylessConfig{CertDir: c.CertDir, Bootstrap: c.GRPCBootstrap}
	case c.GRPCBootstrap != "" || c.CertDir != "":
		return errors.New("--grpc-bootstrap and --cert-dir go with --proxyless")
	}
	var out *proxy.OutboundConfig
	if c.OutboundListen != "" || len(c.GatewayListen) > 0 {
		switch c.AccessLog {
		case "failures", "all":
		default:
			return fmt.Errorf("--access-log %q: want failures or all", c.AccessLog)
		}
		out = &proxy.OutboundConfig{Listen: c.OutboundListen, GatewayListen: c.GatewayListen, Transparent: c.Transparent, AccessLogAll: c.AccessLog == "all",
			DecisionLog: c.DecisionLog, LogAllows: c.LogAllows} // a gateway's decisions, in the inbound path's log when there is one
	}
	var in *proxy.InboundConfig
	if c.InboundListen != "" {
		switch c.InboundProtocol {
		case "http", "tcp", "auto":
		default:
			return fmt.Errorf("--inbound-protocol %q: want http, tcp or auto", c.InboundProtocol)
		}
		in = &proxy.InboundConfig{Listen: c.InboundListen, App: c.App, Captured: c.Transparent, Protocol: c.InboundProtocol, Mode: strings.ToUpper(c.MTLSMode), BundleDir: c.AuthzBundle,
			DecisionLog: c.DecisionLog, LogAllows: c.LogAllows}
		if c.App == "" {
			return errors.New("--inbound-listen needs --app")
		}
		if c.Transparent {
			if err := loopbackApp(c.App); err != nil {
				return err
			}
		}
		if wl.Namespace == "" {
			return errors.New("--inbound-listen needs --workload NAMESPACE/NAME (it could not be read from the token)")
		}
		in.Workload = wl
	}
	dlo, err := decisionLogOptions(c)
	if err != nil {
		return err
	}
	reg := cli.NewRegistry()
	p, err := proxy.New(proxy.Config{
		DecisionLogOptions: dlo,
		Agent: agent.Config{
			ControlPlane:  c.ControlPlane,
			RootCerts:     roots,
			Token:         token,
			Identity:      ident,
			TrustDomain:   td,
			RootNamespace: c.RootNamespace,
			KeyType:       kt,
			TTL:           time.Duration(c.SVIDTTL),
			DataDir:       c.DataDir,
		},
		WorkloadAPISocket: c.WorkloadAPISocket,
		Inbound:           in,
		Outbound:          out,
		Proxyless:         pl,
		Workload:          wl,
		Registry:          reg,
		Log:               log,
		Version:           version.Version,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.Run(ctx) })
	g.Go(func() error {
		extra := map[string]http.Handler{"/healthz/ready": p.ReadyHandler()}
		if c.Pprof {
			extra["/debug/pprof/"] = http.HandlerFunc(pprof.Index)
			extra["/debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
		}
		return cli.MetricsServer(ctx, c.MetricsListen, reg, log, extra)
	})
	err = g.Wait()
	log.Info("rampart-sidecar stopped")
	return err
}

// workloadOf reads --workload and --labels, defaulting the name to the identity's.
func workloadOf(c config, ident ca.Identity, token func() (string, error)) (authz.Workload, error) {
	ns, name, _ := strings.Cut(c.Workload, "/")
	if c.Workload != "" && (ns == "" || name == "") {
		return authz.Workload{}, fmt.Errorf("--workload %q: want NAMESPACE/NAME", c.Workload)
	}
	if ns == "" {
		ns, name = ident.Namespace, ident.ServiceAccount
	}
	if ns == "" && token != nil {
		if tok, err := token(); err == nil {
			if id, err := agent.IdentityFromToken(strings.TrimSpace(tok)); err == nil {
				ns, name = id.Namespace, id.ServiceAccount
			}
		}
	}
	wl := authz.Workload{Namespace: ns, Name: name, Labels: map[string]string{}}
	if c.Labels != "" {
		for _, kv := range strings.Split(c.Labels, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return authz.Workload{}, fmt.Errorf("--labels: %q is not key=value", kv)
			}
			wl.Labels[k] = v
		}
	}
	return wl, nil
}

// decisionLogOptions checks the decision log's flags and reads its policy.
func decisionLogOptions(c config) (proxy.DecisionLogOptions, error) {
	o := proxy.DecisionLogOptions{Lossless: c.DecisionLogLossless, MaxBytes: int64(c.DecisionLogMaxSize), MaxFiles: c.DecisionLogMaxFiles}
	if c.DecisionLog == "" {
		if c.DecisionLogOpts != (DecisionLogOpts{}) {
			return o, errors.New("--decision-log-lossless, --decision-log-max-size, --decision-log-max-files and --decision-log-policy go with --decision-log FILE")
		}
		return o, nil
	}
	if c.DecisionLogMaxSize != 0 && c.DecisionLogMaxSize < 4096 {
		return o, fmt.Errorf("--decision-log-max-size %d: want at least 4Ki (every record must fit in a file)", c.DecisionLogMaxSize)
	}
	if c.DecisionLogMaxFiles < 0 {
		return o, fmt.Errorf("--decision-log-max-files %d: want 1 or more", c.DecisionLogMaxFiles)
	}
	if c.DecisionLogPolicy != "" {
		b, err := os.ReadFile(c.DecisionLogPolicy)
		if err != nil {
			return o, fmt.Errorf("--decision-log-policy: %w", err)
		}
		o.Policy, o.PolicyFile = string(b), c.DecisionLogPolicy
		if o.Policy == "" {
			return o, fmt.Errorf("--decision-log-policy %s: the file is empty", c.DecisionLogPolicy)
		}
	}
	return o, nil
}

// loopbackApp checks that a captured sidecar's app is on loopback: init
// sends the sidecar's own connections to the pod's other addresses back to
// its inbound listener (so a call to its own pod meets mTLS), so forwarding
// to the app at the pod's address would loop.
func loopbackApp(app string) error {
	host, port, err := net.SplitHostPort(app)
	if err != nil {
		return fmt.Errorf("--app %q: %v", app, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("--app %q: %v", app, err)
	}
	if ip, err := netip.ParseAddr(host); (err == nil && ip.Unmap().IsLoopback()) || host == "localhost" {
		return nil
	}
	return fmt.Errorf("--app %q: with --transparent the app must be reached on loopback (127.0.0.1:PORT or [::1]:PORT): its sidecar's connections to the pod's own addresses are captured, so forwarding there would come back to the sidecar", app)
}
