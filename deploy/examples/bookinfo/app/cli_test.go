package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// noEnv is a getenv with nothing set.
func noEnv(string) string { return "" }

func TestHelp(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{name: "bookinfo", args: []string{"--help"}},
		{name: "productpage", args: []string{"productpage", "--help"}},
		{name: "details", args: []string{"details", "-h"}},
		{name: "reviews", args: []string{"reviews", "--help"}},
		{name: "ratings", args: []string{"ratings", "--help"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), tt.args, &stdout, &stderr, noEnv); code != exitOK {
				t.Errorf("exit code %d, want %d", code, exitOK)
			}
			if stderr.Len() > 0 {
				t.Errorf("stderr: %s, want nothing", stderr.String())
			}
			golden := filepath.Join("testdata", "help-"+tt.name+".golden")
			if *update {
				if err := os.WriteFile(golden, stdout.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got := stdout.String(); got != string(want) {
				t.Errorf("help differs from %s (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{name: "no command", args: nil, wantStderr: "Usage:"},
		{name: "unknown command", args: []string{"shipping"}, wantStderr: `unknown command "shipping"`},
		{name: "unknown flag", args: []string{"details", "--colour", "red"}, wantStderr: "flag provided but not defined: -colour"},
		{name: "flag of another command", args: []string{"ratings", "--version", "v2"}, wantStderr: "flag provided but not defined: -version"},
		{name: "bad reviews version", args: []string{"reviews", "--version", "v9"}, wantStderr: `reviews version "v9": want v1, v2 or v3`},
		{name: "bad duration", args: []string{"productpage", "--timeout", "soon"}, wantStderr: `invalid value "soon" for flag -timeout`},
		{name: "bad upstream URL", args: []string{"productpage", "--details-url", "details:9080"}, wantStderr: `details URL "details:9080"`},
		{name: "stray argument", args: []string{"details", "extra"}, wantStderr: `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), tt.args, &stdout, &stderr, noEnv); code != exitUsage {
				t.Errorf("exit code %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr.String(), tt.wantStderr)
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines to log into.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunServesOnTheEnvAddress runs a service in-process the way main does,
// with the listen address from RAMPART_APP_ADDR, and stops it by cancelling
// the context as SIGTERM would.
func TestRunServesOnTheEnvAddress(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	env := func(k string) string {
		if k == envListen {
			return "127.0.0.1:0"
		}
		return ""
	}
	pr, pw := io.Pipe()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"ratings"}, pw, &stderr, env)
		pw.Close()
	}()

	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("read the first line of stdout: %v; stderr: %s", err, stderr.String())
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok || !strings.HasPrefix(addr, "127.0.0.1:") || addr == "127.0.0.1:0" {
		t.Fatalf("first line %q, want \"listening on 127.0.0.1:<port>\"", line)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }() // nothing more is expected; don't block the server

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	status, body := get(t, &http.Client{Transport: tr}, "http://"+addr, "/ratings/0", http.Header{"x-request-id": {"req-42"}})
	if status != http.StatusOK || !strings.Contains(body, `"Reviewer1":5`) {
		t.Errorf("GET /ratings/0: %d %s", status, body)
	}
	tr.CloseIdleConnections()

	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("exit code %d after cancel, want %d; stderr: %s", code, exitOK, stderr.String())
	}
	logs := stderr.String()
	for _, want := range []string{"service=ratings", "method=GET", "path=/ratings/0", "status=200", "request_id=req-42", "msg=\"shut down\""} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %q; stderr:\n%s", want, logs)
		}
	}
}

func TestRunFailsWhenTheAddressIsTaken(t *testing.T) {
	var lc net.ListenConfig
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"details", "--listen", ln.Addr().String()}, &stdout, &stderr, noEnv); code != exitFail {
		t.Errorf("exit code %d, want %d", code, exitFail)
	}
	if want := "bookinfo details: listen on " + ln.Addr().String(); !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q, want it to contain %q", stderr.String(), want)
	}
}

func TestLogRequestsRecordsTheStatus(t *testing.T) {
	var logs syncBuffer
	h := logRequests(slog.New(slog.NewTextHandler(&logs, nil)), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "teapot", http.StatusTeapot)
	}))
	req := httptest.NewRequest(http.MethodPost, "/brew?x=1", nil)
	req.Header.Set("X-Request-Id", "abc")
	h.ServeHTTP(httptest.NewRecorder(), req)
	for _, want := range []string{"method=POST", "path=/brew ", "status=418", "request_id=abc"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q: %s", want, logs.String())
		}
	}
}

// TestServeFinishesInFlightRequests: a request already being served when the
// context ends (SIGTERM) gets its answer; serve returns only after that.
func TestServeFinishesInFlightRequests(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "finished")
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	served := make(chan error, 1)
	go func() {
		served <- serve(ctx, "127.0.0.1:0", h, pw, slog.New(slog.DiscardHandler))
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(strings.TrimSpace(line), "listening on ")

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	type answer struct {
		status int
		body   string
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr}).Get("http://" + addr + "/")
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, string(b), err}
	}()
	<-started
	cancel()
	// Once the listener is closed the shutdown has begun; only then let the
	// handler finish.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if i == 1000 {
			t.Fatal("still accepting connections after the context ended")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-served:
		t.Fatalf("serve returned %v with a request in flight", err)
	default:
	}
	close(release)
	if a := <-answered; a.err != nil || a.status != http.StatusOK || a.body != "finished" {
		t.Errorf("in-flight request got %d %q, err %v; want 200 \"finished\"", a.status, a.body, a.err)
	}
	if err := <-served; err != nil {
		t.Errorf("serve: %v, want nil after a clean shutdown", err)
	}
}
