package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingRT records the requests it is given (the fallback transport).
type countingRT struct {
	n  atomic.Int64
	rt http.RoundTripper
}

func (c *countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

func newAppTransport(t *testing.T, _ string) (*Transport, *countingRT) {
	next := &countingRT{rt: &http.Transport{}}
	var d net.Dialer
	at := &Transport{Next: next, MaxIdlePerHost: 8, IdleTimeout: time.Minute,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }}
	t.Cleanup(at.CloseIdleConnections)
	return at, next
}

func do(t *testing.T, rt http.RoundTripper, method, url string, body io.Reader) (int, string, error) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Bodiless requests share pooled connections (one connection for sequential
// requests, HEAD included); requests with a body go to the fallback.
func TestAppTransportReusesConnections(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), b)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	at, next := newAppTransport(t, strings.TrimPrefix(srv.URL, "http://"))
	for i := range 20 {
		method := []string{"GET", "HEAD", "DELETE"}[i%3]
		code, body, err := do(t, at, method, fmt.Sprintf("%s/x/%d?q=1", srv.URL, i), nil)
		want := fmt.Sprintf("%s /x/%d?q=1 ", method, i)
		if method == "HEAD" {
			want = ""
		}
		if err != nil || code != 200 || body != want {
			t.Fatalf("%s %d: %d %q %v; want 200 %q", method, i, code, body, err, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections to the app for 20 sequential requests; want 1", n)
	}
	if next.n.Load() != 0 {
		t.Fatal("bodiless requests went to the fallback transport")
	}
	code, body, err := do(t, at, "POST", srv.URL+"/p", strings.NewReader("payload"))
	if err != nil || code != 200 || body != "POST /p payload" || next.n.Load() != 1 {
		t.Fatalf("POST: %d %q %v (fallback used %d times); want the fallback to carry it", code, body, err, next.n.Load())
	}
}

// The app closing an idle connection is not the request's failure: the
// transport sees the close before it reuses the connection and sends the
// request, whatever its method, on a fresh one. When the app closes a reused
// connection after the request went out, a replayable request is sent again; a
// non-replayable one is not sent twice.
func TestAppTransportStaleConnection(t *testing.T) {
	var served, dropped atomic.Int64
	var dropSecond atomic.Bool
	// Answers one request per connection with keep-alive, then closes it
	// without saying so: the next request on it finds it dead. With
	// dropSecond, it reads a second request first and closes unanswered.
	addr := rawApp(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		served.Add(1)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.Method), req.Method)
		if dropSecond.Load() {
			if _, err := http.ReadRequest(br); err == nil {
				dropped.Add(1)
			}
		}
	})
	at, _ := newAppTransport(t, addr)
	url := "http://" + addr + "/"
	for _, method := range []string{"GET", "GET", "PATCH", "POST", "DELETE"} {
		before := served.Load()
		if code, body, err := do(t, at, method, url, nil); err != nil || code != 200 || body != method {
			t.Fatalf("%s after the app closed the idle connection: %d %q %v; want it sent on a fresh one", method, code, body, err)
		}
		if got := served.Load() - before; got != 1 {
			t.Fatalf("the app saw %s %d times; want once", method, got)
		}
		time.Sleep(20 * time.Millisecond) // let the close land
	}
	// Now the app takes the next request on a kept connection, then drops it.
	dropSecond.Store(true)
	if code, _, err := do(t, at, "GET", url, nil); err != nil || code != 200 {
		t.Fatalf("GET: %d %v", code, err)
	}
	if code, body, err := do(t, at, "GET", url, nil); err != nil || code != 200 || body != "GET" {
		t.Fatalf("GET dropped unanswered on a reused connection: %d %q %v; want it sent again", code, body, err)
	}
	d0 := dropped.Load()
	if _, _, err := do(t, at, "PATCH", url, nil); err == nil {
		t.Fatal("PATCH dropped unanswered on a reused connection succeeded")
	}
	if got := dropped.Load() - d0; got != 1 {
		t.Fatalf("the app received the dropped PATCH %d times; want once (not sent again)", got)
	}
}

