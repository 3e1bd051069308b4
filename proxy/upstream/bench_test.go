package upstream

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// BenchmarkRoundTrip is one request and its 1 KiB response over loopback
// through a kept-alive pooled connection: the cost this package and net/http
// add to a hop, the backend's included.
func BenchmarkRoundTrip(b *testing.B) {
	for _, tc := range []struct {
		name     string
		mtls, h2 bool
	}{
		{name: "plaintext/http1"},
		{name: "mtls/http1", mtls: true},
		{name: "plaintext/h2c", h2: true},
		{name: "mtls/h2", mtls: true, h2: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b)
			payload := strings.Repeat("x", 1024)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, payload) }))
			if tc.h2 && !tc.mtls {
				withH2C()(srv)
			}
			if tc.mtls {
				srv.TLS = e.mesh.serverTLS("foo", "httpbin")
				srv.EnableHTTP2 = true
				srv.StartTLS()
			} else {
				srv.Start()
			}
			b.Cleanup(srv.Close)
			ep := lbEndpoint(b, srv.Listener.Addr().String())
			c := staticCluster("bench", ep)
			if tc.mtls {
				c = autoMTLS(b, staticCluster("bench", istioMTLS(ep)), "spiffe://cluster.local/ns/foo/sa/httpbin")
			}
			if tc.h2 {
				http2(b, c)
			}
			e.update(b, c)
			cl := e.cluster(b, "bench")
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://httpbin.foo:8000/get", nil)
			b.ReportAllocs()
			for b.Loop() {
				resp, _, err := cl.RoundTrip(req, Request{})
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// BenchmarkRoundTripDirect is the floor for BenchmarkRoundTrip/plaintext/http1:
// the same request through a bare http.Transport.
func BenchmarkRoundTripDirect(b *testing.B) {
	payload := strings.Repeat("x", 1024)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, payload) }))
	b.Cleanup(srv.Close)
	tr := &http.Transport{DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL+"/get", nil)
	b.ReportAllocs()
	for b.Loop() {
		resp, err := tr.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// BenchmarkPick is the load balancer alone over 16 hosts.
func BenchmarkPick(b *testing.B) {
	for _, tc := range []struct {
		name   string
		policy clusterv3.Cluster_LbPolicy
		hash   bool
		ejects bool
	}{
		{name: "round_robin", policy: clusterv3.Cluster_ROUND_ROBIN},
		{name: "round_robin/one_ejected", policy: clusterv3.Cluster_ROUND_ROBIN, ejects: true},
		{name: "least_request", policy: clusterv3.Cluster_LEAST_REQUEST},
		{name: "random", policy: clusterv3.Cluster_RANDOM},
		{name: "ring_hash", policy: clusterv3.Cluster_RING_HASH, hash: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b)
			var eps []*endpointv3.LbEndpoint
			for i := range 16 {
				eps = append(eps, lbEndpoint(b, "10.0.0."+string(rune('1'+i%9))+":"+string(rune('1'+i/9))+"000"))
			}
			c := staticCluster("pick", eps...)
			c.LbPolicy = tc.policy
			if tc.ejects {
				c.OutlierDetection = &clusterv3.OutlierDetection{}
			}
			e.update(b, c)
			cl := e.cluster(b, "pick")
			if tc.ejects {
				cl.eps.all[3].state.ejectedUntil.Store(e.clock.Now().Add(3600e9).UnixNano())
				cl.pool.outlier.ejected.Store(1)
			}
			o := Request{HasHash: tc.hash}
			b.ReportAllocs()
			for b.Loop() {
				o.HashKey++
				if cl.pick(&o) == nil {
					b.Fatal("no host")
				}
			}
		})
	}
}
