package upstream

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// FuzzUpdate feeds arbitrary cluster and assignment protos to Update, then
// picks endpoints from whatever it accepted. Nothing may panic; nothing is
// dialed.
func FuzzUpdate(f *testing.F) {
	seed := func(c *clusterv3.Cluster, a *endpointv3.ClusterLoadAssignment) {
		cb, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		ab, err := proto.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(cb, ab)
	}
	ep := func(addr string) *endpointv3.LbEndpoint { return lbEndpoint(f, addr) }
	static := staticCluster("s", ep("127.0.0.1:1"), weighted(ep("127.0.0.2:2"), 3))
	seed(static, assignment("x"))
	hash := staticCluster("h", ep("127.0.0.1:1"), ep("[::1]:2"))
	hash.LbPolicy = clusterv3.Cluster_RING_HASH
	hash.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1)}
	hash.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 10}}
	seed(hash, assignment("x"))
	seed(autoMTLS(f, http2(f, staticCluster("m", istioMTLS(ep("127.0.0.1:1")))), "spiffe://cluster.local/ns/a/sa/b"), assignment("x"))
	unhealthy := ep("127.0.0.3:3")
	unhealthy.HealthStatus = corev3.HealthStatus_UNHEALTHY
	eds := edsCluster("e", "")
	eds.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	seed(eds, assignment("e", ep("127.0.0.1:1"), unhealthy))
	seed(withBreakers(maxRequestsPerConnection(f, staticCluster("b"), 2), &clusterv3.CircuitBreakers_Thresholds{MaxConnections: wrapperspb.UInt32(1)}), assignment("x"))

	e := newEnv(f)
	f.Fuzz(func(t *testing.T, cb, ab []byte) {
		var c clusterv3.Cluster
		var a endpointv3.ClusterLoadAssignment
		if proto.Unmarshal(cb, &c) != nil || proto.Unmarshal(ab, &a) != nil {
			return
		}
		if err := e.m.Update([]*clusterv3.Cluster{&c}, []*endpointv3.ClusterLoadAssignment{&a}); err != nil {
			return
		}
		cl, ok := e.m.Cluster(c.GetName())
		if !ok {
			t.Fatalf("Update accepted cluster %q but does not have it", c.GetName())
		}
		eps := cl.Endpoints()
		for k := range uint64(4) {
			o := Request{HashKey: k, HasHash: k%2 == 0, OriginalDst: "127.0.0.1:9"}
			if len(eps) > 0 {
				o.Exclude = []string{eps[0].Address}
			}
			if _, err := cl.hostFor(nil, &o); err != nil && Flag(err) != FlagNoHealthyUpstream {
				t.Fatalf("pick: %v", err)
			}
		}
		release, ok := cl.TryRetry()
		if !ok && cl.cfg.breakers.maxRetries > 0 && !cl.cfg.breakers.budget {
			t.Fatalf("first retry refused with max_retries %d", cl.cfg.breakers.maxRetries)
		}
		release()
	})
}
