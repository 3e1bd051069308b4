package bench

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"crypto/sha256"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/rampart-mesh/rampart/test/internal/procs"
	"os"
)

// policySet writes n AuthorizationPolicies for workload foo/httpbin: each ALLOWs
// one caller on its own path prefix and methods, and every tenth is a DENY on an
// admin path, the shape of a large multi-tenant service.
func policySet(n int) []source.Object {
	var objs []source.Object
	for i := range n {
		y := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tenant-%d, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/tenant-%d/sa/client"]}}]
    to: [{operation: {methods: ["GET", "POST"], paths: ["/api/tenant-%d/*"]}}]
`, i, i, i)
		if i%10 == 9 {
			y = fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-%d, namespace: foo}
spec:
  action: DENY
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {notNamespaces: ["tenant-%d"]}}]
    to: [{operation: {paths: ["/admin/tenant-%d/*"]}}]
`, i, i, i)
		}
		o, err := source.Parse("bench.yaml", []byte(y))
		if err != nil {
			panic(err)
		}
		objs = append(objs, o...)
	}
	return objs
}

func benchEngine(b *testing.B, n int) *authz.Engine {
	b.Helper()
	mesh, _ := compile.Mesh{}.WithDefaults()
	out, findings := offline.Compile(policySet(n), mesh, compile.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}})
	for _, f := range findings {
		if f.Severity == compile.SeverityError {
			b.Fatalf("benchmark policies are invalid: %s", f)
		}
	}
	eng := authz.New(authz.Config{})
	if err := eng.Load(context.Background(), offline.Bundle(out, mesh, nil)); err != nil {
		b.Fatal(err)
	}
	return eng
}

// BenchmarkAuthzDecision measures one authorization decision in the sidecar's
// engine with n policies on the workload, and reports p50/p99 and RSS. Every
// request has its own x-request-id. With cache=miss every request also has its
// own path, so each one is evaluated by OPA; with cache=hit the same caller
// asks for the same path again, as repeated calls do, and the engine answers
// from its verdict cache.
func BenchmarkAuthzDecision(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 10000} {
		for _, mode := range []string{"miss", "hit"} {
			b.Run(fmt.Sprintf("policies=%d/cache=%s", n, mode), func(b *testing.B) { benchDecision(b, n, mode == "miss") })
		}
	}
}

func benchDecision(b *testing.B, n int, miss bool) {
	eng := benchEngine(b, n)
	k := n / 2
	if k%10 == 9 {
		k--
	}
	req := func(i int) *authz.Request {
		path := fmt.Sprintf("/api/tenant-%d/items?page=2", k)
		if miss {
			path = fmt.Sprintf("/api/tenant-%d/items/%d?page=2", k, i)
		}
		return &authz.Request{
			Protocol: authz.ProtocolHTTP, SourcePrincipal: fmt.Sprintf("spiffe://cluster.local/ns/tenant-%d/sa/client", k),
			SourceIP: "10.0.0.9", DestinationIP: "10.0.0.5", DestinationPort: 8000,
			Method: "GET", Host: "httpbin.foo:8000", Path: path,
			Headers:  []authz.Header{{Name: "user-agent", Value: "bench"}, {Name: "x-request-id", Value: fmt.Sprintf("req-%d", i)}},
			Workload: authz.Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}},
		}
	}
	ctx := context.Background()
	if d := eng.Decide(ctx, req(-1)); !d.Allowed || d.Policy != fmt.Sprintf("foo/tenant-%d", k) {
		b.Fatalf("decision = %+v; the benchmark request must be allowed by foo/tenant-%d", d, k)
	}
	// What the engine holds: everything else built for the benchmark is garbage now.
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := procs.RSS(os.Getpid())
	// The requests' paths and ids are made before the loop; the requests
	// themselves come from a small ring, so the benchmark's own live heap
	// stays small and its collections look like a sidecar's.
	paths, ids := make([]string, b.N), make([]string, b.N)
	for i := range b.N {
		r := req(i)
		paths[i], ids[i] = r.Path, r.Headers[1].Value
	}
	var ring [64]*authz.Request
	for i := range ring {
		ring[i] = req(i)
	}
	// A sidecar decides at steady state: its heap has been through garbage
	// collections and its pages are mapped. FreeOSMemory above gave every free
	// page back, and on this VM each page touched again costs a fault of about
	// 20 µs, which would land in the timed loop as a periodic stall that no
	// running sidecar sees. So decisions of the same shape (their own paths and
	// ids, not the timed ones) run first until two collections have passed.
	warm(b, eng, func(i int) *authz.Request { return req(b.N + i) })
	h0, m0 := eng.CacheStats()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r := ring[i%len(ring)]
		r.Path, r.Headers[1].Value = paths[i], ids[i]
		t0 := time.Now()
		d := eng.Decide(ctx, r)
		lat = append(lat, time.Since(t0))
		if !d.Allowed {
			b.Fatal("denied")
		}
	}
	b.StopTimer()
	h1, m1 := eng.CacheStats()
	if hits := h1 - h0; miss && hits != 0 || !miss && m1 != m0 {
		b.Fatalf("cache hits %d, misses %d: not the case this benchmark measures", hits, m1-m0)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	// Reported after the loop: ResetTimer clears metrics reported before it.
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MB-heap")
	b.ReportMetric(float64(rss)/(1<<20), "MB-rss")
}

// warm runs decisions until two garbage collections have passed (at most
// 1,000,000 decisions or 5 s).
func warm(b *testing.B, eng *authz.Engine, req func(int) *authz.Request) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gc0, deadline := ms.NumGC, time.Now().Add(5*time.Second)
	ctx := context.Background()
	for i := 0; i < 1_000_000; i++ {
		if i%1000 == 0 {
			runtime.ReadMemStats(&ms)
			if ms.NumGC >= gc0+2 || time.Now().After(deadline) {
				return
			}
		}
		if d := eng.Decide(ctx, req(i)); !d.Allowed {
			b.Fatal("denied while warming up")
		}
	}
}

// BenchmarkOPAFloor is the reference point for BenchmarkAuthzDecision on this
// machine: one prepared evaluation of a constant rule, the least any OPA-based
// decision costs here.
func BenchmarkOPAFloor(b *testing.B) {
	pq, err := rego.New(rego.Query("data.x.y"), rego.Module("x.rego", "package x\n\ny := 1\n")).PrepareForEval(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	in := ast.NewObject()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := pq.Eval(context.Background(), rego.EvalParsedInput(in)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkMachineFloor is the other reference point: a fixed piece of CPU
// work with no allocation and no system call (SHA-256 over 16 KiB, about as
// long as a first-seen decision's median), timed the same way. Its p99 is
// what this machine adds by itself: on a 2-CPU VM each timer tick or
// hypervisor exit stalls the running thread for 20-30 µs, so any operation
// of about 10 µs has a p99 above 20 µs here, whatever it does.
func BenchmarkMachineFloor(b *testing.B) {
	buf := make([]byte, 16<<10)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		sum := sha256.Sum256(buf)
		buf[0] = sum[0]
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}
