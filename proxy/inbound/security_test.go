package inbound

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// raw sends bytes on a plaintext connection (PERMISSIVE port) and returns every
// response the sidecar writes, and the requests the app received.
func raw(t *testing.T, e *env, req string) ([]*http.Response, int) {
	t.Helper()
	before := len(e.seen)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	br := bufio.NewReader(c)
	var resps []*http.Response
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		resps = append(resps, resp)
	}
	time.Sleep(50 * time.Millisecond) // let any forwarded request reach the app
	return resps, len(e.seen) - before
}

// Request smuggling attempts against a DENY on /admin. The sidecar frames
// requests itself and re-frames what it forwards, so each request it reads is
// authorized on its own: the ambiguous ones get 400, and a request hidden behind
// another is decided (and denied) like any other. The app never sees /admin.
func TestInboundSmuggling(t *testing.T) {
	e := start(t, ModePermissive)
	for _, tc := range []struct{ name, req string }{
		{"CL and TE together", "POST /public/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"two different Content-Lengths", "POST /public/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"obs-fold header", "GET /public/x HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n"},
		{"TE with a bad coding", "POST /public/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
		{"space before the colon", "GET /public/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := e.drainPaths()
			resps, _ := raw(t, e, tc.req)
			if len(resps) == 0 {
				t.Fatal("no response at all")
			}
			for _, r := range resps {
				if r.StatusCode != 200 && r.StatusCode != 400 && r.StatusCode != 403 && r.StatusCode != 501 {
					t.Fatalf("unexpected status %d", r.StatusCode)
				}
			}
			for _, p := range append(paths, e.drainPaths()...) {
				if strings.Contains(p, "admin") {
					t.Fatalf("the app received %q", p)
				}
			}
		})
	}
}

// Encoding tricks to reach /admin are normalized (BASE, Istio's default) and
// denied. An encoded slash stays encoded under BASE, as in Istio: that path is
// authorized as the literal "/public/..%2fadmin" and the app receives exactly
// that, never "/admin" (DECODE_AND_MERGE_SLASHES decodes it first).
func TestInboundPathTricks(t *testing.T) {
	e := start(t, ModePermissive)
	for _, p := range []string{"/admin", "/./admin", "/public/../admin", "/public/%2e%2e/admin", "/%61dmin", "/ADMIN/../admin", "/public/..%2fadmin"} {
		e.drainPaths()
		resps, _ := raw(t, e, "GET "+p+" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
		if len(resps) != 1 {
			t.Fatalf("%s: %d responses", p, len(resps))
		}
		for _, got := range e.drainPaths() {
			if got == "/admin" || strings.HasPrefix(got, "/admin/") {
				t.Fatalf("%s: the app received %q", p, got)
			}
		}
		if p != "/public/..%2fadmin" && resps[0].StatusCode != 403 && resps[0].StatusCode != 400 {
			t.Fatalf("%s: status %d, want 403 or 400", p, resps[0].StatusCode)
		}
	}
}

// A client that never finishes its headers is cut off.
func TestInboundSlowClient(t *testing.T) {
	e := start(t, ModePermissive, func(c *Config) { c.HeaderTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /public/x HTTP/1.1\r\nHost: h\r\n") // no end of headers
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v (want the sidecar to close the connection)", err)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatal("the slow client was not cut off")
	}
}

// Past MaxConnections, new connections are closed at once and counted.
func TestInboundConnectionLimit(t *testing.T) {
	e := start(t, ModePermissive, func(c *Config) { c.MaxConnections = 3 })
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond) // let the sidecar accept them
	extra, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("the connection past the limit was served (read %d, %v)", n, err)
	}
	// Closing one frees a slot.
	held[0].Close()
	held = held[1:]
	time.Sleep(100 * time.Millisecond)
	resps, _ := raw(t, e, "GET /public/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	if len(resps) != 1 || resps[0].StatusCode != 200 {
		t.Fatalf("after a slot was freed: %d responses", len(resps))
	}
}
