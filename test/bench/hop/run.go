package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// env is what every setup shares.
type env struct {
	o           options
	tools       tools
	dir         string // the work directory
	exe         string // this binary, which is also the backend
	pki         pkiFiles
	iss         issuer
	backend     *proc // the backend of the direct and reference setups
	backendAddr string
	budget      time.Duration // what is left of options.budget
}

// measured is one process (or a master and its workers) whose CPU time and
// memory are read.
type measured struct {
	name string
	pids []int
}

// denyCheck is a request a setup must refuse with a given status.
type denyCheck struct {
	name    string
	headers []string // replacing the target's Authorization header
	want    int
}

// target is a running setup: where the load goes and what to measure.
type target struct {
	url        string
	headers    []string   // "Name: value", sent with every request
	proxies    []measured // the pair, client side first
	others     []measured // the rest of the path, for the CPU breakdown
	mtlsAddr   string     // proxy B's listener, which must refuse plaintext and certificate-less TLS
	denyChecks []denyCheck
	procs      []*proc
	stopGrace  time.Duration
	logs       []string
	stateDir   string // Rampart's: no process may mention it once stopped

	pprof map[string]string // name → a proxy's CPU profile URL (with -profile)

	firstCode int // what the first request got, when it was not a 200
	firstBody string
}

