package outbound

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// refusingAddr is a loopback address that refuses connections for the whole
// test: a socket bound there and never listening holds the port, so no other
// listener (another test's, a mirror's) can be given it, as one closed after
// picking a free port could.
func refusingAddr(t *testing.T) *net.TCPAddr {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}
}

// deadFirst returns a cluster change that puts, in front of the endpoints of
// cluster name, one that refuses connections. Round robin picks it first for
// the first request, and since each retry (previous_hosts) moves the counter
// past the live endpoint, for every request after that too.
func deadFirst(t *testing.T, name string, h2 bool) func(*clusterv3.Cluster) {
	t.Helper()
	addr := refusingAddr(t)
	return func(c *clusterv3.Cluster) {
		if c.Name != name {
			return
		}
		eps := c.LoadAssignment.Endpoints[0]
		dead := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
			Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: addr.IP.String(),
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(addr.Port)}}}}}}}
		eps.LbEndpoints = append([]*endpointv3.LbEndpoint{dead}, eps.LbEndpoints...)
		if h2 {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(t, &httpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
				}},
			})}
		}
	}
}

// connectFailureRetry is the heart of Istio's default retry policy.
func connectFailureRetry() *routev3.RetryPolicy {
	return &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream", NumRetries: wrapperspb.UInt32(2),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}},
		RetryBackOff:       &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
}

// h2cClient is a client that speaks HTTP/2 without TLS, as a gRPC client in
// the mesh does to its sidecar.
func h2cClient(t *testing.T) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// A body of unknown length (chunked, HTTP/2 without content-length) that
// the first attempt never read, because it could not connect, goes whole to
// the retry, and to the mirror, as one of known length does.
func TestStreamedBodyRetriedAfterConnectFailure(t *testing.T) {
	const requests = 3
	for _, tc := range []struct {
		name    string
		h2c     bool
		chunked bool
		mirror  bool
	}{
		{name: "known length"},
		{name: "chunked", chunked: true},
		{name: "chunked and mirrored", chunked: true, mirror: true},
		{name: "h2c without content-length", h2c: true, chunked: true},
		{name: "h2c without content-length and mirrored", h2c: true, chunked: true, mirror: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bodies := make(chan string, requests)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				bodies <- string(b)
			}))
			defer up.Close()
			shadowed := make(chan string, requests)
			shadow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				shadowed <- string(b)
			}))
			defer shadow.Close()
			a := clusterAction("up")
			a.Route.RetryPolicy = connectFailureRetry()
			if tc.mirror {
				a.Route.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "shadow"}}
			}
			addr, log := routeServerWith(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://"), "shadow": strings.TrimPrefix(shadow.URL, "http://")},
				deadFirst(t, "up", false), &routev3.Route{Action: a})
			client := http.DefaultClient
			if tc.h2c {
				client = h2cClient(t)
			}
			for i := range requests {
				want := "request body " + strconv.Itoa(i)
				var rd io.Reader = strings.NewReader(want)
				if tc.chunked {
					rd = io.MultiReader(rd) // hides the length
				}
				req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/x", rd)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = "up"
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("request %d: got %d (%s), want 200 from the live endpoint after a retry", i, resp.StatusCode, resp.Header.Get("x-rampart-response-flags"))
				}
				if got := <-bodies; got != want {
					t.Errorf("request %d: the live endpoint received %q, want %q", i, got, want)
				}
				if !tc.mirror {
					continue
				}
				select {
				case got := <-shadowed:
					if got != want {
						t.Errorf("request %d: the mirror received %q, want %q", i, got, want)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("request %d: not mirrored", i)
				}
			}
			// Every request tried the dead endpoint first: the test tests a retry.
			if n := strings.Count(log.String(), "attempts=2"); n != requests {
				t.Errorf("%d of %d requests were retried, want all; log:\n%s", n, requests, log.String())
			}
		})
	}
}

// A gRPC-style stream whose client waits for each answer before it sends
// more is retried after a connect failure, and the retry streams: the
// sidecar does not wait for the end of the request body.
func TestStreamingBodyRetriedAfterConnectFailure(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			_, _ = io.WriteString(w, "echo "+sc.Text()+"\n")
			http.NewResponseController(w).Flush()
		}
	}))
	up.Config.Protocols = new(http.Protocols)
	up.Config.Protocols.SetUnencryptedHTTP2(true)
	up.Start()
	defer up.Close()
	a := clusterAction("up")
	a.Route.RetryPolicy = connectFailureRetry()
	addr, _ := routeServerWith(t, map[string]string{"up": strings.TrimPrefix(up.URL, "http://")}, deadFirst(t, "up", true), &routev3.Route{Action: a})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "up"
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d (%s), want 200 from the live endpoint after a retry", resp.StatusCode, resp.Header.Get("x-rampart-response-flags"))
	}
	answers := bufio.NewReader(resp.Body)
	for _, msg := range []string{"one", "two", "three"} {
		if _, err := io.WriteString(pw, msg+"\n"); err != nil {
			t.Fatalf("send %q: %v", msg, err)
		}
		got, err := answers.ReadString('\n')
		if err != nil {
			t.Fatalf("answer to %q: %v (stalled?)", msg, err)
		}
		if want := "echo " + msg + "\n"; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(answers); err != nil || len(rest) != 0 {
		t.Errorf("after the end of the request: %q, %v; want a clean end", rest, err)
	}
}
