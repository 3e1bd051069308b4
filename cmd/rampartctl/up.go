package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/rampart-mesh/rampart/internal/freeport"
	"github.com/rampart-mesh/rampart/policies/registry"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/rampart-mesh/rampart/policies/xds"
	"github.com/spf13/cobra"
)

// ProcessGroup is the API group of the local mesh's Process kind.
const ProcessGroup = "local.rampart.dev"

// processSpec is how a workload's process is launched in the local mesh:
//
//	apiVersion: local.rampart.dev/v1alpha1
//	kind: Process
//	metadata: {name: reviews-v1}          # namespace: default unless set
//	spec:
//	  workloadEntry: reviews-v1            # default: the Process's name
//	  command: [bookinfo, reviews, --version, v1]
//	  env: {KEY: value}
//	  gateway: false                        # true: an ingress gateway, no command
type processSpec struct {
	WorkloadEntry string            `json:"workloadEntry"`
	Command       []string          `json:"command"`
	Env           map[string]string `json:"env"`
	Gateway       bool              `json:"gateway"`
}

// workloadPlan is one workload of the local mesh: its identity, addresses and command.
type workloadPlan struct {
	Name, Namespace, ServiceAccount string
	Labels                          map[string]string
	Address                         string // the WorkloadEntry's loopback address
	Port                            uint32 // the inbound port (the service port on Address)
	TCP                             bool   // the port's protocol is not HTTP
	Sniff                           bool   // the port has no protocol name: detected per connection
	Command                         []string
	Env                             map[string]string
	Gateway                         bool
	GatewayPorts                    []uint32
	Object                          source.Object
}

