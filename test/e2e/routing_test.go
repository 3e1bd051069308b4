package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/echo"
	"github.com/rampart-mesh/rampart/test/internal/procs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// The routing mesh's workloads: a client with no service, two versions of an
// HTTP echo service and a TCP echo, each at its own loopback address.
const (
	routingClient = "127.0.31.1"
	routingV1     = "127.0.31.2"
	routingV2     = "127.0.31.3"
	routingTCP    = "127.0.31.4"
)

// routingConfig is the mesh: services echo (both versions), cb and grpc-echo
// (v1 only), od (both versions) on port 8000, and tcp-echo on 9000; STRICT
// mTLS; the routing under test. %[1]s is the echo binary, %[2]s and %[3]s
// the control addresses of echo-v1 and echo-v2.
const routingConfig = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cb}
spec:
  hosts: [cb.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: echo, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: od}
spec:
  hosts: [od.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc-echo}
spec:
  hosts: [grpc-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: grpc, protocol: GRPC}]
  workloadSelector: {labels: {app: echo, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: tcp-echo, protocol: TCP}]
  workloadSelector: {labels: {app: tcp-echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client}
spec: {address: 127.0.31.1, labels: {app: client}, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1}
spec: {address: 127.0.31.2, labels: {app: echo, version: v1}, serviceAccount: echo}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v2}
spec: {address: 127.0.31.3, labels: {app: echo, version: v2}, serviceAccount: echo}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: tcp-echo}
spec: {address: 127.0.31.4, labels: {app: tcp-echo}, serviceAccount: tcp-echo}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: client}
spec: {command: [sleep, infinity]}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: echo-v1}
spec: {command: [%[1]s, --name, echo-v1, --control, "%[2]s"]}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: echo-v2}
spec: {command: [%[1]s, --name, echo-v2, --control, "%[3]s"]}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: tcp-echo}
spec: {command: [%[1]s, --name, tcp-echo, --tcp]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: rampart-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /split}}]
    route:
    - {destination: {host: echo, subset: v1}, weight: 90}
    - {destination: {host: echo, subset: v2}, weight: 10}
  - match: [{uri: {prefix: /retry}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /pertry}}]
    timeout: 10s
    retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: 5xx}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 0.3s, percentage: {value: 50}}}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /mirror}}]
    route: [{destination: {host: echo, subset: v1}}]
    mirror: {host: echo, subset: v2}
    mirrorPercentage: {value: 100}
  - route: [{destination: {host: echo, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cb}
spec:
  host: cb
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: od}
spec:
  host: od
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}
---
# No retries to od, so the client sees each 503 the outlier detector counts.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: od}
spec:
  hosts: [od]
  http: [{retries: {attempts: 0}, route: [{destination: {host: od}}]}]