func (t *target) stop() {
	for i := len(t.procs) - 1; i >= 0; i-- {
		t.procs[i].terminate(t.stopGrace)
	}
	if t.stateDir != "" {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) && len(findProcsMentioning(t.stateDir)) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if left := findProcsMentioning(t.stateDir); len(left) > 0 {
			progress("warning: processes of %s still running after rampartctl up stopped: %v; killing them", t.stateDir, left)
			for _, p := range left {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	}
}

func findProcsMentioning(s string) []int {
	var out []int
	for _, p := range allPIDs() {
		if strings.Contains(strings.Join(cmdline(p), " "), s) {
			out = append(out, p)
		}
	}
	return out
}

// setup is one way to get from the load generator to the backend.
type setup struct {
	name  string
	label string
	start func(ctx context.Context, e *env, dir string) (*target, error)
}

func setups() []setup {
	return []setup{
		{"direct", "direct (absolute)", func(_ context.Context, e *env, _ string) (*target, error) {
			return &target{url: "http://" + e.backendAddr + "/", others: []measured{{"backend", []int{e.backend.pid()}}}}, nil
		}},
		{"rampart-mtls", "rampart mTLS", func(ctx context.Context, e *env, dir string) (*target, error) {
			return startRampart(ctx, e, dir, "127.0.20.1", "127.0.20.2", false)
		}},
		{"rampart-authz-jwt", "rampart mTLS+authz+JWT", func(ctx context.Context, e *env, dir string) (*target, error) {
			return startRampart(ctx, e, dir, "127.0.21.1", "127.0.21.2", true)
		}},
		{"nginx", "nginx mTLS", startNginx},
		{"haproxy", "haproxy mTLS", startHAProxy},
	}
}

func setupNames() []string {
	var out []string
	for _, s := range setups() {
		out = append(out, s.name)
	}
	return out
}

// result is what one setup measured.
type result struct {
	Setup       string       `json:"setup"`
	Label       string       `json:"label"`
	Error       string       `json:"error,omitempty"`
	Latency     []latency    `json:"latency"`
	SatRPS      float64      `json:"saturation_rps"`
	SatRequests int64        `json:"saturation_requests"`
	Proxies     []procResult `json:"proxies"`
	// Others: the backend and, for Rampart, rampartd and `rampartctl up`
	// (which relays every sidecar's log lines), at saturation.
	Others []procResult `json:"others"`
	// MachineCPUPer1k is all CPU time spent on the machine per 1,000
	// requests at saturation; MachineBusy the share of both cores in use.
	MachineCPUPer1k float64 `json:"machine_cpu_ms_per_1k"`
	MachineBusy     float64 `json:"machine_busy"`
	// ForeignMax is the largest share of the machine that processes
	// outside the benchmark used during one of the runs.
	ForeignMax float64  `json:"foreign_cpu_max"`
	Warnings   []string `json:"warnings,omitempty"`
}

// procResult is one process's cost: CPU ms per 1,000 requests at saturation
// and resident memory idle (before any load) and at most under load.
type procResult struct {
	Name      string  `json:"name"`
	CPUPer1k  float64 `json:"cpu_ms_per_1k"`
	RSSIdleMB float64 `json:"rss_idle_mb,omitempty"`
	RSSLoadMB float64 `json:"rss_load_mb,omitempty"`
}

// runSetup starts a setup, checks it, measures it and stops it.
func runSetup(ctx context.Context, e *env, s setup) (r result) {
	r = result{Setup: s.name, Label: s.label}
	dir := filepath.Join(e.dir, s.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.Error = err.Error()
		return r
	}
	progress("%s: starting", s.label)
	t, err := s.start(ctx, e, dir)
	if t != nil {
		defer func() {
			progress("%s: stopping", s.label)
			t.stop()
		}()
	}
	if err == nil {
		err = measure(ctx, e, t, dir, &r)
	}
	if err != nil {
		r.Error = err.Error()
		if t != nil {
			for _, l := range t.logs {
				r.Error += fmt.Sprintf("\n--- %s (last lines other than access logs) ---\n%s", l, interestingLines(l, 40))
			}
		}
		progress("%s: FAILED: %s", s.label, r.Error)
	}
	return r
}

// run is the whole benchmark.
func run(ctx context.Context, o options) (err error) {
	dir, err := os.MkdirTemp("", "rampart-hop-")
	if err != nil {
		return err
	}
	failed := true
	defer func() {
		if failed || o.keep {
			progress("work directory kept: %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}()
	t, err := ensureTools(ctx, o.tools)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	e := &env{o: o, tools: t, dir: dir, exe: exe, budget: o.budget}
	if e.pki, err = writePKI(filepath.Join(dir, "pki")); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	if e.iss, err = newIssuer(); err != nil {
		return fmt.Errorf("jwt issuer: %w", err)
	}
	if e.backendAddr, err = freeAddr(); err != nil {
		return err
	}
	e.backend, err = startProc("backend", filepath.Join(dir, "backend.log"), syscall.SIGTERM, nil, exe, "backend", "--listen", e.backendAddr, "--tag", dir)
	if err != nil {
		return err
	}
	defer e.backend.terminate(5 * time.Second)
	if _, err := waitServing(ctx, e.backend, e.backendAddr, 1); err != nil {
		return err
	}
	progress("backend (%d-byte responses) on %s; work directory %s", bodySize, e.backendAddr, dir)

	byName := map[string]setup{}
	for _, s := range setups() {
		byName[s.name] = s
	}
	var results []result
	for _, name := range o.setups {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r := runSetup(ctx, e, byName[name])
		results = append(results, r)
		if name == "direct" && r.Error != "" {
			return errors.New("the direct setup failed; nothing to compare with")
		}
	}
	addOverDirect(results)
	rep := newReport(o, results)
	rep.print(os.Stdout)
	if o.jsonOut != "" {
		if err := rep.writeJSON(o.jsonOut); err != nil {
			return err
		}
		progress("results written to %s", o.jsonOut)
	}
	var failures []string
	for _, r := range results {
		if r.Error != "" {
			failures = append(failures, r.Label)
		}
	}
	if len(failures) > 0 {
		return fmt.Errorf("setups failed: %s (details above)", strings.Join(failures, ", "))
	}
	failed = false
	if o.strict && rep.missed() {
		return errTargetsMissed
	}
	return nil
}

var errTargetsMissed = errors.New("targets missed (see the verdict)")