// planMesh reads the workloads of a local mesh from DIR's objects: every
// Process, with the WorkloadEntry it runs and the service port that selects it.
func planMesh(objs []source.Object) ([]workloadPlan, error) {
	reg, issues := registry.Build(objs, "default", "")
	if len(issues) > 0 {
		return nil, errors.New(issues[0].String())
	}
	byName := map[string]registry.Endpoint{}
	for _, w := range reg.Workloads {
		byName[w.Object.Namespace+"/"+w.Object.Name] = w
	}
	var plans []workloadPlan
	var errs []string
	for _, o := range objs {
		if o.Group() != ProcessGroup {
			continue
		}
		if o.Kind != "Process" {
			errs = append(errs, fmt.Sprintf("%s: unknown kind %q in %s (want Process)", o.Where(), o.Kind, ProcessGroup))
			continue
		}
		ns := o.Namespace
		if ns == "" {
			ns = "default"
		}
		var spec processSpec
		dec := json.NewDecoder(strings.NewReader(string(o.Spec)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			errs = append(errs, fmt.Sprintf("%s: spec: %v", o.Where(), err))
			continue
		}
		weName := spec.WorkloadEntry
		if weName == "" {
			weName = o.Name
		}
		we, ok := byName[ns+"/"+weName]
		if !ok {
			errs = append(errs, fmt.Sprintf("%s: spec.workloadEntry: no WorkloadEntry %s/%s", o.Where(), ns, weName))
			continue
		}
		addr, err := netip.ParseAddr(we.Address)
		if err != nil || !addr.IsLoopback() {
			errs = append(errs, fmt.Sprintf("%s: spec.address: %q must be a loopback IP (127.x.y.z) in the local mesh", we.Object.Where(), we.Address))
			continue
		}
		if spec.Gateway != (len(spec.Command) == 0) {
			errs = append(errs, fmt.Sprintf("%s: spec.command: a gateway has no command; every other process needs one", o.Where()))
			continue
		}
		p := workloadPlan{Name: weName, Namespace: ns, ServiceAccount: we.ServiceAccount, Labels: we.Labels, Address: we.Address,
			Command: spec.Command, Env: spec.Env, Gateway: spec.Gateway, Object: o}
		// The inbound port: the port of the first service that selects it.
		for _, s := range reg.Services {
			if s.Namespace != ns || s.Selector == nil || !registry.Matches(s.Selector, we.Labels) || len(s.Ports) == 0 {
				continue
			}
			port := s.Ports[0]
			p.Port = port.Number
			p.TCP = !registry.IsHTTP(port.Protocol)
			p.Sniff = port.Unnamed
			if port.TargetPort != 0 {
				p.Port = port.TargetPort
			}
			if wp, ok := we.Ports[port.Name]; ok && wp != 0 {
				p.Port = wp
			}
			break
		}
		if p.Gateway {
			for _, v := range we.Ports {
				p.GatewayPorts = append(p.GatewayPorts, v)
			}
			sort.Slice(p.GatewayPorts, func(i, j int) bool { return p.GatewayPorts[i] < p.GatewayPorts[j] })
			if len(p.GatewayPorts) == 0 {
				errs = append(errs, fmt.Sprintf("%s: spec.ports: a gateway's WorkloadEntry lists the ports it serves", we.Object.Where()))
				continue
			}
		}
		plans = append(plans, p)
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	if len(plans) == 0 {
		return nil, errors.New("no Process objects: nothing to run (see 'rampartctl up --help' for the Process kind)")
	}
	seen := map[string]string{}
	for _, p := range plans {
		if other, dup := seen[p.Address]; dup {
			return nil, fmt.Errorf("%s and %s share address %s; each workload needs its own loopback address", other, p.Namespace+"/"+p.Name, p.Address)
		}
		seen[p.Address] = p.Namespace + "/" + p.Name
	}
	sort.Slice(plans, func(i, j int) bool {
		return plans[i].Namespace+"/"+plans[i].Name < plans[j].Namespace+"/"+plans[j].Name
	})
	return plans, nil
}

func newUpCmd() *cobra.Command {
	var stateDir, bin, cpListen, monitoring, meshConfig string
	var readyTimeout, duration time.Duration
	var sidecarArgs, decisionLogArgs []string
	c := &cobra.Command{
		Use:   "up DIR",
		Short: "Run a whole mesh on this machine: rampartd, and every workload in DIR with its sidecar",
		Long: `Start a local mesh on loopback from the configuration in DIR:

  1. rampartd, watching DIR (edit a file and the change is live), its CA in --state-dir
     (a second 'up' reuses it);
  2. for every Process in DIR, a sidecar with a fresh single-use join token and
     its own --data-dir, STATE/sidecars/NAMESPACE.NAME, where it keeps its SVID
     (started again with the same flags, its token spent, it rejoins with it),
     then the app process; a gateway Process gets a sidecar in gateway mode and
     no app.

The registry is Istio's own: ServiceEntry (hosts, ports, workloadSelector)
and WorkloadEntry (address, labels, serviceAccount). A workload no
ServiceEntry selects is a client: its sidecar has an outbound listener only.
A TCP service port (not http/http2/grpc by name or protocol) is proxied as
bytes: the receiving sidecar authorizes the connection, and clients reach it
at their own sidecar's address and the service's port (OWN_ADDRESS:PORT).
A port with neither a protocol nor a protocol name (name "web", say) is
detected per connection on the receiving side, as Istio does: HTTP gets
HTTP authorization, anything else is authorized as TCP.
Each WorkloadEntry needs its own loopback address (127.0.0.0/8): its sidecar
serves the service port there (mTLS, authorization) and its outbound listener
on ADDRESS:15001. How a workload's process is started is Rampart's Process
kind:

  apiVersion: local.rampart.dev/v1alpha1
  kind: Process
  metadata: {name: reviews-v1}          # namespace default unless set
  spec:
    workloadEntry: reviews-v1            # default: the Process's name
    command: [bookinfo, reviews, --version, v1]   # command[0]: --bin, then PATH
    env: {KEY: value}
    gateway: false                        # true: ingress gateway (no command)

The app gets RAMPART_APP_ADDR (where to listen), HTTP_PROXY (its sidecar's
outbound listener: call http://reviews:9080 and the mesh routes it) and
SPIFFE_ENDPOINT_SOCKET (the Workload API).

'up' waits until every sidecar is SYNCED, prints a table of the workloads and
the ingress URL, then streams a combined log. If rampartd exits it is
restarted (sidecars keep their last good configuration and reconnect); any
other process exiting stops the mesh. Ctrl-C stops every process; the
processes die with 'up' even if it is killed.`,
		Example: `  rampartctl up deploy/examples/bookinfo
  rampartctl proxy-status                 # in another terminal
  curl -s http://127.0.10.100:8080/productpage   # the ingress 'up' prints`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			if bin == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				bin = filepath.Dir(exe)
			}
			return up(ctx, cmd.OutOrStdout(), args[0], stateDir, bin, cpListen, readyTimeout, upOptions{monitoring: monitoring, meshConfig: meshConfig, sidecarArgs: sidecarArgs, decisionLogArgs: decisionLogArgs})
		},
	}
	f := c.Flags()
	f.StringVar(&stateDir, "state-dir", ".rampart", "rampartd's state directory (CA, tokens, decision logs)")
	f.StringVar(&bin, "bin", "", "directory holding rampartd, rampart-sidecar and the apps' binaries (default: rampartctl's own)")
	f.StringVar(&cpListen, "control-plane", "127.0.0.1:15012", "where rampartd serves xDS and the CA")
	f.StringArrayVar(&sidecarArgs, "sidecar-arg", nil, "an extra flag for every sidecar (repeatable), e.g. --sidecar-arg=--log-level=debug or --sidecar-arg=--pprof")
	f.StringArrayVar(&decisionLogArgs, "decision-log-arg", nil, "an extra flag for every sidecar that keeps a decision log, in STATE/audit/ (repeatable; client-only workloads keep none), e.g. --decision-log-arg=--decision-log-policy=/abs/log.rego or --decision-log-arg=--decision-log-lossless")
	f.StringVar(&meshConfig, "mesh-config", "", "Istio MeshConfig YAML for rampartd (rootNamespace, trustDomain, h2UpgradePolicy, …); its trustDomain and rootNamespace also set rampartd's CA and every sidecar's")
	f.StringVar(&monitoring, "monitoring-listen", "127.0.0.1:15014", "where rampartd serves /metrics")
	f.DurationVar(&readyTimeout, "ready-timeout", 60*time.Second, "how long to wait for every sidecar to be SYNCED")
	f.DurationVar(&duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	return c
}

// mesh supervises the processes of a local mesh.
type mesh struct {
	bin      string
	out      io.Writer
	outMu    sync.Mutex
	mu       sync.Mutex
	procs    []*exec.Cmd
	stopping bool
	wg       sync.WaitGroup
	exited   chan string
}

// addressesFree checks, before anything starts, that every address the mesh
// will listen on is free: another mesh (a second 'rampartctl up') holding
// them would otherwise answer in this one's place.
func addressesFree(cpListen, monitoring string, plans []workloadPlan) error {
	type want struct{ addr, what string }
	ws := []want{{cpListen, "rampartd's --control-plane"}, {monitoring, "rampartd's --monitoring-listen"}}
	for _, p := range plans {
		ws = append(ws, want{net.JoinHostPort(p.Address, "15090"), p.Name + "'s sidecar metrics"})
		if p.Gateway {
			for _, port := range p.GatewayPorts {
				ws = append(ws, want{net.JoinHostPort(p.Address, fmt.Sprint(port)), p.Name + " gateway"})
			}
			continue
		}
		ws = append(ws, want{net.JoinHostPort(p.Address, "15001"), p.Name + "'s outbound listener"})
		if p.Port != 0 {
			ws = append(ws, want{net.JoinHostPort(p.Address, fmt.Sprint(p.Port)), p.Name + "'s inbound listener"})
		}
	}
	var taken []string
	for _, w := range ws {
		ln, err := net.Listen("tcp", w.addr)
		if err != nil {
			taken = append(taken, fmt.Sprintf("%s (%s)", w.addr, w.what))
			continue
		}
		ln.Close()
	}
	if len(taken) == 0 {
		return nil
	}
	if len(taken) > 4 {
		taken = append(taken[:4], fmt.Sprintf("and %d more", len(taken)-4))
	}
	return fmt.Errorf("these addresses are in use, so this mesh cannot start: %s\nis another 'rampartctl up' (or 'make demo') running? Stop it first; rampartd's own addresses can also be moved with --control-plane and --monitoring-listen",
		strings.Join(taken, ", "))
}

type upOptions struct {
	monitoring, meshConfig string
	sidecarArgs            []string
	decisionLogArgs        []string // for sidecars with --decision-log
}

func up(ctx context.Context, out io.Writer, dir, stateDir, bin, cpListen string, readyTimeout time.Duration, o upOptions) error {
	objs, err := source.ReadPaths([]string{dir})
	if err != nil {
		return err
	}
	plans, err := planMesh(objs)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if stateDir, err = filepath.Abs(stateDir); err != nil {
		return err
	}
	if err := addressesFree(cpListen, o.monitoring, plans); err != nil {
		return err
	}
	m := &mesh{bin: bin, out: out, exited: make(chan string, len(plans)*2+2)}
	defer m.stopAll()
	runDir := filepath.Join(stateDir, "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return err
	}
	fmt.Fprintf(out, "starting rampartd on %s (state in %s, config from %s)\n", cpListen, stateDir, absDir)
	cpArgs := []string{"rampartd", "--state-dir", stateDir, "--listen", cpListen, "--monitoring-listen", o.monitoring, "--config-dir", absDir}
	rootNS := ca.DefaultRootNamespace
	if o.meshConfig != "" {
		mc, err := filepath.Abs(o.meshConfig)
		if err != nil {
			return err
		}
		cpArgs = append(cpArgs, "--mesh-config", mc)
		// rampartd's CA must use the trust domain and root namespace the
		// policies are compiled with: the mesh config's, where it sets them.
		data, err := os.ReadFile(mc)
		if err != nil {
			return fmt.Errorf("--mesh-config: %w", err)
		}
		var set struct {
			TrustDomain   string `json:"trustDomain"`
			RootNamespace string `json:"rootNamespace"`
		}
		if err := yaml.Unmarshal(data, &set); err != nil {
			return fmt.Errorf("--mesh-config %s: %w", mc, err)
		}
		if set.TrustDomain != "" {
			cpArgs = append(cpArgs, "--trust-domain", set.TrustDomain)
		}
		if set.RootNamespace != "" {
			cpArgs = append(cpArgs, "--root-namespace", set.RootNamespace)
			rootNS = set.RootNamespace
		}
	}
	if err := m.supervise(ctx, "rampartd", cpArgs, nil); err != nil {
		return err
	}
	if err := waitUntil(ctx, 30*time.Second, m.exited, func() bool { return dialable(cpListen) }); err != nil {
		return fmt.Errorf("rampartd did not start on %s: %w", cpListen, err)
	}
	roots, err := ca.ReadRoots(stateDir)
	if err != nil {
		return err
	}
	rootFile := filepath.Join(runDir, "root.pem")
	if err := os.WriteFile(rootFile, ca.EncodeCertsPEM(roots), 0o600); err != nil {
		return err
	}
	tokens := jointoken.New(stateDir, nil, jointoken.WithRootNamespace(rootNS))
	for _, p := range plans {
		tok, err := tokens.Create(ca.Identity{Namespace: p.Namespace, ServiceAccount: p.ServiceAccount}, 10*time.Minute, false)
		if err != nil {
			return fmt.Errorf("join token for %s/%s: %w", p.Namespace, p.Name, err)
		}
		tokFile := filepath.Join(runDir, p.Name+".token")
		if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
			return err
		}
		labels := make([]string, 0, len(p.Labels))
		for k, v := range p.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		sock := filepath.Join(runDir, p.Name+".sock")
		// Its own data dir: started again with this command line, its
		// single-use token spent, the sidecar rejoins with the SVID kept there.
		dataDir := filepath.Join(stateDir, "sidecars", p.Namespace+"."+p.Name)
		args := []string{"rampart-sidecar", "--control-plane", cpListen, "--root-cert", rootFile, "--token-file", tokFile,
			"--data-dir", dataDir, "--workload", p.Namespace + "/" + p.Name, "--labels", strings.Join(labels, ","),
			"--metrics-listen", net.JoinHostPort(p.Address, "15090"), "--root-namespace", rootNS}
		if p.Gateway {
			for _, port := range p.GatewayPorts {
				args = append(args, "--gateway-listen", net.JoinHostPort(p.Address, fmt.Sprint(port)))
			}
			args = append(args, "--decision-log", filepath.Join(stateDir, "audit", p.Namespace+"."+p.Name+".log"))
		} else {
			appAddr, err := freeLoopback()
			if err != nil {
				return err
			}
			p.Env = withEnv(p.Env, "RAMPART_APP_ADDR", appAddr)
			p.Env = withEnv(p.Env, "HTTP_PROXY", "http://"+net.JoinHostPort(p.Address, "15001"))
			p.Env = withEnv(p.Env, "SPIFFE_ENDPOINT_SOCKET", "unix://"+sock)
			args = append(args, "--workload-api-socket", sock, "--outbound-listen", net.JoinHostPort(p.Address, "15001"))
			if p.Port != 0 { // a workload no service selects (a client) has no inbound
				switch {
				case p.Sniff:
					args = append(args, "--inbound-protocol", "auto")
				case p.TCP:
					args = append(args, "--inbound-protocol", "tcp")
				default:
					args = append(args, "--inbound-protocol", "http")
				}
				args = append(args, "--inbound-listen", net.JoinHostPort(p.Address, fmt.Sprint(p.Port)), "--app", appAddr,
					"--decision-log", filepath.Join(stateDir, "audit", p.Namespace+"."+p.Name+".log"))
			}
			plans[indexOf(plans, p)].Env = p.Env
		}
		if err := os.MkdirAll(filepath.Join(stateDir, "audit"), 0o700); err != nil {
			return err
		}
		if slices.Contains(args, "--decision-log") {
			args = append(args, o.decisionLogArgs...)
		}
		args = append(args, o.sidecarArgs...)
		if err := m.start(ctx, "sidecar/"+p.Name, args, nil); err != nil {
			return err
		}
		if !p.Gateway {
			if err := m.start(ctx, p.Name, p.Command, p.Env); err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(out, "waiting for %d sidecars to be SYNCED…\n", len(plans))
	if err := waitUntil(ctx, readyTimeout, m.exited, func() bool { return allSynced(ctx, stateDir, plans) }); err != nil {
		return fmt.Errorf("sidecars did not all sync: %w (see 'rampartctl proxy-status --state-dir %s')", err, stateDir)
	}
	// Every sidecar says it is ready: it has applied its policy and routes.
	if err := waitUntil(ctx, readyTimeout, m.exited, func() bool {
		for _, p := range plans {
			if !httpOK(ctx, "http://"+net.JoinHostPort(p.Address, "15090")+"/healthz/ready") {
				return false
			}
		}
		return true
	}); err != nil {
		return fmt.Errorf("sidecars did not become ready: %w", err)
	}
	// The apps behind inbound listeners must be listening too.
	if err := waitUntil(ctx, readyTimeout, m.exited, func() bool {
		for _, p := range plans {
			if p.Port != 0 && !p.Gateway && !dialable(p.Env["RAMPART_APP_ADDR"]) {
				return false
			}
		}
		return true
	}); err != nil {
		return fmt.Errorf("apps did not start listening: %w", err)
	}
	m.outMu.Lock()
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tSPIFFE ID\tINBOUND\tAPP")
	ingress := ""
	for _, p := range plans {
		id := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", p.Namespace, p.ServiceAccount)
		if p.Gateway {
			addr := net.JoinHostPort(p.Address, fmt.Sprint(p.GatewayPorts[0]))
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\t(gateway)\n", p.Namespace, p.Name, id, addr)
			if ingress == "" {
				ingress = "http://" + addr
			}
			continue
		}
		inbound := "(none: a client)"
		if p.Port != 0 {
			inbound = net.JoinHostPort(p.Address, fmt.Sprint(p.Port))
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\n", p.Namespace, p.Name, id, inbound, p.Env["RAMPART_APP_ADDR"])
	}
	_ = tw.Flush()
	if ingress != "" {
		fmt.Fprintf(out, "ingress: %s\n", ingress)
	}
	fmt.Fprintf(out, "mesh is up; Ctrl-C stops it. Edit %s and the change is live.\n", absDir)
	m.outMu.Unlock()
	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "stopping…")
		return nil
	case name := <-m.exited:
		return fmt.Errorf("%s exited; stopping the mesh", name)
	}
}

func indexOf(plans []workloadPlan, p workloadPlan) int {
	for i := range plans {
		if plans[i].Namespace == p.Namespace && plans[i].Name == p.Name {
			return i
		}
	}
	return -1
}

func withEnv(env map[string]string, k, v string) map[string]string {
	out := map[string]string{}
	for a, b := range env {
		out[a] = b
	}
	if _, set := out[k]; !set {
		out[k] = v
	}
	return out
}

func allSynced(ctx context.Context, stateDir string, plans []workloadPlan) bool {
	data, err := adminGet(ctx, stateDir, "/proxies")
	if err != nil {
		return false
	}
	var st []xds.ProxyStatus
	if json.Unmarshal(data, &st) != nil {
		return false
	}
	synced := map[string]bool{}
	for _, s := range st {
		if s.Status == "SYNCED" {
			synced[s.Workload] = true
		}
	}
	for _, p := range plans {
		if !synced[p.Namespace+"/"+p.Name] {
			return false
		}
	}
	return true
}

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

func freeLoopback() (string, error) { return freeport.Loopback() }

func waitUntil(ctx context.Context, d time.Duration, exited <-chan string, ok func() bool) error {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case name := <-exited:
			return fmt.Errorf("%s exited", name)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// start launches one process of the mesh; its output is prefixed with its name.
// It dies with 'up' (Pdeathsig) and runs in its own process group.
func (m *mesh) start(ctx context.Context, name string, argv []string, env map[string]string) error {
	return m.launch(ctx, name, argv, env, false)
}

// supervise starts a process that is restarted when it exits (rampartd: the
// data plane keeps its last good configuration meanwhile, and reconnects).
func (m *mesh) supervise(ctx context.Context, name string, argv []string, env map[string]string) error {
	return m.launch(ctx, name, argv, env, true)
}

func (m *mesh) launch(ctx context.Context, name string, argv []string, env map[string]string, restart bool) error {
	path := argv[0]
	if !strings.Contains(path, "/") {
		if p := filepath.Join(m.bin, path); isExecutable(p) {
			path = p
		} else if p, err := exec.LookPath(path); err == nil {
			path = p
		} else {
			return fmt.Errorf("%s: %q is neither in %s nor on PATH", name, argv[0], m.bin)
		}
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	m.mu.Lock()
	m.procs = append(m.procs, cmd)
	m.mu.Unlock()
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			m.outMu.Lock()
			fmt.Fprintf(m.out, "%-22s %s\n", name, compactLog(sc.Text()))
			m.outMu.Unlock()
		}
	}()
	go func() {
		defer m.wg.Done()
		err := cmd.Wait()
		pw.Close()
		m.mu.Lock()
		stopping := m.stopping
		m.mu.Unlock()
		if ctx.Err() != nil || stopping {
			return
		}
		m.outMu.Lock()
		fmt.Fprintf(m.out, "%-22s exited: %v\n", name, err)
		m.outMu.Unlock()
		if restart {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			m.mu.Lock()
			stopping = m.stopping
			m.mu.Unlock()
			if stopping {
				return
			}
			m.outMu.Lock()
			fmt.Fprintf(m.out, "%-22s restarting\n", name)
			m.outMu.Unlock()
			if err := m.launch(ctx, name, argv, env, true); err == nil {
				return
			}
		}
		m.exited <- name
	}()
	return nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// compactLog drops slog's time= field so the combined log stays readable.
func compactLog(line string) string {
	if strings.HasPrefix(line, "time=") {
		if i := strings.IndexByte(line, ' '); i > 0 {
			return line[i+1:]
		}
	}
	return line
}

// stopAll sends SIGTERM to every process group, then SIGKILL to what is left
// after five seconds, and waits for the log streams to drain.
func (m *mesh) stopAll() {
	m.mu.Lock()
	m.stopping = true
	procs := append([]*exec.Cmd(nil), m.procs...)
	m.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		if p := procs[i].Process; p != nil {
			_ = syscall.Kill(-p.Pid, syscall.SIGTERM)
		}
	}
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		for _, c := range procs {
			if p := c.Process; p != nil {
				_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
			}
		}
		<-done
	}
}

func httpOK(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
