package h1

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serve runs srv on a loopback listener until the test ends; it returns the
// address and a count of accepted connections.
func serve(t *testing.T, srv *Server) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go srv.ServeConn(ctx, c)
		}
	}()
	return ln.Addr().String(), &accepted
}

// raw sends req as bytes and returns everything the server sends until it
// closes the connection or goes quiet for wait.
func raw(t *testing.T, addr, req string, wait time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	b, _ := io.ReadAll(c)
	return string(b)
}

func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/len":
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "fixed")
		case "/big":
			io.WriteString(w, strings.Repeat("x", 10000))
		case "/echo":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			w.Write(b)
		case "/ignore-body":
			io.WriteString(w, "ignored")
		case "/close":
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		case "/trailer":
			w.Header().Set("Trailer", "Grpc-Status")
			w.WriteHeader(200)
			io.WriteString(w, "body")
			w.Header().Set("Grpc-Status", "7")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		case "/inject":
			w.Header().Set("X-Evil", "a\r\nSet-Cookie: pwned=1")
			io.WriteString(w, "ok")
		case "/panic":
			panic(http.ErrAbortHandler)
		default:
			_, local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			fmt.Fprintf(w, "%s %s host=%s remote-set=%v", r.Method, r.URL.RequestURI(), r.Host, r.RemoteAddr != "" && local)
		}
	})
}

func TestServerKeepAliveAndFraming(t *testing.T) {
	addr, accepted := serve(t, &Server{Handler: echoHandler()})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	for i := 0; i < 20; i++ {
		resp, err := client.Get("http://" + addr + "/p?q=1")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "GET /p?q=1 host=" + addr + " remote-set=true"; string(b) != want {
			t.Fatalf("body %q, want %q", b, want)
		}
		if resp.ContentLength != int64(len(b)) || resp.TransferEncoding != nil {
			t.Fatalf("a small body of unknown length should go with Content-Length: got %d, %v", resp.ContentLength, resp.TransferEncoding)
		}
		if resp.Header.Get("Date") == "" {
			t.Fatal("no Date header")
		}
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("20 requests took %d connections, want 1 (keep-alive)", n)
	}
	resp, err := client.Get("http://" + addr + "/big")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(b) != 10000 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("a large body of unknown length: %d bytes, transfer encoding %v; want 10000 chunked", len(b), resp.TransferEncoding)
	}
	resp, err = client.Get("http://" + addr + "/len")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "fixed" || resp.ContentLength != 5 {
		t.Fatalf("declared length: %q %d", b, resp.ContentLength)
	}
	resp, err = client.Head("http://" + addr + "/len")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ContentLength != 5 {
		t.Fatalf("HEAD keeps the declared length: %d", resp.ContentLength)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("took %d connections, want 1", n)
	}
}

func TestServerRequestBodies(t *testing.T) {
	addr, accepted := serve(t, &Server{Handler: echoHandler()})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, ExpectContinueTimeout: 5 * time.Second}}
	defer client.CloseIdleConnections()
	post := func(path string, body io.Reader, expect bool) string {
		req, _ := http.NewRequest("POST", "http://"+addr+path, body)
		if expect {
			req.Header.Set("Expect", "100-continue")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := post("/echo", strings.NewReader("hello"), false); got != "hello" {
		t.Fatalf("Content-Length body: %q", got)
	}
	// A reader of unknown length goes chunked.
	if got := post("/echo", io.MultiReader(strings.NewReader("chunk"), strings.NewReader("ed")), false); got != "chunked" {
		t.Fatalf("chunked body: %q", got)
	}
	if got := post("/echo", strings.NewReader(strings.Repeat("b", 1000)), true); got != strings.Repeat("b", 1000) {
		t.Fatalf("100-continue body: %d bytes", len(got))
	}
	// A small body the handler ignores is drained; the connection is kept.
	if got := post("/ignore-body", strings.NewReader("unread"), false); got != "ignored" {
		t.Fatalf("ignored body: %q", got)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("took %d connections, want 1", n)
	}
	// A large one is not read: that connection closes.
	if got := post("/ignore-body", bytes.NewReader(make([]byte, 2<<20)), false); got != "ignored" {
		t.Fatalf("ignored large body: %q", got)
	}
	post("/", nil, false)
	if n := accepted.Load(); n != 2 {
		t.Fatalf("after a 2 MiB body left unread the connection should close: %d connections, want 2", n)
	}
}

// A client that stalls in a body the handler never reads still gets its
// answer: at once when the response closes the connection anyway, and at the
// header timeout otherwise, with the connection closed.
func TestServerStalledUnreadBody(t *testing.T) {
	addr, _ := serve(t, &Server{Handler: echoHandler(), HeaderTimeout: 300 * time.Millisecond})
	for _, c := range []struct {
		path, want string
		within     time.Duration
	}{{"/close", "bye", 200 * time.Millisecond}, {"/ignore-body", "ignored", 2 * time.Second}} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		// 1,000 bytes announced, 10 sent, then nothing.
		if _, err := io.WriteString(conn, "POST "+c.path+" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v after %v", c.path, err, time.Since(start))
		}
		b, _ := io.ReadAll(resp.Body)
		took := time.Since(start)
		conn.Close()
		if string(b) != c.want || !resp.Close || took > c.within {
			t.Fatalf("%s: %q (close %v) after %v; want %q, the connection closed, within %v", c.path, b, resp.Close, took, c.want, c.within)
		}
	}
}

