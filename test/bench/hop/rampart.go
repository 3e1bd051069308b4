package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The Rampart pair's registry: a client workload with no service of its own,
// whose sidecar's outbound listener the load generator sends to, and the
// backend workload behind its sidecar's inbound listener.
const (
	meshService = "backend" // backend.default.svc.cluster.local
	meshPort    = 80
	clientSA    = "bench-client"
	backendSA   = "bench-backend"
)

// meshYAML is the DIR given to `rampartctl up`: the registry, the processes
// and STRICT mTLS; with authz, an ALLOW policy for the client's principal and
// the token's request principal, and a RequestAuthentication with an inline
// JWKS, so that every request is verified and authorized.
func meshYAML(clientIP, serverIP, exe, tag string, authz bool, iss issuer) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %[1]s}
spec:
  hosts: [%[1]s.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: %[2]d, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: %[1]s}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: %[1]s}
spec: {address: %[3]s, labels: {app: %[1]s}, serviceAccount: %[4]s}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client}
spec: {address: %[5]s, labels: {app: client}, serviceAccount: %[6]s}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: %[1]s}
spec: {command: [%[7]s, backend, --tag, %[8]s]}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: client}
spec: {command: [sleep, infinity]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: rampart-system}
spec: {mtls: {mode: STRICT}}
`, meshService, meshPort, serverIP, backendSA, clientIP, clientSA, q(exe), q(tag))
	if authz {
		fmt.Fprintf(&b, `---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: %[1]s-jwt}
spec:
  selector: {matchLabels: {app: %[1]s}}
  jwtRules:
  - issuer: %[2]s
    audiences: [%[1]s]
    jwks: %[3]s
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %[1]s-allow}
spec:
  selector: {matchLabels: {app: %[1]s}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/%[4]s]
        requestPrincipals: [%[5]s]
    to: [{operation: {methods: [GET]}}]
`, meshService, jwtIssuer, q(iss.JWKS), clientSA, q(jwtIssuer+"/"+jwtSubject))
	}
	if h2Upgrade {
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: %[1]s-h2}
spec:
  host: %[1]s.default.svc.cluster.local
  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
`, meshService)
	}
	return b.String()
}

// h2Upgrade makes the sidecars carry HTTP/1.1 between them as HTTP/2 (-h2-upgrade).
var h2Upgrade bool

// startRampart runs `rampartctl up` on a generated DIR and waits for the mesh.
// The returned target is non-nil whenever something was started, so that the
// caller can stop it.
func startRampart(ctx context.Context, e *env, dir, clientIP, serverIP string, authz bool) (*target, error) {
	cfgDir, state := filepath.Join(dir, "mesh"), filepath.Join(dir, "state")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		return nil, err
	}
	y := meshYAML(clientIP, serverIP, e.exe, state, authz, e.iss)
	if err := os.WriteFile(filepath.Join(cfgDir, "mesh.yaml"), []byte(y), 0o644); err != nil {
		return nil, err
	}
	for _, a := range []string{net.JoinHostPort(serverIP, fmt.Sprint(meshPort)), net.JoinHostPort(clientIP, "15001")} {
		if err := bindable(a); err != nil {
			return nil, fmt.Errorf("%s is taken (%w); stop what listens there", a, err)
		}
	}
	cp, err := freeAddr()
	if err != nil {
		return nil, err
	}
	mon, err := freeAddr()
	if err != nil {
		return nil, err
	}
	upLog := filepath.Join(dir, "up.log")
	args := []string{filepath.Join(e.o.bin, "rampartctl"), "up", cfgDir,
		"--bin", e.o.bin, "--state-dir", state, "--control-plane", cp, "--monitoring-listen", mon}
	if e.o.profile {
		args = append(args, "--sidecar-arg=--pprof")
	}
	for _, a := range e.o.sidecarArg {
		args = append(args, "--sidecar-arg="+a)
	}
	up, err := startProc("rampartctl up", upLog, syscall.SIGINT, nil, args...)
	if err != nil {
		return nil, err
	}
	t := &target{
		url:   "http://" + net.JoinHostPort(clientIP, "15001") + "/",
		procs: []*proc{up}, stopGrace: 20 * time.Second, logs: []string{upLog}, stateDir: state,
		headers: []string{fmt.Sprintf("Host: %s:%d", meshService, meshPort)},
	}
	if authz {
		t.headers = append(t.headers, "Authorization: Bearer "+e.iss.Token)
		// For reproducing by hand: curl -H "Authorization: Bearer $(cat token.jwt)" …
		if err := os.WriteFile(filepath.Join(dir, "token.jwt"), []byte(e.iss.Token), 0o600); err != nil {
			return t, err
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		data, _ := os.ReadFile(upLog)
		if strings.Contains(string(data), "mesh is up") {
			break
		}
		if done, err := up.exited(); done {
			return t, fmt.Errorf("rampartctl up exited (%v) before the mesh was up", err)
		}
		if time.Now().After(deadline) {
			return t, fmt.Errorf("no 'mesh is up' from rampartctl up within 90s")
		}
		select {
		case <-ctx.Done():
			return t, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	one := func(what, prog string, words ...string) ([]int, error) {
		pids := findProcs(prog, words...)
		if len(pids) != 1 {
			return nil, fmt.Errorf("%s: found %d processes of %s with %q in their command line, want 1", what, len(pids), prog, words)
		}
		return pids, nil
	}
	client, err := one("client sidecar", "rampart-sidecar", state, "--workload default/client ")
	if err != nil {
		return t, err
	}
	server, err := one("backend sidecar", "rampart-sidecar", state, "--workload default/"+meshService+" ")
	if err != nil {
		return t, err
	}
	rampartd, err := one("rampartd", "rampartd", state)
	if err != nil {
		return t, err
	}
	backend, err := one("backend", filepath.Base(e.exe), "backend", "--tag "+state)
	if err != nil {
		return t, err
	}
	t.proxies = []measured{{"client sidecar", client}, {"backend sidecar", server}}
	if e.o.profile { // up gives each sidecar --metrics-listen ADDRESS:15090
		t.pprof = map[string]string{
			"client-sidecar":  "http://" + net.JoinHostPort(clientIP, "15090") + "/debug/pprof/profile",
			"backend-sidecar": "http://" + net.JoinHostPort(serverIP, "15090") + "/debug/pprof/profile",
		}
	}
	t.others = []measured{{"backend", backend}, {"rampartd", rampartd}, {"rampartctl up (log relay)", []int{up.pid()}}}
	t.mtlsAddr = net.JoinHostPort(serverIP, fmt.Sprint(meshPort))
	if authz {
		t.denyChecks = []denyCheck{
			{"no token", nil, 403},
			{"a token signed by another key", []string{"Authorization: Bearer " + forgedToken(e.iss.Token)}, 401},
		}
	}
	return t, nil
}

// forgedToken keeps a token's header and claims and breaks its signature.
func forgedToken(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	sig := []byte(tok[i+1:])
	if sig[0] == 'A' {
		sig[0] = 'B'
	} else {
		sig[0] = 'A'
	}
	return tok[:i+1] + string(sig)
}

// bindable reports whether addr can be listened on now.
func bindable(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return l.Close()
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