// An app that sends more than its response's framing says (a body on a HEAD
// answer, here) must not have those bytes read as the next request's
// response, whether they came with the response or after it.
func TestAppTransportUnsolicitedBytes(t *testing.T) {
	for _, late := range []bool{false, true} {
		addr := rawApp(t, func(c net.Conn) {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				body := "for " + req.URL.Path
				if req.Method != "HEAD" {
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
					continue
				}
				injected := "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: yes\r\n\r\ninjected"
				if late {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
					time.Sleep(50 * time.Millisecond)
					io.WriteString(c, injected)
				} else {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"+injected)
				}
			}
		})
		at, _ := newAppTransport(t, addr)
		url := "http://" + addr
		if code, _, err := do(t, at, "HEAD", url+"/head", nil); err != nil || code != 200 {
			t.Fatalf("late=%v: HEAD: %d %v", late, code, err)
		}
		time.Sleep(100 * time.Millisecond)
		for _, path := range []string{"/b", "/c"} {
			if code, body, err := do(t, at, "GET", url+path, nil); err != nil || code != 200 || body != "for "+path {
				t.Fatalf("late=%v: GET %s after a HEAD answered with a body: %d %q %v; want its own answer", late, path, code, body, err)
			}
		}
	}
}

// A response's head is bounded (10 MB, five informational answers), so one
// answer cannot take the sidecar's memory.
func TestAppTransportResponseHeadLimits(t *testing.T) {
	addr := rawApp(t, func(c net.Conn) {
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		if req.URL.Path == "/hints" {
			for range 6 {
				io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: ")
		line := strings.Repeat("a", 64<<10)
		for range 12 << 4 { // 12 MiB, no end of line
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	})
	at, _ := newAppTransport(t, addr)
	url := "http://" + addr
	if _, _, err := do(t, at, "GET", url+"/big", nil); err == nil || !strings.Contains(err.Error(), "exceed") {
		t.Fatalf("a 12 MiB header: %v; want refused as too large", err)
	}
	if _, _, err := do(t, at, "GET", url+"/hints", nil); err == nil || !strings.Contains(err.Error(), "informational") {
		t.Fatalf("six 103 answers: %v; want refused", err)
	}
}

// A request whose context ends while the app is slow returns at once with the
// context's error, and its connection is not reused.
func TestAppTransportCancel(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		fmt.Fprint(w, "ok")
	}))
	defer srv.Close()
	defer once.Do(func() { close(release) })
	at, _ := newAppTransport(t, strings.TrimPrefix(srv.URL, "http://"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/slow", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := at.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the context's deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled request stayed blocked on the app")
	}
	once.Do(func() { close(release) })
	if code, body, err := do(t, at, "GET", srv.URL+"/fast", nil); err != nil || code != 200 || body != "ok" {
		t.Fatalf("after a cancel: %d %q %v", code, body, err)
	}
}

// Informational responses before the final one are skipped; an early-closed
// body closes its connection instead of returning it half-read.
func TestAppTransportEarlyHintsAndEarlyClose(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		fmt.Fprint(w, strings.Repeat("x", 64<<10))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	at, _ := newAppTransport(t, strings.TrimPrefix(srv.URL, "http://"))
	code, body, err := do(t, at, "GET", srv.URL+"/hints", nil)
	if err != nil || code != 200 || len(body) != 64<<10 {
		t.Fatalf("after 103: %d, %d bytes, %v; want the final 200", code, len(body), err)
	}
	// The same connection carries the next request; closed half-read, it is
	// not given back.
	req, _ := http.NewRequest("GET", srv.URL+"/big", nil)
	resp, err := at.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 10))
	resp.Body.Close()
	at.mu.Lock()
	idle := 0
	for _, q := range at.idle {
		idle += len(q)
	}
	at.mu.Unlock()
	if idle != 0 || conns.Load() != 1 {
		t.Fatalf("%d idle of %d connections after a half-read body; want 0 of 1 (the half-read one closed)", idle, conns.Load())
	}
	if code, body, err := do(t, at, "GET", srv.URL+"/again", nil); err != nil || code != 200 || len(body) != 64<<10 {
		t.Fatalf("next request: %d, %d bytes, %v", code, len(body), err)
	}
	if conns.Load() != 2 {
		t.Fatalf("%d connections; the request after a half-read body needs a fresh one (2)", conns.Load())
	}
}