func TestServerRawProtocol(t *testing.T) {
	addr, _ := serve(t, &Server{Handler: echoHandler(), MaxHeaderBytes: 1024})
	cases := []struct {
		name, req string
		want      []string // substrings, in order
		not       []string
	}{
		{"HTTP/2.0 on an HTTP/1 connection", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", []string{"HTTP/1.1 505"}, []string{"GET / host=x"}},
		{"HTTP/3.7", "GET / HTTP/3.7\r\nHost: x\r\n\r\n", []string{"HTTP/1.1 505"}, []string{"GET / host=x"}},
		{"pipelined", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"HTTP/1.1 200", "GET /a host=x", "HTTP/1.1 200", "Connection: close", "GET /b host=x"}, nil},
		// Transfer-Encoding wins over Content-Length (RFC 9112 6.3), as in net/http.
		{"length and chunked", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"HTTP/1.1 200", "Content-Length: 0\r\n", "GET /next"}, nil},
		{"two lengths", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
			[]string{"HTTP/1.1 400"}, []string{"HTTP/1.1 200"}},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", []string{"HTTP/1.1 400", "missing required Host"}, nil},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", []string{"HTTP/1.1 400"}, []string{"HTTP/1.1 200"}},
		{"bad header name", "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", []string{"HTTP/1.1 400"}, []string{"HTTP/1.1 200"}},
		{"headers too large", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 8000) + "\r\n\r\n", []string{"HTTP/1.1 431"}, []string{"HTTP/1.1 200"}},
		{"HTTP/1.0 closes", "GET /x HTTP/1.0\r\n\r\n", []string{"HTTP/1.1 200", "Connection: close", "GET /x"}, nil},
		{"HTTP/1.0 keep-alive", "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /y HTTP/1.0\r\n\r\n",
			[]string{"Connection: keep-alive", "GET /x", "GET /y"}, nil},
		{"response splitting", "GET /inject HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", []string{"X-Evil: a  Set-Cookie: pwned=1\r\n"}, []string{"\r\nSet-Cookie"}},
		{"expectation failed", "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\na", []string{"HTTP/1.1 417"}, []string{"HTTP/1.1 200"}},
		{"100-continue", "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
			[]string{"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 200", "hi"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := raw(t, addr, tc.req, 2*time.Second)
			rest := got
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("want %q (in order) in:\n%s", w, got)
				}
				rest = rest[i+len(w):]
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Fatalf("unexpected %q in:\n%s", n, got)
				}
			}
		})
	}
}

func TestServerTrailers(t *testing.T) {
	addr, _ := serve(t, &Server{Handler: echoHandler()})
	resp, err := http.Get("http://" + addr + "/trailer")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "body" || resp.Trailer.Get("Grpc-Status") != "7" || resp.Trailer.Get("X-Late") != "late" {
		t.Fatalf("body %q trailers %v", b, resp.Trailer)
	}
}

func TestServerHijack(t *testing.T) {
	addr, _ := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo:" + line)
		brw.Flush()
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("%v %v", resp, err)
	}
	io.WriteString(c, "ping\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || line != "echo:ping\n" {
		t.Fatalf("%q %v", line, err)
	}
}

