package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/procs"
)

// rateLimitPolicy limits GET /get* for bar/sleep on foo/httpbin to %d per hour,
// per client identity. The hour is long enough that no token comes back
// during the test, so outcomes are counts, not timings.
const rateLimitPolicy = `apiVersion: policy.rampart.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: get-limit
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  limits:
  - name: sleep-get
    match:
      operation:
        paths: ["/get*"]
      source:
        principals: ["cluster.local/ns/bar/sa/sleep"]
    key:
      by: SourcePrincipal
    rate:
      requests: %d
      per: 1h
`

// A RateLimitPolicy in rampartd's config directory limits one path for one
// client identity in the sidecar: requests past the limit get Envoy's local
// rate limit answer, other identities and paths are not limited, a live edit
// raises the limit, and bad edits are refused with the old limit kept.
func TestRateLimitPolicy(t *testing.T) {
	cfgDir := procs.ShortTempDir(t)
	file := filepath.Join(cfgDir, "ratelimit.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf(rateLimitPolicy, 3))
	m := startMesh(t, "--config-dir", cfgDir)

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "app: %s", r.URL.Path) }))
	defer app.Close()
	inboundAddr := procs.FreeAddr(t)
	metricsAddr := procs.FreeAddr(t)
	procs.Start(t, m.dir, "sidecar-httpbin", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", m.token(t, "foo", "httpbin"), "--inbound-listen", inboundAddr, "--app", strings.TrimPrefix(app.URL, "http://"),
		"--labels", "app=httpbin", "--metrics-listen", metricsAddr)
	procs.WaitTCP(t, inboundAddr, 20*time.Second)

	clientFor := func(sa string) *http.Client {
		sock, _ := m.sidecar(t, "bar", sa)
		src := source(t, sock)
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: meshPeerTLS(src, td), DisableKeepAlives: true}}
	}
	sleep, other := clientFor("sleep"), clientFor("other")
	type answer struct {
		code               int
		body, flags, envoy string
	}
	get := func(c *http.Client, path string) answer {
		t.Helper()
		resp, err := c.Get("https://" + inboundAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, string(b), resp.Header.Get("x-rampart-response-flags"), resp.Header.Get("x-envoy-ratelimited")}
	}
	// counts sends n requests and counts the answers by status.
	counts := func(c *http.Client, path string, n int) map[int]int {
		t.Helper()
		out := map[int]int{}
		for range n {
			a := get(c, path)
			out[a.code]++
			if a.code == 429 && (a.body != "local_rate_limited" || a.flags != "RL" || a.envoy != "true") {
				t.Fatalf("429 answer: body %q, x-rampart-response-flags %q, x-envoy-ratelimited %q; want local_rate_limited, RL, true", a.body, a.flags, a.envoy)
			}
		}
		return out
	}
	// Ready: the first bundle (limits included) is applied once requests pass.
	procs.Eventually(t, 20*time.Second, "the sidecar has its bundle", func() bool { return get(sleep, "/headers").code == 200 })

	if got := counts(sleep, "/get", 5); got[200] != 3 || got[429] != 2 {
		t.Fatalf("bar/sleep GET /get x5 with a limit of 3: %v; want 3×200, 2×429", got)
	}
	if got := counts(other, "/get", 5); got[200] != 5 {
		t.Fatalf("bar/other GET /get x5 (not limited): %v; want 5×200", got)
	}
	if got := counts(sleep, "/headers", 5); got[200] != 5 {
		t.Fatalf("bar/sleep GET /headers x5 (not limited): %v; want 5×200", got)
	}
	metric := func(result string) string {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		prefix := `rampart_ratelimit_requests_total{limit="foo/get-limit/sleep-get",result="` + result + `"} `
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, prefix); ok {
				return v
			}
		}
		return ""
	}
	if ok, limited := metric("ok"), metric("limited"); ok != "3" || limited != "2" {
		t.Fatalf("rampart_ratelimit_requests_total: ok %q, limited %q; want 3 and 2", ok, limited)
	}

	// A live edit raises the limit to 10: a changed limit starts with full buckets.
	write(fmt.Sprintf(rateLimitPolicy, 10))
	procs.Eventually(t, 10*time.Second, "the raised limit lets bar/sleep through", func() bool { return get(sleep, "/get").code == 200 })
	if got := counts(sleep, "/get", 12); got[200] != 9 || got[429] != 3 {
		t.Fatalf("bar/sleep GET /get x12 after the edit (1 of 10 already used): %v; want 9×200, 3×429", got)
	}

	// A bad edit (a limit of 0 requests) is refused with its finding; the old limit stays.
	write(fmt.Sprintf(rateLimitPolicy, 0))
	m.rampartd.WaitLog(t, "RL-RATE", 10*time.Second)
	// A misspelt field is refused with the file, line, object and field.
	write(strings.Replace(fmt.Sprintf(rateLimitPolicy, 10), "      per: 1h", "      pre: 1h", 1))
	m.rampartd.WaitLog(t, "ratelimit.yaml:21: RateLimitPolicy foo/get-limit: spec.limits[0].rate.pre: unknown field", 10*time.Second)
	if got := counts(sleep, "/get", 2); got[429] != 2 {
		t.Fatalf("bar/sleep GET /get after refused edits: %v; want the old, exhausted limit (2×429)", got)
	}
	if got := counts(other, "/get", 2); got[200] != 2 {
		t.Fatalf("bar/other GET /get after refused edits: %v; want 2×200", got)
	}
}
