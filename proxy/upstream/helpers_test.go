package upstream

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestMain(m *testing.M) { catest.MainWithLeakCheck(m) }

type staticSVID struct{ s *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.s, nil }

// mesh is a CA and the sidecar's identity under it.
type mesh struct {
	t  testing.TB
	ca *ca.Authority
	me *x509svid.SVID // the sidecar's SVID: spiffe://<td>/ns/foo/sa/sleep
}

func newMesh(t testing.TB, td string) *mesh {
	t.Helper()
	a, err := ca.New(ca.Config{StateDir: t.TempDir(), TrustDomain: spiffeid.RequireTrustDomainFromString(td)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return &mesh{t: t, ca: a, me: catest.IssueSVID(t, a, "foo", "sleep")}
}

// serverTLS is a peer sidecar's inbound TLS: its own SVID, client SVIDs from
// the mesh required, h2 preferred over http/1.1.
func (ms *mesh) serverTLS(ns, sa string) *tls.Config {
	svid := catest.IssueSVID(ms.t, ms.ca, ns, sa)
	c := tlsconfig.MTLSServerConfig(staticSVID{svid}, ms.ca.Bundle(), tlsconfig.AuthorizeAny())
	c.Certificates = []tls.Certificate{catest.TLSCertificate(svid)}
	c.NextProtos = []string{"h2", "http/1.1"}
	return c
}

type env struct {
	m     *Manager
	reg   *prometheus.Registry
	clock *clocktesting.FakeClock
	mesh  *mesh
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{reg: prometheus.NewRegistry(), clock: clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0)), mesh: newMesh(t, "cluster.local")}
	m, err := NewManager(Config{SVID: staticSVID{e.mesh.me}, Bundle: e.mesh.ca.Bundle(), Metrics: e.reg, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	e.m = m
	return e
}

func (e *env) update(t testing.TB, clusters ...*clusterv3.Cluster) {
	t.Helper()
	if err := e.m.Update(clusters, nil); err != nil {
		t.Fatal(err)
	}
}

func (e *env) cluster(t testing.TB, name string) *Cluster {
	t.Helper()
	c, ok := e.m.Cluster(name)
	if !ok {
		t.Fatalf("no cluster %q", name)
	}
	return c
}

// backend is an upstream server that answers with its name.
type backend struct {
	name   string
	addr   string
	srv    *httptest.Server
	opened atomic.Int64 // connections accepted
	closed atomic.Int64 // connections closed
	status atomic.Int64 // the status to answer; 0 is 200
	proto  atomic.Int64 // ProtoMajor of the last request
	peer   atomic.Value // the last client's SPIFFE ID, or ""
	hits   atomic.Int64
	// A request with X-Block: 1 signals entered, then waits for release.
	entered chan string
	release chan struct{}
}

type backendOpt func(*httptest.Server)

func withTLS(c *tls.Config) backendOpt { return func(s *httptest.Server) { s.TLS = c } }

func withH2C() backendOpt {
	return func(s *httptest.Server) {
		s.Config.Protocols = new(http.Protocols)
		s.Config.Protocols.SetHTTP1(true)
		s.Config.Protocols.SetUnencryptedHTTP2(true)
	}
}

func newBackend(t testing.TB, name string, opts ...backendOpt) *backend {
	t.Helper()
	b := &backend{name: name, entered: make(chan string, 16), release: make(chan struct{})}
	b.peer.Store("")
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.proto.Store(int64(r.ProtoMajor))
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			if id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0]); err == nil {
				b.peer.Store(id.String())
			}
		}
		if r.Header.Get("X-Block") == "1" {
			b.entered <- name
			select {
			case <-b.release:
			case <-r.Context().Done():
			}
		}
		if s := b.status.Load(); s != 0 {
			w.WriteHeader(int(s))
		}
		io.WriteString(w, name)
	}))
	b.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some tests
	b.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			b.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			b.closed.Add(1)
		}
	}
	for _, o := range opts {
		o(b.srv)
	}
	if b.srv.TLS != nil {
		b.srv.EnableHTTP2 = true
		b.srv.StartTLS()
	} else {
		b.srv.Start()
	}
	b.addr = b.srv.Listener.Addr().String()
	t.Cleanup(func() {
		b.unblock()
		b.srv.Close()
	})
	return b
}

