// Command rampartd is Rampart's control plane: the CA that issues SPIFFE identities
// (and, as they land, config sources, compilation and xDS).
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rampart-mesh/rampart/ca/kubetoken"

	"github.com/rampart-mesh/rampart/policies/source/kube"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/cmd/internal/cli"
	"github.com/rampart-mesh/rampart/cmd/internal/version"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/controlplane"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
)

// config is rampartd's flags and config file. JSON names are the YAML keys.
type config struct {
	StateDir             string       `json:"stateDir"`
	Listen               string       `json:"listen"`
	MonitoringListen     string       `json:"monitoringListen"`
	TrustDomain          string       `json:"trustDomain"`
	RootNamespace        string       `json:"rootNamespace"`
	KeyType              string       `json:"keyType"`
	SVIDTTL              cli.Duration `json:"svidTTL"`
	JWTSVIDTTL           cli.Duration `json:"jwtSVIDTTL"`
	RootTTL              cli.Duration `json:"rootTTL"`
	BundleRefreshHint    cli.Duration `json:"bundleRefreshHint"`
	RotationPropagation  cli.Duration `json:"rotationPropagation"`
	RotationRetireMargin cli.Duration `json:"rotationRetireMargin"`
	CACert               string       `json:"caCert"`
	CAKey                string       `json:"caKey"`
	CAChain              string       `json:"caChain"`
	ConfigDir            []string     `json:"configDir"`
	Kubeconfig           string       `json:"kubeconfig"`
	KubeNamespace        string       `json:"kubeNamespace"`
	KubeTokenAudience    string       `json:"kubeTokenAudience"`
	MeshConfig           string       `json:"meshConfig"`
	LogLevel             string       `json:"logLevel"`
	LogFormat            string       `json:"logFormat"`
}

