package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// TestBookinfoLocalMesh runs the local mesh the way a user does, with
// 'rampartctl up deploy/examples/bookinfo', and uses it through the ingress.
func TestBookinfoLocalMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole mesh")
	}
	dir := procs.ShortTempDir(t)
	cfg := filepath.Join(dir, "bookinfo")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"registry.yaml", "processes.yaml", "networking.yaml", "security.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "examples", "bookinfo", f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "networking.yaml" {
			// The Gateway without its selector: Istio applies it to every
			// gateway proxy (the ingress sidecar says it is one) and to no
			// sidecar.
			edited := strings.Replace(string(data), "  selector: {istio: ingressgateway}\n", "", 1)
			if edited == string(data) {
				t.Fatal("could not find the Gateway's selector to remove")
			}
			data = []byte(edited)
		}
		if err := os.WriteFile(filepath.Join(cfg, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(dir, "state")
	monitoring := procs.FreeAddr(t)
	up := procs.Start(t, dir, "up", "rampartctl", "up", cfg, "--state-dir", state, "--bin", procs.BinDir(t),
		"--control-plane", procs.FreeAddr(t), "--monitoring-listen", monitoring)
	up.WaitLog(t, "ingress: http://127.0.10.100:8080", 90*time.Second)
	ingress := "http://127.0.10.100:8080"
	page := func(path string, hdr ...string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, ingress+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// All traffic goes to v1 (the shipped routing): no stars, reviews-v1.
	code, body := page("/productpage")
	if code != 200 || !strings.Contains(body, "reviews-v1") || strings.Contains(body, "★") {
		t.Fatalf("productpage: %d\n%s", code, body)
	}
	if !strings.Contains(body, "William Shakespeare") {
		t.Errorf("productpage lacks the details (productpage → details)")
	}
	// Routes the gateway does not serve are 404 with flag NR.
	if code, _ := page("/ratings/0"); code != 404 {
		t.Errorf("ingress /ratings/0 = %d, want 404", code)
	}

	// The API at the ingress needs a JWT from the demo issuer: none → 403, a
	// minted one → 200, a forged one → 401.
	tok := strings.TrimSpace(procs.Run(t, "rampartctl", "jwt", "mint", "--key", filepath.Join("..", "..", "deploy", "examples", "bookinfo", "demo-jwt", "key.pem"), "--subject", "alice"))
	for _, tc := range []struct {
		auth string
		want int
	}{{"", 403}, {"Bearer " + tok, 200}, {"Bearer " + tok[:len(tok)-4] + "AAAA", 401}} {
		if code, body := page("/api/v1/products", "Authorization", tc.auth); code != tc.want {
			t.Errorf("/api/v1/products with %q: %d, want %d\n%s", tc.auth, code, tc.want, body)
		}
	}

	// A caller the policies forbid: the curl workload (a valid mesh identity)
	// asks ratings directly through its sidecar; only reviews may.
	proxyURL, _ := url.Parse("http://127.0.10.50:15001")
	curl := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 5 * time.Second}
	resp, err := curl.Get("http://ratings:9080/ratings/0")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(b), "RBAC: access denied") {
		t.Errorf("curl → ratings = %d %s, want 403 RBAC: access denied", resp.StatusCode, b)
	}
	audit := filepath.Join(state, "audit", "default.ratings-v1.log")
	procs.Eventually(t, 5*time.Second, "the denial in ratings' audit log", func() bool {
		data, _ := os.ReadFile(audit)
		return strings.Contains(string(data), "cluster.local/ns/default/sa/curl")
	})
	if out := procs.Run(t, "rampartctl", "audit", "verify", audit); !strings.Contains(out, "chain:   intact") {
		t.Errorf("audit verify:\n%s", out)
	}

	// Every proxy is SYNCED.
	st := procs.Run(t, "rampartctl", "proxy-status", "--state-dir", state)
	if strings.Count(st, "SYNCED") != 8 {
		t.Errorf("proxy-status:\n%s", st)
	}
	// What a proxy applied, through the state directory and through --server.
	routes := procs.Run(t, "rampartctl", "proxy-config", "default/productpage-v1", "routes", "--state-dir", state)
	if !strings.Contains(routes, "reviews.default.svc.cluster.local:9080") || !strings.Contains(routes, "outbound|9080|v1|reviews.default.svc.cluster.local") {
		t.Errorf("proxy-config routes:\n%s", routes)
	}
	if strings.Contains(routes, "http.8080") {
		t.Errorf("a sidecar got the selector-less Gateway's route configuration:\n%s", routes)
	}
	if gw := procs.Run(t, "rampartctl", "proxy-config", "istio-system/istio-ingressgateway", "routes", "--state-dir", state); !strings.Contains(gw, "http.8080") {
		t.Errorf("the ingress gateway lacks the Gateway's route configuration:\n%s", gw)
	}
	clusters := procs.Run(t, "rampartctl", "proxy-config", "default/productpage-v1", "clusters", "--server", monitoring)
	if !strings.Contains(clusters, "outbound|9080|v3|reviews.default.svc.cluster.local") || !strings.Contains(clusters, "auto mTLS") {
		t.Errorf("proxy-config clusters --server:\n%s", clusters)
	}
	eps := procs.Run(t, "rampartctl", "proxy-config", "default/productpage-v1", "endpoints", "--server", monitoring)
	if !strings.Contains(eps, "127.0.10.5:9080") || !strings.Contains(eps, "istio") {
		t.Errorf("proxy-config endpoints --server:\n%s", eps)
	}
	if st := procs.Run(t, "rampartctl", "proxy-status", "--server", monitoring); strings.Count(st, "SYNCED") != 8 {
		t.Errorf("proxy-status --server:\n%s", st)
	}

	// Edit the routing live: reviews to v3 (red stars) — within a second.
	netPath := filepath.Join(cfg, "networking.yaml")
	data, _ := os.ReadFile(netPath)
	edited := strings.Replace(string(data), "http: [{route: [{destination: {host: reviews, subset: v1}}]}]", "http: [{route: [{destination: {host: reviews, subset: v3}}]}]", 1)
	if edited == string(data) {
		t.Fatal("could not find the reviews route to edit")
	}
	start := time.Now()
	if err := os.WriteFile(netPath, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	procs.Eventually(t, 10*time.Second, "reviews-v3 answering", func() bool {
		_, body := page("/productpage")
		return strings.Contains(body, "reviews-v3")
	})
	took := time.Since(start)
	t.Logf("routing change visible after %s", took)
	if took > time.Second {
		t.Errorf("routing change took %s, want under a second", took)
	}
	_, body = page("/productpage")
	if !strings.Contains(body, "red") {
		t.Errorf("reviews-v3 page without red stars:\n%s", body)
	}

	// Istio's own Bookinfo tasks apply unchanged: virtual-service-reviews-test-v2
	// (jason sees reviews-v2) and virtual-service-ratings-test-abort (jason's
	// ratings calls get 500, so his page says ratings are unavailable).
	testV2 := strings.Replace(edited, "http: [{route: [{destination: {host: reviews, subset: v3}}]}]", `http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1`, 1)
	testV2 = strings.Replace(testV2, "http: [{route: [{destination: {host: ratings, subset: v1}}]}]", `http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1`, 1)
	if err := os.WriteFile(netPath, []byte(testV2), 0o644); err != nil {
		t.Fatal(err)
	}
	// Both proxies involved (productpage's for reviews, reviews-v2's for
	// ratings) converge independently, each within the second.
	procs.Eventually(t, 10*time.Second, "jason routed to reviews-v2, his ratings calls aborted", func() bool {
		_, body := page("/productpage", "end-user", "jason")
		return strings.Contains(body, "reviews-v2") && strings.Contains(body, "Ratings service is currently unavailable")
	})
	if _, body := page("/productpage"); !strings.Contains(body, "reviews-v1") {
		t.Errorf("everyone else should get reviews-v1:\n%s", body)
	}
	if err := os.WriteFile(netPath, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	procs.Eventually(t, 10*time.Second, "back to reviews-v3", func() bool {
		_, body := page("/productpage")
		return strings.Contains(body, "reviews-v3")
	})

	// A bad edit is refused whole and logged; the routing in force stays.
	bad := filepath.Join(cfg, "zz-bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews-bad}\nspec: {hosts: [reviews], http: [{match: [{uri: {regex: \"(\"}}], route: [{destination: {host: reviews, subset: v1}}]}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	up.WaitLog(t, "VS-BAD-REGEX", 10*time.Second)
	for i := 0; i < 5; i++ {
		if _, body := page("/productpage"); !strings.Contains(body, "reviews-v3") {
			t.Fatalf("after a refused edit the page is not from reviews-v3:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	os.Remove(bad)

	// An AuthorizationPolicy edit: let curl read ratings; the 403 turns into 200.
	secPath := filepath.Join(cfg, "security.yaml")
	sec, _ := os.ReadFile(secPath)
	opened := strings.Replace(string(sec), "principals: [cluster.local/ns/default/sa/bookinfo-reviews]", "principals: [cluster.local/ns/default/sa/bookinfo-reviews, cluster.local/ns/default/sa/curl]", 1)
	start = time.Now()
	if err := os.WriteFile(secPath, []byte(opened), 0o644); err != nil {
		t.Fatal(err)
	}
	procs.Eventually(t, 10*time.Second, "curl allowed to read ratings", func() bool {
		resp, err := curl.Get("http://ratings:9080/ratings/0")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if took := time.Since(start); took > time.Second {
		t.Errorf("policy change took %s, want under a second", took)
	}

	// Auto mTLS: a service outside the mesh (MESH_EXTERNAL) is called in plaintext
	// by the same sidecar that uses mTLS inside it; a new ServiceEntry is live.
	ext := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "external tls=%t", r.TLS != nil)
	}))
	defer ext.Close()
	_, extPort, _ := net.SplitHostPort(ext.Listener.Addr().String())
	if err := os.WriteFile(filepath.Join(cfg, "external.yaml"), []byte(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: `+extPort+`, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	procs.Eventually(t, 10*time.Second, "the external service through the sidecar", func() bool {
		resp, err := curl.Get("http://api.external.test:" + extPort + "/")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200 && string(b) == "external tls=false"
	})

	// Every proxy converged on the new configuration.
	procs.Eventually(t, 10*time.Second, "every proxy SYNCED after the edits", func() bool {
		return strings.Count(procs.Run(t, "rampartctl", "proxy-status", "--state-dir", state), "SYNCED") == 8
	})

	// rampartd dies while traffic flows: no request fails; 'up' restarts it and
	// every proxy reconnects and converges.
	stop := make(chan struct{})
	type tally struct{ ok, failed int }
	results := make(chan tally)
	go func() {
		var n tally
		for {
			select {
			case <-stop:
				results <- n
				return
			default:
			}
			if code, _ := page("/productpage"); code == 200 {
				n.ok++
			} else {
				n.failed++
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	killed := 0
	for _, pid := range processesMentioning(state) {
		cmd, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		if strings.HasPrefix(filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0]), "rampartd") {
			if n, err := strconv.Atoi(pid); err == nil && syscall.Kill(n, syscall.SIGKILL) == nil {
				killed++
			}
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d rampartd processes, want 1", killed)
	}
	up.WaitLog(t, "rampartd               restarting", 10*time.Second)
	procs.Eventually(t, 30*time.Second, "every proxy SYNCED with the restarted rampartd", func() bool {
		out, err := procs.RunErr(t, "rampartctl", "proxy-status", "--state-dir", state)
		return err == nil && strings.Count(out, "SYNCED") == 8
	})
	close(stop)
	n := <-results
	t.Logf("during the control-plane restart: %d requests ok, %d failed", n.ok, n.failed)
	if n.failed != 0 || n.ok < 10 {
		t.Errorf("requests during the control-plane restart: %d ok, %d failed; want none failed", n.ok, n.failed)
	}

	// Stopping leaves no process behind.
	_ = up.Cmd.Process.Signal(syscall.SIGINT)
	procs.Eventually(t, 20*time.Second, "rampartctl up to exit", up.Exited)
	procs.Eventually(t, 10*time.Second, "every mesh process to exit", func() bool { return len(processesMentioning(state)) == 0 })
}

// processesMentioning lists the pids whose command line or environment
// contains s (the apps name the state directory only in their environment).
func processesMentioning(s string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			data, err := os.ReadFile(filepath.Join("/proc", e.Name(), f))
			if err == nil && strings.Contains(string(data), s) {
				out = append(out, e.Name())
				break
			}
		}
	}
	return out
}