// An app that answers 101 to a request that asked for no upgrade has switched
// its connection to another protocol: the connection is not pooled, and the
// next request gets a fresh one.
func TestAppTransportDoesNotPoolSwitchedConnection(t *testing.T) {
	var conns atomic.Int64
	addr := rawApp(t, func(c net.Conn) {
		n := conns.Add(1)
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			if n == 1 {
				// Switch, then speak something that is not HTTP.
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\nRAW-PROTOCOL-BYTES\r\n")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	at, _ := newAppTransport(t, addr)
	if code, _, err := do(t, at, "GET", "http://"+addr+"/switch", nil); err != nil || code != http.StatusSwitchingProtocols {
		t.Fatalf("first request: %d, %v; want the 101", code, err)
	}
	if code, body, err := do(t, at, "GET", "http://"+addr+"/next", nil); err != nil || code != 200 || body != "ok" {
		t.Fatalf("request after a 101: %d %q, %v; want 200 ok on a fresh connection", code, body, err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (the switched one not reused)", n)
	}
}

// writeRequest must say what net/http's Request.Write says.
func TestWriteRequestMatchesNetHTTP(t *testing.T) {
	mk := func(method, url string, h map[string][]string, close bool) *http.Request {
		r, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range h {
			r.Header[k] = v
		}
		r.Close = close
		return r
	}
	cases := []*http.Request{
		mk("GET", "http://app:8080/a/b?x=1&y=%20", map[string][]string{"X-Request-Id": {"abc"}, "Accept": {"a", "b"}}, false),
		mk("GET", "http://app/", map[string][]string{"User-Agent": {""}}, false),
		mk("DELETE", "http://app/item/1", map[string][]string{"User-Agent": {"curl/8"}, "X-Pad": {"  padded  "}}, true),
		mk("POST", "http://app/empty", nil, false),
		mk("OPTIONS", "http://[::1]:80/%2Fescaped", nil, false),
	}
	host := mk("GET", "http://app/", nil, false)
	host.Host = "override.example:9080"
	cases = append(cases, host)
	for _, req := range cases {
		var ours, theirs bytes.Buffer
		bw := bufio.NewWriter(&ours)
		if err := writeRequest(bw, req); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		if err := req.Write(&theirs); err != nil {
			t.Fatal(err)
		}
		a, err := http.ReadRequest(bufio.NewReader(&ours))
		if err != nil {
			t.Fatalf("%s %s: ours does not parse: %v\n%s", req.Method, req.URL, err, ours.String())
		}
		b, _ := http.ReadRequest(bufio.NewReader(bytes.NewReader(theirs.Bytes())))
		if a.Method != b.Method || a.RequestURI != b.RequestURI || a.Host != b.Host || a.ContentLength != b.ContentLength || a.Close != b.Close || !reflect.DeepEqual(a.Header, b.Header) {
			t.Errorf("%s %s:\nours:   %q\ntheirs: %q", req.Method, req.URL, ours.String(), theirs.String())
		}
	}
	bad := mk("GET", "http://app/", map[string][]string{"X-Bad": {"a\r\nInjected: 1"}}, false)
	if err := writeRequest(bufio.NewWriter(io.Discard), bad); err == nil {
		t.Fatal("a header value with CR LF was written")
	}
}

// rawApp serves every connection accepted on a loopback listener with serve,
// each on its own goroutine, until the test ends; it returns the address.
func rawApp(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}