func main() {
	if err := newCommand().ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "rampartd:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	c := config{
		StateDir:          ".rampart",
		Listen:            "127.0.0.1:15012",
		MonitoringListen:  "127.0.0.1:15014",
		TrustDomain:       "cluster.local",
		RootNamespace:     ca.DefaultRootNamespace,
		KeyType:           string(ca.KeyECDSAP256),
		SVIDTTL:           cli.Duration(time.Hour),
		JWTSVIDTTL:        cli.Duration(5 * time.Minute),
		RootTTL:           cli.Duration(10 * 365 * 24 * time.Hour),
		BundleRefreshHint: cli.Duration(5 * time.Minute),
		LogLevel:          "info",
		LogFormat:         "text",
	}
	var configFile string
	cmd := &cobra.Command{
		Use:   "rampartd",
		Short: "Rampart control plane: SPIFFE CA and identity endpoint",
		Long: `rampartd is Rampart's control plane.

It creates a root CA on first start (or uses the one you bring with --ca-cert and
--ca-key), keeps it in --state-dir, and serves Istio's certificate service on
--listen over TLS: sidecars send a CSR with a join token (or, to renew, their
current SVID) and get an X.509-SVID back. Root rotation is started with
'rampartctl ca rotate' and runs through its phases on its own.

Files in the state directory:
  ca/             roots and keys (keys are mode 0600), state.json
  tokens/         join tokens (hashed) made by 'rampartctl token create'
  rampartd.sock   admin socket used by rampartctl (mode 0600)
  rampartd.json   address and pid of the running rampartd`,
		Example: `  rampartd --state-dir .rampart --listen 127.0.0.1:15012
  rampartd --config rampartd.yaml --log-format json`,
		Version:       version.String(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          cli.RunE(&configFile, &c, func(ctx context.Context) error { return run(ctx, c) }),
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file; keys are the flag names in camelCase (stateDir, listen, svidTTL, …); flags win over the file; unknown keys are errors")
	f.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory for the CA, tokens and runtime files")
	f.StringVar(&c.Listen, "listen", c.Listen, "address of the identity endpoint (gRPC over TLS)")
	f.StringVar(&c.MonitoringListen, "monitoring-listen", c.MonitoringListen, "address serving /metrics and /ready; \"\" disables it")
	f.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "SPIFFE trust domain of every identity")
	f.StringVar(&c.RootNamespace, "root-namespace", c.RootNamespace, "mesh root namespace; rampartd's own identity is spiffe://<td>/ns/<root-namespace>/sa/rampartd")
	f.StringVar(&c.KeyType, "key-type", c.KeyType, "key type of generated roots: ecdsa-p256, rsa-2048 or rsa-3072")
	f.Var(&c.SVIDTTL, "svid-ttl", "default and maximum X.509-SVID lifetime")
	f.Var(&c.JWTSVIDTTL, "jwt-svid-ttl", "JWT-SVID lifetime")
	f.Var(&c.RootTTL, "root-ttl", "lifetime of a generated root")
	f.Var(&c.BundleRefreshHint, "bundle-refresh-hint", "how often sidecars re-fetch the trust bundle (published as spiffe_refresh_hint)")
	f.Var(&c.RotationPropagation, "rotation-propagation", "how long a new root is published before it signs (default twice the refresh hint)")
	f.Var(&c.RotationRetireMargin, "rotation-retire-margin", "extra time an old root stays in the bundle after its last SVID expires (default 1m)")
	f.StringVar(&c.CACert, "ca-cert", "", "bring your own CA: PEM signing certificate (root or intermediate, optionally followed by its chain)")
	f.StringVar(&c.CAKey, "ca-key", "", "bring your own CA: PEM private key of --ca-cert")
	f.StringVar(&c.CAChain, "ca-chain", "", "bring your own CA: PEM chain from --ca-cert's issuer up to the root")
	f.StringVar(&c.Kubeconfig, "kubeconfig", "", "read Istio objects, Services, EndpointSlices and Pods from this Kubernetes cluster (kubeconfig file; \"in-cluster\" for the pod's service account), beside or instead of --config-dir")
	f.StringVar(&c.KubeTokenAudience, "kube-token-audience", kubetoken.DefaultAudience, "with --kubeconfig: sidecars may join with their pod's service-account token for this audience instead of a join token (checked with TokenReview; rampartd then needs create on tokenreviews); \"\" accepts join tokens only")
	f.StringVar(&c.KubeNamespace, "kube-namespace", "", "with --kubeconfig: watch only this namespace, and the mesh's root namespace for Istio objects (mesh-wide policies live there); needs list/watch in both (default: all namespaces)")
	f.StringArrayVar(&c.ConfigDir, "config-dir", nil, "configuration file or directory (Istio and Rampart YAML), watched; each sidecar gets its compiled policy over xDS (repeatable)")
	f.StringVar(&c.MeshConfig, "mesh-config", "", "Istio MeshConfig YAML (rootNamespace, trustDomain, pathNormalization, extensionProviders, h2UpgradePolicy); its trustDomain and rootNamespace, when set, must equal --trust-domain and --root-namespace")
	f.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	f.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	return cmd
}

// meshConfig parses the --mesh-config file. Its trustDomain and
// rootNamespace must be the ones the CA uses (--trust-domain,
// --root-namespace): policies compiled with another trust domain would name
// principals no SVID carries, and an ALLOW would never match nor a DENY fire
// (failing open); a root namespace other than the CA's would leave mesh-wide
// policies unapplied. Where the file leaves them out, the flags' values apply.
func meshConfig(file string, data []byte, trustDomain, rootNamespace string) (compile.Mesh, error) {
	mesh, err := compile.ParseMesh(data)
	if err != nil {
		return mesh, fmt.Errorf("--mesh-config %s: %w", file, err)
	}
	var set struct {
		TrustDomain   *string `json:"trustDomain"`
		RootNamespace *string `json:"rootNamespace"`
	}
	if err := yaml.Unmarshal(data, &set); err != nil {
		return mesh, fmt.Errorf("--mesh-config %s: %w", file, err)
	}
	if set.TrustDomain == nil || *set.TrustDomain == "" {
		mesh.TrustDomain = trustDomain
	} else if *set.TrustDomain != trustDomain {
		return mesh, fmt.Errorf("--mesh-config %s: trustDomain %q is not the CA's trust domain %q (--trust-domain): policies would name principals no identity carries; set --trust-domain %s, or remove trustDomain from the file",
			file, *set.TrustDomain, trustDomain, *set.TrustDomain)
	}
	if set.RootNamespace == nil || *set.RootNamespace == "" {
		mesh.RootNamespace = rootNamespace
	} else if *set.RootNamespace != rootNamespace {
		return mesh, fmt.Errorf("--mesh-config %s: rootNamespace %q is not rampartd's root namespace %q (--root-namespace): set --root-namespace %s, or remove rootNamespace from the file",
			file, *set.RootNamespace, rootNamespace, *set.RootNamespace)
	}
	return mesh, nil
}