func (b *backend) unblock() {
	select {
	case <-b.release:
	default:
		close(b.release)
	}
}

// get sends GET / through c and reads the answer.
func get(t testing.TB, c *Cluster, o Request, hdr ...string) (ep Endpoint, status int, body string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), catest.WaitFor)
	defer cancel()
	return getCtx(ctx, c, o, hdr...)
}

func getCtx(ctx context.Context, c *Cluster, o Request, hdr ...string) (Endpoint, int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://svc.test/", nil)
	if err != nil {
		return Endpoint{}, 0, "", err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, ep, err := c.RoundTrip(req, o)
	if err != nil {
		return ep, 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return ep, resp.StatusCode, string(b), err
}

// mustGet is get that fails the test on error and returns the backend name.
func mustGet(t testing.TB, c *Cluster, o Request) string {
	t.Helper()
	_, _, body, err := get(t, c, o)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func lbEndpoint(t testing.TB, addr string) *endpointv3.LbEndpoint {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: h, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
		}}},
	}}}
}

// istioMTLS marks an endpoint as Istio does for one with a sidecar.
func istioMTLS(ep *endpointv3.LbEndpoint) *endpointv3.LbEndpoint {
	ep.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		transportSocketMatchNS: {Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue("istio")}},
	}}
	return ep
}

func weighted(ep *endpointv3.LbEndpoint, w uint32) *endpointv3.LbEndpoint {
	ep.LoadBalancingWeight = wrapperspb.UInt32(w)
	return ep
}

func assignment(name string, eps ...*endpointv3.LbEndpoint) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}
}

func staticCluster(name string, eps ...*endpointv3.LbEndpoint) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(5 * time.Second),
		LoadAssignment:       assignment(name, eps...),
	}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

var ads = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}

// meshSocket is the transport socket Istio sends for ISTIO_MUTUAL.
func meshSocket(t testing.TB, sans ...string) *corev3.TransportSocket {
	t.Helper()
	return meshSocketALPN(t, []string{"istio-peer-exchange", "istio", "h2", "http/1.1"}, sans...)
}

// meshSocketALPN is meshSocket offering alpn; Istio offers
// "istio-peer-exchange", "istio" for TCP.
func meshSocketALPN(t testing.TB, alpn []string, sans ...string) *corev3.TransportSocket {
	t.Helper()
	var ms []*tlsv3.SubjectAltNameMatcher
	for _, s := range sans {
		ms = append(ms, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}})
	}
	utc := &tlsv3.UpstreamTlsContext{
		Sni: "outbound_.8000_._.httpbin.foo.svc.cluster.local",
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  alpn,
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: ads}},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: ms},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: ads},
			}},
		},
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, utc)}}
}

func rawBuffer(t testing.TB) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.raw_buffer", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &rawbufferv3.RawBuffer{})}}
}

// autoMTLS adds Istio's auto-mTLS transport socket matches to c.
func autoMTLS(t testing.TB, c *clusterv3.Cluster, sans ...string) *clusterv3.Cluster {
	c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{
		{Name: "tlsMode-istio", Match: &structpb.Struct{Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue("istio")}}, TransportSocket: meshSocket(t, sans...)},
		{Name: "tlsMode-disabled", Match: &structpb.Struct{}, TransportSocket: rawBuffer(t)},
	}
	return c
}

// http2 makes c speak HTTP/2 upstream, as Istio configures it.
func http2(t testing.TB, c *clusterv3.Cluster) *clusterv3.Cluster {
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(t, &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})}
	return c
}

// maxRequestsPerConnection sets common_http_protocol_options as Istio does.
func maxRequestsPerConnection(t testing.TB, c *clusterv3.Cluster, n uint32) *clusterv3.Cluster {
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: mustAny(t, &httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{MaxRequestsPerConnection: wrapperspb.UInt32(n)},
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}},
	})}
	return c
}

// waitFor polls cond until it holds or catest.WaitFor passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(catest.WaitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
