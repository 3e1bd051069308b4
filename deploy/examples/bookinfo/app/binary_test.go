package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The binary is built once, for every test that runs it.
var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary; skipped with -short")
	}
	if runtime.GOOS == "windows" {
		t.Skip("sends SIGTERM")
	}
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = err
			return
		}
		if binDir, buildErr = os.MkdirTemp("", "bookinfo-test-"); buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "bookinfo")
		out, err := exec.Command(goTool, "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = &buildError{err: err, out: out}
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binPath
}

func removeBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + string(e.out) }

// process is a running bookinfo binary.
type process struct {
	cmd    *exec.Cmd
	addr   string // from its first line on stdout
	stderr *syncBuffer
}

// startBinary runs bookinfo with args and env (added to a copy of the test's
// environment without any proxy settings) and waits for its "listening on" line.
func startBinary(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(buildBinary(t), args...)
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "REQUEST_METHOD", envListen:
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	p := &process{cmd: cmd, stderr: &syncBuffer{}}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil { // the test did not stop it
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	first := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok {
			t.Fatalf("first line of stdout %q, want \"listening on HOST:PORT\"; stderr:\n%s", line, p.stderr.String())
		}
		p.addr = addr
	case <-time.After(30 * time.Second): // a guard against a hang, not a speed target
		t.Fatalf("no \"listening on\" line within 30s; stderr:\n%s", p.stderr.String())
	}
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *process) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		t.Fatalf("still running 30s after SIGTERM; stderr:\n%s", p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

func TestBinaryAnnouncesItsAddressAndStopsOnSIGTERM(t *testing.T) {
	p := startBinary(t, nil, "details", "--listen", "127.0.0.1:0")
	if !strings.HasPrefix(p.addr, "127.0.0.1:") || p.addr == "127.0.0.1:0" {
		t.Fatalf("announced address %q, want 127.0.0.1:<port>", p.addr)
	}

	tr := &http.Transport{}
	status, body := get(t, &http.Client{Transport: tr}, "http://"+p.addr, "/details/0", http.Header{"x-request-id": {"bin-1"}})
	tr.CloseIdleConnections()
	if status != http.StatusOK {
		t.Fatalf("GET /details/0: status %d, body %s", status, body)
	}
	var d bookDetails
	if err := json.Unmarshal([]byte(body), &d); err != nil || d.Author != "William Shakespeare" {
		t.Errorf("GET /details/0: %s (err %v)", body, err)
	}

	if code := p.stop(t); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, p.stderr.String())
	}
	logs := p.stderr.String()
	for _, want := range []string{"method=GET path=/details/0 status=200 request_id=bin-1", `msg="shut down"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %q; stderr:\n%s", want, logs)
		}
	}
}

// proxyRecorder is a forward proxy, as the sidecar's outbound listener is: it
// records each request line and answers from in-process services by Host.
type proxyRecorder struct {
	mu       sync.Mutex
	lines    []string
	requests []http.Header
	services map[string]http.Handler // "details:9080" → details
}

func (p *proxyRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.lines = append(p.lines, r.Method+" "+r.RequestURI)
	p.requests = append(p.requests, r.Header.Clone())
	p.mu.Unlock()
	svc, ok := p.services[r.Host]
	if !ok {
		http.Error(w, "no such service "+r.Host, http.StatusBadGateway)
		return
	}
	svc.ServeHTTP(w, r)
}

func TestBinaryCallsUpstreamsThroughHTTPProxy(t *testing.T) {
	reviews, err := newReviews(reviewsConfig{Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	rec := &proxyRecorder{services: map[string]http.Handler{"details:9080": newDetails(), "reviews:9080": reviews}}
	proxy := httptest.NewServer(rec)
	defer proxy.Close()

	// No --details-url or --reviews-url: the defaults, http://details:9080 and
	// http://reviews:9080, only resolve through the proxy.
	p := startBinary(t, []string{"HTTP_PROXY=" + proxy.URL}, "productpage", "--listen", "127.0.0.1:0")
	tr := &http.Transport{}
	status, page := get(t, &http.Client{Transport: tr}, "http://"+p.addr, "/productpage", http.Header{"x-request-id": {"via-proxy"}})
	tr.CloseIdleConnections()
	if status != http.StatusOK {
		t.Fatalf("GET /productpage: status %d", status)
	}
	assertContains(t, page, "William Shakespeare", "Reviews served by: <code>reviews-v1</code>")
	assertLacks(t, page, detailsUnavailable, reviewsUnavailable)

	rec.mu.Lock()
	lines := strings.Join(rec.lines, "\n")
	var ids []string
	for _, h := range rec.requests {
		ids = append(ids, h.Get("X-Request-Id"))
	}
	rec.mu.Unlock()
	for _, want := range []string{"GET http://details:9080/details/0", "GET http://reviews:9080/reviews/0"} {
		if !strings.Contains(lines, want) {
			t.Errorf("the proxy saw no %q; it saw:\n%s", want, lines)
		}
	}
	if diff := cmp.Diff([]string{"via-proxy", "via-proxy"}, ids); diff != "" {
		t.Errorf("x-request-id of the calls through the proxy (-want +got):\n%s", diff)
	}

	if code := p.stop(t); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, p.stderr.String())
	}
}