func run(ctx context.Context, c config) error {
	log, err := cli.NewLogger(os.Stderr, c.LogLevel, c.LogFormat)
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err)
	}
	kt, err := ca.ParseKeyType(c.KeyType)
	if err != nil {
		return fmt.Errorf("--key-type: %w", err)
	}
	var ext *ca.ExternalCA
	switch {
	case c.CACert != "" && c.CAKey != "":
		ext = &ca.ExternalCA{CertFile: c.CACert, KeyFile: c.CAKey, ChainFile: c.CAChain}
	case c.CACert != "" || c.CAKey != "" || c.CAChain != "":
		return errors.New("bring your own CA needs both --ca-cert and --ca-key")
	}
	stateDir, err := filepath.Abs(c.StateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	mesh, err := compile.Mesh{TrustDomain: td.Name(), RootNamespace: c.RootNamespace}.WithDefaults()
	if err != nil {
		return err
	}
	if c.MeshConfig != "" {
		data, err := os.ReadFile(c.MeshConfig)
		if err != nil {
			return fmt.Errorf("--mesh-config: %w", err)
		}
		if mesh, err = meshConfig(c.MeshConfig, data, td.Name(), c.RootNamespace); err != nil {
			return err
		}
	}
	var kcfg *kube.Config
	if c.Kubeconfig != "" {
		var rc *rest.Config
		if c.Kubeconfig == "in-cluster" {
			rc, err = rest.InClusterConfig()
		} else {
			rc, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		}
		if err != nil {
			return fmt.Errorf("--kubeconfig %s: %w", c.Kubeconfig, err)
		}
		kc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("--kubeconfig %s: %w", c.Kubeconfig, err)
		}
		dc, err := dynamic.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("--kubeconfig %s: %w", c.Kubeconfig, err)
		}
		kcfg = &kube.Config{Kube: kc, Dynamic: dc, Namespace: c.KubeNamespace, RootNamespace: mesh.RootNamespace}
	}
	reg := cli.NewRegistry()
	srv, err := controlplane.New(controlplane.Config{
		ConfigPaths:   c.ConfigDir,
		Kube:          kcfg,
		TokenAudience: c.KubeTokenAudience,
		Mesh:          mesh,
		CA: ca.Config{
			StateDir:         stateDir,
			TrustDomain:      td,
			KeyType:          kt,
			RootTTL:          time.Duration(c.RootTTL),
			SVIDTTL:          time.Duration(c.SVIDTTL),
			JWTSVIDTTL:       time.Duration(c.JWTSVIDTTL),
			RefreshHint:      time.Duration(c.BundleRefreshHint),
			PropagationDelay: time.Duration(c.RotationPropagation),
			RetireMargin:     time.Duration(c.RotationRetireMargin),
			External:         ext,
			RootNamespace:    c.RootNamespace,
		},
		Listen:   c.Listen,
		Registry: reg,
		Log:      log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(ctx) })
	debug := map[string]http.Handler{"/debug/proxies": http.StripPrefix("/debug", srv.ProxyHandler()), "/debug/proxies/": http.StripPrefix("/debug", srv.ProxyHandler())}
	g.Go(func() error { return cli.MetricsServer(ctx, c.MonitoringListen, reg, log, debug) })
	err = g.Wait()
	log.Info("rampartd stopped")
	return err
}
