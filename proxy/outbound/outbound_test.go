package outbound

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/rampart-mesh/rampart/proxy/xds"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// newOutbound runs an outbound server on loopback whose port 80 routes every
// request to the plaintext cluster "up" at upAddr. It returns the server's
// address and its log.
func newOutbound(t *testing.T, upAddr string) (string, *catest.SyncBuffer) {
	t.Helper()
	return newOutboundWith(t, upAddr, nil, nil)
}

// newOutboundWith is newOutbound with the route's action and the cluster
// changed by the functions given (if set).
func newOutboundWith(t *testing.T, upAddr string, modRoute func(*routev3.RouteAction), modCluster func(*clusterv3.Cluster)) (string, *catest.SyncBuffer) {
	t.Helper()
	ups := newUpstreamsWith(t, map[string]string{"up": upAddr}, modCluster)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := &catest.SyncBuffer{}
	s, err := New(Config{Listener: lis, Upstreams: ups, Log: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hcm := &hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "80"}}}
	l := &listenerv3.Listener{
		Name: "0.0.0.0_80",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}}},
	}
	rc := &routev3.RouteConfiguration{Name: "80", VirtualHosts: []*routev3.VirtualHost{{Name: "up", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "up"}}},
		}}}}}
	if modRoute != nil {
		modRoute(rc.VirtualHosts[0].Routes[0].GetRoute())
	}
	apply, err := s.Prepare(&xds.Resources{
		Listeners: map[string]*listenerv3.Listener{l.Name: l},
		Routes:    map[string]*routev3.RouteConfiguration{rc.Name: rc},
	})
	if err != nil {
		t.Fatal(err)
	}
	apply()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return lis.Addr().String(), log
}

// cutUpstream is an HTTP/1.1 upstream that dies in the middle of a chunked
// body: to every request it sends the head of a 200 and the data of a first
// chunk, then, once cut is called, resets the connection (SO_LINGER 0), as a
// server that crashes does.
func cutUpstream(t *testing.T) (addr string, cut func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{})
	cut = sync.OnceFunc(func() { close(ch) })
	var wg sync.WaitGroup
	t.Cleanup(func() { cut(); lis.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nfirst half of th"); err != nil {
					return
				}
				<-ch
				_ = c.(*net.TCPConn).SetLinger(0)
			})
		}
	})
	return lis.Addr().String(), cut
}

// The first half of the body cutUpstream sends, and how a chunked body ends.
const (
	firstHalf = "first half of th"
	lastChunk = "\r\n0\r\n"
)

// rawH1 sends req on its own connection and reads the answer as bytes,
// calling cut once the first half of the body is in. It returns what came and
// the error that ended the reading, nil if the body ended with its last chunk.
func rawH1(req string) func(*testing.T, string, func()) (string, error) {
	return func(t *testing.T, addr string, cut func()) (string, error) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, 4096)
		for cutDone := false; !bytes.Contains(got, []byte(lastChunk)); {
			if !cutDone && bytes.Contains(got, []byte(firstHalf)) {
				cut()
				cutDone = true
			}
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				return string(got), err
			}
		}
		return string(got), nil
	}
}

// h2cGet makes a GET over h2c (the path net/http's server serves) and reads
// the body, calling cut once the first half is in. It returns what came and
// the error that ended the body, nil if the stream ended cleanly.
func h2cGet(t *testing.T, addr string, cut func()) (string, error) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "up.test"
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Fatalf("got %s %s, want HTTP/2.0 200", resp.Proto, resp.Status)
	}
	first := make([]byte, len(firstHalf))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		return string(first), err
	}
	cut()
	rest, err := io.ReadAll(resp.Body)
	return string(first) + string(rest), err
}

// TestUpstreamResetMidBodyAbortsResponse: when the upstream dies in the middle
// of a body of undeclared length, the client must see the response break off
// (the connection cut, the stream reset), never a complete message with a
// short body. GET goes upstream through h1.Transport, POST with a body
// through net/http's; h2c clients are served by net/http's server.
func TestUpstreamResetMidBodyAbortsResponse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fetch func(t *testing.T, addr string, cut func()) (string, error)
	}{
		{"GET over HTTP/1.1", rawH1("GET / HTTP/1.1\r\nHost: up.test\r\n\r\n")},
		{"POST with a body over HTTP/1.1", rawH1("POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 5\r\n\r\nhello")},
		{"GET over h2c", h2cGet},
	} {
		t.Run(tc.name, func(t *testing.T) {
			upAddr, cut := cutUpstream(t)
			addr, log := newOutbound(t, upAddr)
			got, err := tc.fetch(t, addr, cut)
			if !bytes.Contains([]byte(got), []byte(firstHalf)) {
				t.Fatalf("received %q (%v), want the first half of the body", got, err)
			}
			var ne net.Error
			switch {
			case err == nil:
				t.Fatalf("the response ended as if complete after the upstream reset; received %q", got)
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("the response neither ended nor broke off (%v); received %q", err, got)
			}
			waitLog(t, log, "flags=UC")
		})
	}
}

// A response the route would retry, when the retry budget (the cluster's
// max_retries) says no, reaches the client whole with flag UO, as Envoy
// forwards the upstream's answer on a retry overflow. It used to be read away
// before the budget was asked, and the client got its head with no body.
func TestRetryOverflowForwardsResponse(t *testing.T) {
	var calls atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "busy from upstream")
	}))
	defer up.Close()
	addr, log := newOutboundWith(t, strings.TrimPrefix(up.URL, "http://"), func(ra *routev3.RouteAction) {
		ra.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2)}
	}, func(c *clusterv3.Cluster) {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(0)}}}
	})
	req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
	req.Host = "up"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 503 || string(body) != "busy from upstream" {
		t.Fatalf("%d %q %v; want the upstream's 503 with its body", resp.StatusCode, body, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("the upstream was called %d times; want once (no retry budget)", n)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(log.String(), "flags=UO") {
		if time.Now().After(deadline) {
			t.Fatalf("access log lacks flags=UO:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
