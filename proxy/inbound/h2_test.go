package inbound

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// HTTP/2 with prior knowledge, on connections whose ALPN did not say h2: a
// peer's mTLS with Istio's ALPN "istio" (what an Istio sidecar offers for
// any stream), on an auto port and on an HTTP port, and plaintext h2c on a
// PERMISSIVE port. Each is served as HTTP/2, and authorization still sees
// the peer's certificate.
func TestInboundHTTP2WithoutH2ALPN(t *testing.T) {
	istio := func(c *tls.Config) *tls.Config { c = c.Clone(); c.NextProtos = []string{"istio"}; return c }
	for _, proto := range []string{ProtocolAuto, "http"} {
		e := start(t, ModePermissive, func(c *Config) { c.Protocol = proto })
		for _, tc := range []struct {
			name   string
			tls    *tls.Config
			path   string
			status int
		}{
			{"mTLS with ALPN istio, the peer the policy allows", istio(e.client), "/get", 200},
			{"mTLS with ALPN istio, a peer the policy does not name", istio(e.other), "/get", 403},
			{"plaintext h2c on a public path", nil, "/public/x", 200},
			{"plaintext h2c, no peer identity", nil, "/get", 403},
		} {
			t.Run(proto+"/"+tc.name, func(t *testing.T) {
				// HTTP/2 with prior knowledge over whatever the dial
				// returns: the transport sees an "http" connection.
				p := new(http.Protocols)
				p.SetUnencryptedHTTP2(true)
				tr := &http.Transport{Protocols: p, DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
					if tc.tls != nil {
						return (&tls.Dialer{Config: tc.tls}).DialContext(ctx, "tcp", addr)
					}
					return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
				}}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				cc, err := tr.NewClientConn(ctx, "http", e.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				req, _ := http.NewRequest("GET", "http://httpbin.foo"+tc.path, nil)
				resp, err := cc.RoundTrip(req)
				if err != nil {
					t.Fatalf("HTTP/2: %v", err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.status || resp.ProtoMajor != 2 {
					t.Fatalf("status %d (HTTP/%d) %q, want %d over HTTP/2", resp.StatusCode, resp.ProtoMajor, body, tc.status)
				}
			})
		}
	}
}

// The app is down: a gRPC client gets what Envoy's local reply for gRPC
// gives, a trailers-only UNAVAILABLE, not an HTTP 503 in text.
func TestInboundGRPCAppDownIsUnavailable(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	e := start(t, ModePermissive, func(c *Config) { c.App = addr })
	h2 := e.client.Clone()
	h2.NextProtos = []string{"h2", "istio"}
	tr := &http.Transport{TLSClientConfig: h2, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("POST", "https://"+e.addr+"/echo.Echo/Who", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Host = "httpbin.foo"
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.ReadAll(resp.Body)
	status := resp.Header.Get("grpc-status") + resp.Trailer.Get("grpc-status")
	if resp.StatusCode != 200 || status != "14" || resp.Header.Get("content-type") != "application/grpc" {
		t.Fatalf("got %d grpc-status %q content-type %q; want 200, 14 (UNAVAILABLE), application/grpc",
			resp.StatusCode, status, resp.Header.Get("content-type"))
	}
}