func TestServerClientGoneCancels(t *testing.T) {
	cancelled := make(chan error, 1)
	addr, _ := serve(t, &Server{WatchAfter: 10 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/quick" {
			time.Sleep(30 * time.Millisecond) // watched, then done: the watch is re-armed next time
			return
		}
		select {
		case <-r.Context().Done():
			cancelled <- r.Context().Err()
		case <-time.After(10 * time.Second):
			cancelled <- nil
		}
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		io.WriteString(c, "GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("quick request %d: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	c.Close()
	select {
	case err := <-cancelled:
		if err == nil {
			t.Fatal("the handler ran to its end: the client going away did not cancel it")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("handler never returned")
	}
}

func TestServerSurvivesPanicAndSlowClients(t *testing.T) {
	addr, _ := serve(t, &Server{Handler: echoHandler(), HeaderTimeout: 200 * time.Millisecond})
	if got := raw(t, addr, "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n", 2*time.Second); got != "" {
		t.Fatalf("a panicking handler's connection should just close, got %q", got)
	}
	// A client that never finishes its headers is cut off.
	start := time.Now()
	got := raw(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n", 5*time.Second)
	if got != "" || time.Since(start) > 3*time.Second {
		t.Fatalf("slow client: got %q after %v, want the connection closed at the header timeout", got, time.Since(start))
	}
	// So is one that, after a first request on a kept-alive connection,
	// starts a second and never finishes its headers: the header timeout
	// applies then too, not the idle timeout (two minutes).
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	start = time.Now()
	_, _ = io.WriteString(c, "GET /second HTTP/1.1\r\nHost: x\r\n")
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 || time.Since(start) > 3*time.Second {
		t.Fatalf("slow second request: got %q, %v after %v; want the connection closed at the header timeout", rest, err, time.Since(start))
	}
	// And the server still answers.
	if got := raw(t, addr, "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2*time.Second); !strings.Contains(got, "GET /ok") {
		t.Fatalf("after a panic: %q", got)
	}
}

func TestServerHandsHTTP2On(t *testing.T) {
	got := make(chan string, 1)
	addr, _ := serve(t, &Server{Handler: echoHandler(), HTTP2: func(c net.Conn) {
		defer c.Close()
		b := make([]byte, len(h2Preface)+4)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadFull(c, b)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The preface arrives in two pieces, then frames.
	c.Write(h2Preface[:5])
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, string(h2Preface[5:])+"more")
	select {
	case s := <-got:
		if s != string(h2Preface)+"more" {
			t.Fatalf("HTTP2 got %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the h2c connection was not handed on")
	}
	// A request starting with P that is not the preface stays here.
	if r := raw(t, addr, "PUT /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 2*time.Second); !strings.Contains(r, "PUT /x") {
		t.Fatalf("PUT: %q", r)
	}
}

func TestServerShutdownClosesIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err == nil {
			(&Server{Handler: echoHandler()}).ServeConn(ctx, c)
		}
		close(done)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(resp, err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("an idle connection outlived the server's context")
	}
}

// memConn is a connection whose client sends in and then closes; what the
// server writes is kept.
type memConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (m *memConn) Read(p []byte) (int, error)         { return m.in.Read(p) }
func (m *memConn) Write(p []byte) (int, error)        { return m.out.Write(p) }
func (m *memConn) Close() error                       { return nil }
func (m *memConn) LocalAddr() net.Addr                { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80} }
func (m *memConn) RemoteAddr() net.Addr               { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000} }
func (m *memConn) SetDeadline(t time.Time) error      { return nil }
func (m *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (m *memConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzServeConn: whatever a client sends, the server neither panics nor
// hangs, and every answer it writes is a well-formed HTTP/1.1 response.
func FuzzServeConn(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /big HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
		"GET /trailer HTTP/1.0\r\n\r\n",
		"HEAD /len HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /inject HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	srv := &Server{Handler: echoHandler(), MaxHeaderBytes: 2048, WatchAfter: time.Hour}
	f.Fuzz(func(t *testing.T, in []byte) {
		if bytes.Contains(in, []byte("/panic")) {
			return // the handler panics on purpose there
		}
		c := &memConn{in: bytes.NewReader(in)}
		srv.ServeConn(context.Background(), c)
		br := bufio.NewReader(&c.out)
		if bytes.Contains(bytes.ToUpper(in), []byte("HEAD")) {
			return // a HEAD answer's length describes a body that is not sent
		}
		for {
			if _, err := br.Peek(1); err != nil {
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("malformed response: %v\nin: %q\nout: %q", err, in, c.out.String())
			}
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				t.Fatalf("malformed body: %v\nin: %q", err, in)
			}
			resp.Body.Close()
		}
	})
}

// A handler may leave a goroutine reading its request body after it returned,
// as net/http's Transport does when it forwards the body from its own
// goroutine. That goroutine must then get an error: not read the connection's
// buffer after the server has given it back (the process used to crash on a
// nil reader, and a reused buffer would have fed it another client's bytes).
// The connections here cannot half-close, as none could through the inbound
// listener's wrappers, so the server closes them at once.
func TestServerBodyReadAfterHandlerReturns(t *testing.T) {
	errs := make(chan error, 8)
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		reading := make(chan struct{})
		go func() {
			buf := make([]byte, 512)
			_, err := r.Body.Read(buf)
			close(reading)
			if err != nil {
				errs <- err
				return
			}
			time.Sleep(200 * time.Millisecond) // the handler has returned and the server answered
			for err == nil {
				_, err = r.Body.Read(buf)
			}
			errs <- err
		}()
		<-reading
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(ctx, noHalfClose{c})
		}
	}()
	addr := ln.Addr().String()
	for i := range 3 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			// Far more body than the server drains, as fast as it takes it.
			_, _ = io.WriteString(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
			chunk := make([]byte, 64<<10)
			for {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
			}
		}()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Fatalf("request %d: %d (close %v); want 413 and the connection closed", i, resp.StatusCode, resp.Close)
		}
		// Other connections take the buffers while the late reader waits.
		if out := raw(t, addr, "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", time.Second); !strings.Contains(out, "\r\n\r\nok") {
			t.Fatalf("request %d: another client got %q", i, out)
		}
		select {
		case err := <-errs:
			if err == nil || err == io.EOF {
				t.Fatalf("request %d: the late reader got %v, as if the body had ended", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("request %d: the late reader is still reading", i)
		}
		conn.Close()
	}
}

// noHalfClose hides the connection's CloseWrite.
type noHalfClose struct{ net.Conn }

// A reverse proxy whose upstream dies in the middle of a chunked body aborts
// the response (the client sees the connection cut, no last chunk), as under
// net/http's server: ReverseProxy aborts only when it sees a server in the
// request's context.
func TestServerReverseProxyAbortsBrokenBody(t *testing.T) {
	upstream := rawApp(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			c.Close()
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nfirst half of th")
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	target, _ := url.Parse("http://" + upstream)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	addr, _ := serve(t, &Server{Handler: rp})
	out := raw(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 2*time.Second)
	if !strings.Contains(out, "first half of th") || strings.Contains(out, "\r\n0\r\n") {
		t.Fatalf("got %q; want the first half and the connection cut, without a last chunk", out)
	}
}

// A handler whose body is still being read on another goroutine (net/http's
// Transport, proxying) can close the body and return, as
// httputil.ReverseProxy does, while the client has sent only part of its
// body: Close must not wait behind that read (it used to, and the handler
// never returned).
func TestServerBodyCloseWhileReadInFlight(t *testing.T) {
	reading, closed := make(chan struct{}), make(chan struct{})
	addr, _ := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		go func() {
			buf := make([]byte, 1)
			_, _ = r.Body.Read(buf)
			close(reading)
			_, _ = io.Copy(io.Discard, r.Body) // blocks: the rest never comes
		}()
		<-reading
		time.Sleep(50 * time.Millisecond) // the copy is blocked in Read by now
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte("no"))
		r.Body.Close()
		close(closed)
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Body.Close still blocked after 5 s: the handler cannot return")
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || string(b) != "no" {
		t.Fatalf("%d %q; want 403 no", resp.StatusCode, b)
	}
	// The rest of the body cannot be told from a next request: the server
	// closes the connection (its status line had gone out already).
	if _, err := br.Peek(1); err != io.EOF {
		t.Fatalf("after the response: %v; want the connection closed", err)
	}
}