`

// routingMesh is the running mesh as the tests use it.
type routingMesh struct {
	http    *http.Client      // through the client's sidecar (HTTP proxy)
	control map[string]string // echo name → control address
}

// startRoutingMesh builds the echo backend, writes the mesh's configuration
// and runs it with 'rampartctl up' until the test ends.
func startRoutingMesh(t *testing.T) *routingMesh {
	t.Helper()
	dir := procs.ShortTempDir(t)
	echoBin := filepath.Join(dir, "echo")
	build := exec.Command("go", "build", "-o", echoBin, "github.com/rampart-mesh/rampart/test/internal/echo/cmd/echo")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build echo: %v\n%s", err, out)
	}
	m := &routingMesh{control: map[string]string{"echo-v1": procs.FreeAddr(t), "echo-v2": procs.FreeAddr(t)}}
	cfg := filepath.Join(dir, "mesh")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(routingConfig, echoBin, m.control["echo-v1"], m.control["echo-v2"])
	if err := os.WriteFile(filepath.Join(cfg, "mesh.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	up := procs.Start(t, dir, "up", "rampartctl", "up", cfg, "--state-dir", filepath.Join(dir, "state"), "--bin", procs.BinDir(t),
		"--control-plane", procs.FreeAddr(t), "--monitoring-listen", procs.FreeAddr(t))
	up.WaitLog(t, "mesh is up", 90*time.Second)
	proxyURL, _ := url.Parse("http://" + net.JoinHostPort(routingClient, "15001"))
	m.http = &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 32},
		Timeout:   15 * time.Second,
	}
	// SYNCED means the client's sidecar has the routes; wait for the first answer anyway.
	procs.Eventually(t, 20*time.Second, "echo answering through the client's sidecar", func() bool {
		return m.get(t, "http://echo:8000/").name == "echo-v1"
	})
	return m
}

// answer is one response as the client saw it.
type answer struct {
	code    int
	name    string // x-echo-name: who answered
	attempt string // x-echo-attempt
	flags   string // x-rampart-response-flags: the sidecar's own reply
	body    string
	took    time.Duration
	err     error
}

func (m *routingMesh) get(t *testing.T, u string, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return answer{err: err}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	start := time.Now()
	resp, err := m.http.Do(req)
	if err != nil {
		return answer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, name: resp.Header.Get("x-echo-name"), attempt: resp.Header.Get("x-echo-attempt"),
		flags: resp.Header.Get("x-rampart-response-flags"), body: string(b), took: time.Since(start), err: err}
}

// getMany sends n requests, conc at a time, and returns the answers in order.
func (m *routingMesh) getMany(t *testing.T, u string, n, conc int) []answer {
	t.Helper()
	out := make([]answer, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range conc {
		wg.Go(func() {
			for i := range next {
				out[i] = m.get(t, u)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

func (m *routingMesh) stats(t *testing.T, name string) echo.Stats {
	t.Helper()
	var st echo.Stats
	m.controlJSON(t, name, "/stats", &st)
	return st
}

func (m *routingMesh) seen(t *testing.T, name, id string) []echo.Seen {
	t.Helper()
	var seen []echo.Seen
	m.controlJSON(t, name, "/seen?id="+url.QueryEscape(id), &seen)
	return seen
}

func (m *routingMesh) controlJSON(t *testing.T, name, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + m.control[name] + path)
	if err != nil {
		t.Fatalf("%s control %s: %v", name, path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s control %s: %v", name, path, err)
	}
}

// sick makes an echo answer 503 to everything (or stop).
func (m *routingMesh) sick(t *testing.T, name string, on bool) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://%s/sick?on=%t", m.control[name], on), "", nil)
	if err != nil {
		t.Fatalf("%s sick=%t: %v", name, on, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("%s sick=%t: %s", name, on, resp.Status)
	}
}

// TestRouting drives the data plane through two sidecars on real sockets: the
// client's outbound path, mTLS between the sidecars, the server's inbound path
// and the app, with the routing of VirtualServices and DestinationRules.
func TestRouting(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole mesh")
	}
	m := startRoutingMesh(t)

	t.Run("strict mTLS between the sidecars", func(t *testing.T) {
		// What the tests below send crosses an mTLS hop: the servers' sidecars
		// refuse plaintext on the service ports.
		plain := &http.Client{Timeout: 5 * time.Second}
		resp, err := plain.Get("http://" + net.JoinHostPort(routingV1, "8000") + "/")
		if err == nil {
			if name := resp.Header.Get("x-echo-name"); name != "" || resp.StatusCode == http.StatusOK {
				t.Errorf("plaintext to echo-v1's sidecar: %s from %q, want refused", resp.Status, name)
			}
			resp.Body.Close()
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort(routingTCP, "9000"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := "plaintext hello\n"
		_, _ = io.WriteString(c, msg)
		got, _ := io.ReadAll(c)
		if strings.Contains(string(got), msg) {
			t.Errorf("plaintext to tcp-echo's sidecar was echoed: %q", got)
		}
	})

	t.Run("weighted split 90/10", func(t *testing.T) {
		const n = 2000
		answers := m.getMany(t, "http://echo:8000/split", n, 8)
		count := map[string]int{}
		for _, a := range answers {
			if a.err != nil || a.code != http.StatusOK {
				t.Fatalf("split: %d %v %s", a.code, a.err, a.body)
			}
			count[a.name]++
		}
		v1 := float64(count["echo-v1"]) / n * 100
		t.Logf("split over %d requests: echo-v1 %.1f%%, echo-v2 %.1f%%", n, v1, float64(count["echo-v2"])/n*100)
		if count["echo-v1"]+count["echo-v2"] != n || v1 < 87 || v1 > 93 {
			t.Errorf("split = %v, want echo-v1 at 90%% ± 3 and the rest echo-v2", count)
		}
		// The backends agree with the client.
		if got := m.stats(t, "echo-v1").Requests["/split"]; got != count["echo-v1"] {
			t.Errorf("echo-v1 counted %d /split requests, the client %d", got, count["echo-v1"])
		}
		if got := m.stats(t, "echo-v2").Requests["/split"]; got != count["echo-v2"] {
			t.Errorf("echo-v2 counted %d /split requests, the client %d", got, count["echo-v2"])
		}
	})

	t.Run("retry on 503 then success", func(t *testing.T) {
		// The first attempt of the request fails with 503; the retry succeeds.
		a := m.get(t, "http://echo:8000/retry?fail=1", "x-request-id", "retry-once")
		if a.err != nil || a.code != http.StatusOK || a.attempt != "2" {
			t.Errorf("fail once: %d attempt %q %v, want 200 on attempt 2", a.code, a.attempt, a.err)
		}
		if got := statuses(m.seen(t, "echo-v1", "retry-once")); !slices.Equal(got, []int{503, 200}) {
			t.Errorf("echo-v1 saw attempts %v, want [503 200]", got)
		}
		// attempts: 3 is three retries: four attempts, then the last 503 is the answer.
		a = m.get(t, "http://echo:8000/retry?fail=100", "x-request-id", "retry-always")
		if a.err != nil || a.code != http.StatusServiceUnavailable || a.attempt != "4" {
			t.Errorf("always failing: %d attempt %q %v, want 503 from attempt 4", a.code, a.attempt, a.err)
		}
		if got := statuses(m.seen(t, "echo-v1", "retry-always")); !slices.Equal(got, []int{503, 503, 503, 503}) {
			t.Errorf("echo-v1 saw attempts %v, want four 503s", got)
		}
	})

	t.Run("per-try timeout", func(t *testing.T) {
		// The first attempt hangs for 3 s; perTryTimeout 0.3s cuts it and the retry answers.
		a := m.get(t, "http://echo:8000/pertry?sleep=3s&sleepn=1", "x-request-id", "pertry-once")
		t.Logf("slow first attempt: %d after %s", a.code, a.took.Round(time.Millisecond))
		if a.err != nil || a.code != http.StatusOK || a.attempt != "2" {
			t.Errorf("slow first attempt: %d attempt %q %v, want 200 on attempt 2", a.code, a.attempt, a.err)
		}
		if a.took < 300*time.Millisecond || a.took > 2*time.Second {
			t.Errorf("slow first attempt answered after %s, want between the per-try timeout (300ms) and 2s (well before the 3s hang)", a.took)
		}
		// Every attempt hangs: three attempts of 0.3 s, then 504 UT, and URX:
		// the last would have been retried, had a retry been left.
		a = m.get(t, "http://echo:8000/pertry?sleep=3s", "x-request-id", "pertry-always")
		t.Logf("every attempt slow: %d %s after %s", a.code, a.flags, a.took.Round(time.Millisecond))
		if a.err != nil || a.code != http.StatusGatewayTimeout || a.flags != "UT,URX" {
			t.Errorf("every attempt slow: %d flags %q %v, want 504 UT,URX", a.code, a.flags, a.err)
		}
		if a.took < 900*time.Millisecond || a.took > 2500*time.Millisecond {
			t.Errorf("every attempt slow: answered after %s, want about 3 × 300ms", a.took)
		}
		if got := len(m.seen(t, "echo-v1", "pertry-always")); got != 3 {
			t.Errorf("echo-v1 saw %d attempts, want 3 (attempts: 2 is two retries)", got)
		}
	})

	t.Run("fault delay at its percentage", func(t *testing.T) {
		const n = 600
		answers := m.getMany(t, "http://echo:8000/delay", n, 30)
		delayed := 0
		var slow, fast []time.Duration
		for _, a := range answers {
			if a.err != nil || a.code != http.StatusOK || a.name != "echo-v1" {
				t.Fatalf("delay: %d from %q %v", a.code, a.name, a.err)
			}
			if a.took >= 300*time.Millisecond {
				delayed++
				slow = append(slow, a.took)
			} else {
				fast = append(fast, a.took)
			}
		}
		pct := float64(delayed) / n * 100
		t.Logf("fault delay 300ms at 50%%: %.1f%% of %d requests took ≥ 300ms (median %s; the others median %s)",
			pct, n, median(slow).Round(time.Millisecond), median(fast).Round(time.Millisecond))
		if pct < 40 || pct > 60 {
			t.Errorf("%.1f%% of requests delayed, want 50%% ± 10", pct)
		}
		if d := median(slow); d > 800*time.Millisecond {
			t.Errorf("delayed requests took %s (median), want about 300ms", d)
		}
	})

	t.Run("fault abort at its percentage", func(t *testing.T) {
		const n = 400
		answers := m.getMany(t, "http://echo:8000/abort", n, 20)
		aborted, passed := 0, 0
		for _, a := range answers {
			switch {
			case a.err != nil:
				t.Fatalf("abort: %v", a.err)
			case a.code == http.StatusServiceUnavailable && a.name == "" && strings.Contains(a.body, "fault filter abort"):
				aborted++
			case a.code == http.StatusOK && a.name == "echo-v1":
				passed++
			default:
				t.Fatalf("abort: %d from %q: %s", a.code, a.name, a.body)
			}
		}
		pct := float64(aborted) / n * 100
		t.Logf("fault abort 503 at 50%%: %.1f%% of %d requests aborted", pct, n)
		if pct < 40 || pct > 60 {
			t.Errorf("%.1f%% of requests aborted, want 50%% ± 10", pct)
		}
		// An aborted request never leaves the client's sidecar.
		if got := m.stats(t, "echo-v1").Requests["/abort"]; got != passed {
			t.Errorf("echo-v1 got %d /abort requests, want the %d that were not aborted", got, passed)
		}
	})

	t.Run("mirror gets a copy, the client only the primary", func(t *testing.T) {
		// The mirror answers 503 to everything: the client must not notice.
		m.sick(t, "echo-v2", true)
		t.Cleanup(func() { m.sick(t, "echo-v2", false) })
		const n = 20
		for i := range n {
			id := fmt.Sprintf("mirror-%d", i)
			a := m.get(t, "http://echo:8000/mirror", "x-request-id", id)
			if a.err != nil || a.code != http.StatusOK || a.name != "echo-v1" {
				t.Fatalf("%s: %d from %q %v, want 200 from echo-v1", id, a.code, a.name, a.err)
			}
		}
		for i := range n {
			id := fmt.Sprintf("mirror-%d", i)
			var shadow []echo.Seen
			procs.Eventually(t, 5*time.Second, "echo-v2 to get the copy of "+id, func() bool {
				shadow = m.seen(t, "echo-v2", id)
				return len(shadow) > 0
			})
			if len(shadow) != 1 || !strings.HasPrefix(shadow[0].Host, "echo-shadow") {
				t.Errorf("%s: the mirror saw %+v, want one copy with Host echo-shadow…", id, shadow)
			}
			if primary := m.seen(t, "echo-v1", id); len(primary) != 1 || strings.Contains(primary[0].Host, "shadow") {
				t.Errorf("%s: the primary saw %+v, want the request once with its own Host", id, primary)
			}
		}
	})

	t.Run("circuit breaker overflow is 503 UO", func(t *testing.T) {
		// maxConnections 1 and http1MaxPendingRequests 1: of 10 requests at
		// once, one runs, one waits and the rest overflow.
		const n = 10
		answers := m.getMany(t, "http://cb:8000/cb?sleep=1500ms", n, n)
		ok, overflow := 0, 0
		for _, a := range answers {
			switch {
			case a.err != nil:
				t.Fatalf("cb: %v", a.err)
			case a.code == http.StatusOK && a.name == "echo-v1":
				ok++
			case a.code == http.StatusServiceUnavailable && a.flags == "UO":
				overflow++
			default:
				t.Errorf("cb: %d flags %q from %q: %s", a.code, a.flags, a.name, a.body)
			}
		}
		t.Logf("circuit breaker: %d of %d answered, %d overflowed (503 UO)", ok, n, overflow)
		if ok < 1 || ok > 2 || overflow != n-ok {
			t.Errorf("%d answered and %d overflowed, want 1 or 2 answered (one connection, one pending) and the rest 503 UO", ok, overflow)
		}
		if got := m.stats(t, "echo-v1").MaxInFlight["/cb"]; got != 1 {
			t.Errorf("echo-v1 had up to %d cb requests at once, want 1 (maxConnections: 1)", got)
		}
	})

	t.Run("outlier detection ejects and readmits", func(t *testing.T) {
		m.sick(t, "echo-v2", true)
		t.Cleanup(func() { m.sick(t, "echo-v2", false) })
		// Round robin over both: echo-v2's second 503 in a row ejects it.
		// The ejection happened between sending the request that got the
		// second 503 (ejectedLo) and its answer (ejected).
		failures := 0
		var ejectedLo, ejected time.Time
		for i := 0; i < 20 && failures < 2; i++ {
			sent := time.Now()
			a := m.get(t, "http://od:8000/od")
			switch {
			case a.err != nil:
				t.Fatal(a.err)
			case a.code == http.StatusServiceUnavailable && a.name == "echo-v2":
				failures++
				ejectedLo, ejected = sent, time.Now()
			case a.code != http.StatusOK || a.name != "echo-v1":
				t.Fatalf("od: %d from %q", a.code, a.name)
			}
		}
		if failures != 2 {
			t.Fatalf("echo-v2 failed %d times in 20 requests, want 2", failures)
		}
		// Healed, but ejected for baseEjectionTime (2s): everything goes to echo-v1.
		m.sick(t, "echo-v2", false)
		served := 0
		for time.Since(ejectedLo) < 1500*time.Millisecond {
			a := m.get(t, "http://od:8000/od")
			if a.err != nil || a.code != http.StatusOK || a.name != "echo-v1" {
				t.Fatalf("%s after the ejection: %d from %q %v, want 200 from echo-v1 only", time.Since(ejectedLo).Round(time.Millisecond), a.code, a.name, a.err)
			}
			served++
			time.Sleep(20 * time.Millisecond)
		}
		// Then it is readmitted: never before baseEjectionTime, and by the
		// next interval (1s) after it, give or take a loaded machine.
		var back, backHi time.Duration
		for time.Since(ejected) < 10*time.Second {
			a := m.get(t, "http://od:8000/od")
			if a.err != nil || a.code != http.StatusOK {
				t.Fatalf("od: %d %v", a.code, a.err)
			}
			if a.name == "echo-v2" {
				back, backHi = time.Since(ejected), time.Since(ejectedLo)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("outlier detection: ejected after 2 consecutive 503s; %d requests all to echo-v1 while ejected; readmitted after %s", served, back.Round(time.Millisecond))
		if back == 0 {
			t.Fatalf("echo-v2 not readmitted 10s after its ejection (baseEjectionTime 2s)")
		}
		if backHi < 2*time.Second || back > 4500*time.Millisecond {
			t.Errorf("echo-v2 readmitted %s after its ejection, want after baseEjectionTime (2s) and by the next interval (1s) after it", back)
		}
	})

	t.Run("WebSocket echo", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(routingClient, "15001"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var k [16]byte
		_, _ = rand.Read(k[:])
		key := base64.StdEncoding.EncodeToString(k[:])
		req, _ := http.NewRequest(http.MethodGet, "http://echo:8000/ws", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Key", key)
		req.Header.Set("Sec-WebSocket-Version", "13")
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != echo.AcceptKey(key) || resp.Header.Get("X-Echo-Name") != "echo-v1" {
			t.Fatalf("upgrade: %s accept %q from %q, want 101 with the accept key from echo-v1", resp.Status, resp.Header.Get("Sec-WebSocket-Accept"), resp.Header.Get("X-Echo-Name"))
		}
		for _, msg := range []string{"one", "two", strings.Repeat("three", 100)} {
			if err := echo.WriteFrame(c, echo.OpText, []byte(msg), true); err != nil {
				t.Fatal(err)
			}
			op, got, err := echo.ReadFrame(br)
			if err != nil || op != echo.OpText || string(got) != msg {
				t.Fatalf("sent %.20q, got op %d %.20q %v", msg, op, got, err)
			}
		}
		if err := echo.WriteFrame(c, echo.OpClose, []byte{0x03, 0xE8}, true); err != nil {
			t.Fatal(err)
		}
		if op, _, err := echo.ReadFrame(br); err != nil || op != echo.OpClose {
			t.Errorf("close: op %d %v, want the close echoed", op, err)
		}
	})

	t.Run("gRPC bidirectional streaming", func(t *testing.T) {
		conn, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(routingClient, "15001"),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("grpc-echo:8000"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		stream, err := conn.NewStream(ctx, &echo.StreamDesc, echo.StreamMethod, grpc.ForceCodec(echo.Codec{}))
		if err != nil {
			t.Fatal(err)
		}
		// One message at a time: each answer must come back before the next is sent.
		for _, msg := range []string{"one", "two", "three"} {
			out := []byte(msg)
			if err := stream.SendMsg(&out); err != nil {
				t.Fatalf("send %q: %v", msg, err)
			}
			var in []byte
			if err := stream.RecvMsg(&in); err != nil || string(in) != msg {
				t.Fatalf("sent %q, got %q %v", msg, in, err)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		// io.EOF is the end of a stream whose grpc-status is OK; any other
		// status is an error here.
		var in []byte
		if err := stream.RecvMsg(&in); !errors.Is(err, io.EOF) {
			t.Fatalf("after CloseSend: %v, want io.EOF (grpc-status OK)", err)
		}
		hdr, err := stream.Header()
		if err != nil {
			t.Fatal(err)
		}
		if got := first(hdr, "x-echo-name"); got != "echo-v1" {
			t.Errorf("answered by %q, want echo-v1", got)
		}
	})

	t.Run("TCP echo", func(t *testing.T) {
		// The client's sidecar serves tcp-echo's port on the client's own address.
		c, err := net.DialTimeout("tcp", net.JoinHostPort(routingClient, "9000"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := c.(*net.TCPConn)
		var sent strings.Builder
		for _, msg := range []string{"hello tcp\n", strings.Repeat("x", 64<<10), "bye\n"} {
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
			sent.WriteString(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
				t.Fatalf("sent %d bytes, got %.20q %v", len(msg), got, err)
			}
		}
		// A half-close travels through both sidecars: the echo closes too.
		if err := tc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
			t.Errorf("after half-close: %q %v, want EOF", rest, err)
		}
	})
}

func statuses(seen []echo.Seen) []int {
	var out []int
	for _, s := range seen {
		out = append(out, s.Status)
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func first(md metadata.MD, k string) string {
	if v := md.Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
