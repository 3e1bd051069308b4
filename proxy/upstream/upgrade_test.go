package upstream

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rampart-mesh/rampart/ca/catest"
)

// TestUpgradeBodyIsTheConnection: after a 101 the response body is the
// connection both ways (net/http's io.ReadWriteCloser), so a proxy can tunnel
// a WebSocket through it; closing it frees the breaker slot.
func TestUpgradeBodyIsTheConnection(t *testing.T) {
	e := newEnv(t)
	ws := newBackend(t, "ws", func(s *httptest.Server) {
		s.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			c, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
			_ = brw.Flush()
			line, _ := brw.ReadString('\n')
			_, _ = io.WriteString(brw, "echo "+line)
			_ = brw.Flush()
		})
	})
	e.update(t, staticCluster("ws", lbEndpoint(t, ws.addr)))
	c := e.cluster(t, "ws")
	ctx, cancel := context.WithTimeout(context.Background(), catest.WaitFor)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://svc.test/", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "test")
	resp, _, err := c.RoundTrip(req, Request{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	rw, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body is %T, not an io.ReadWriteCloser", resp.Body)
	}
	if _, err := io.WriteString(rw, "hello\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(rw).ReadString('\n')
	if err != nil || got != "echo hello\n" {
		t.Errorf("read %q %v, want %q", got, err, "echo hello\n")
	}
	rw.Close()
	if n := c.pool.requests.Load(); n != 0 {
		t.Errorf("%d requests still counted after the tunnel closed", n)
	}
}
