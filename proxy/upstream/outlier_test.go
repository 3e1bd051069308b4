package upstream

import (
	"net"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// spread sends n requests and counts them by backend name ("" for failures).
func spread(t *testing.T, c *Cluster, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		_, _, body, err := get(t, c, Request{})
		if err != nil {
			body = Flag(err)
		}
		got[body]++
	}
	return got
}

func outlierCluster(t *testing.T, od *clusterv3.OutlierDetection, bs ...*backend) *clusterv3.Cluster {
	c := staticCluster("od")
	for _, b := range bs {
		c.LoadAssignment.Endpoints[0].LbEndpoints = append(c.LoadAssignment.Endpoints[0].LbEndpoints, lbEndpoint(t, b.addr))
	}
	c.OutlierDetection = od
	return c
}

func TestOutlierEjectionAndReturn(t *testing.T) {
	e := newEnv(t)
	good1, good2, bad := newBackend(t, "good1"), newBackend(t, "good2"), newBackend(t, "bad")
	bad.status.Store(503)
	e.update(t, outlierCluster(t, &clusterv3.OutlierDetection{
		Consecutive_5Xx:    wrapperspb.UInt32(3),
		BaseEjectionTime:   durationpb.New(30 * time.Second),
		Interval:           durationpb.New(10 * time.Second),
		MaxEjectionPercent: wrapperspb.UInt32(50),
	}, good1, good2, bad))
	cl := e.cluster(t, "od")

	// Round robin: every third request reaches bad; the third 503 ejects it.
	spread(t, cl, 9)
	if got := bad.hits.Load(); got != 3 {
		t.Fatalf("bad got %d requests before ejection, want 3", got)
	}
	if got := spread(t, cl, 20); got["bad"] != 0 {
		t.Fatalf("an ejected host got traffic: %v", got)
	}
	e.clock.Step(29 * time.Second)
	if got := spread(t, cl, 6); got["bad"] != 0 {
		t.Fatalf("host came back before base_ejection_time: %v", got)
	}
	e.clock.Step(time.Second)
	if got := spread(t, cl, 6); got["bad"] == 0 {
		t.Fatalf("host did not come back after base_ejection_time: %v", got)
	}

	// The second ejection lasts twice as long.
	spread(t, cl, 9)
	e.clock.Step(59 * time.Second)
	if got := spread(t, cl, 6); got["bad"] != 0 {
		t.Fatalf("second ejection ended before 2 × base_ejection_time: %v", got)
	}
	e.clock.Step(time.Second)
	if got := spread(t, cl, 6); got["bad"] == 0 {
		t.Fatalf("host did not come back after 2 × base_ejection_time: %v", got)
	}
	if got := counterValue(t, e.reg, "rampart_upstream_ejections_total", map[string]string{"cluster": "od"}); got != 2 {
		t.Errorf("ejections counter %v, want 2", got)
	}

	// A success resets the count: 503s that are not consecutive eject nobody.
	bad.status.Store(0)
	spread(t, cl, 30)
	e.clock.Step(time.Hour)
	before := bad.hits.Load()
	for range 5 {
		bad.status.Store(503)
		spread(t, cl, 6) // bad answers 2 of these
		bad.status.Store(0)
		spread(t, cl, 3) // and 1 of these, successfully
	}
	if bad.hits.Load()-before < 15 {
		t.Errorf("a host with interleaved successes was ejected (%d requests reached it)", bad.hits.Load()-before)
	}
}

func TestOutlierMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		name        string
		od          *clusterv3.OutlierDetection
		wantEjected bool
	}{
		{name: "default 10% of 3 hosts ejects none", od: &clusterv3.OutlierDetection{}},
		{name: "always_eject_one_host", od: &clusterv3.OutlierDetection{AlwaysEjectOneHost: wrapperspb.Bool(true)}, wantEjected: true},
		{name: "34% allows one of 3", od: &clusterv3.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(34)}, wantEjected: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			a, b, bad := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "bad")
			bad.status.Store(500)
			e.update(t, outlierCluster(t, tt.od, a, b, bad))
			cl := e.cluster(t, "od")
			spread(t, cl, 15) // five 500s from bad: the default consecutive_5xx
			got := spread(t, cl, 9)
			if ejected := got["bad"] == 0; ejected != tt.wantEjected {
				t.Errorf("ejected %v, want %v (traffic %v)", ejected, tt.wantEjected, got)
			}
		})
	}
}

func TestConnectFailuresEject(t *testing.T) {
	e := newEnv(t)
	good := newBackend(t, "good")
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	c := staticCluster("od", lbEndpoint(t, good.addr), lbEndpoint(t, dead))
	c.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(2), MaxEjectionPercent: wrapperspb.UInt32(50)}
	e.update(t, c)
	cl := e.cluster(t, "od")
	got := spread(t, cl, 4)
	if got[FlagConnectFailure] != 2 || got["good"] != 2 {
		t.Fatalf("before ejection: %v, want 2 UF and 2 good", got)
	}
	if got := spread(t, cl, 10); got["good"] != 10 {
		t.Fatalf("after two connect failures the dead host should be out: %v", got)
	}
}

func TestPanicMode(t *testing.T) {
	tests := []struct {
		name      string
		panicPct  *typev3.Percent
		ejectAll  bool
		unhealthy int // of the 3 hosts, by EDS health status
		want      map[string]bool
		wantUH    bool
	}{
		{name: "one of three unhealthy: the others serve", unhealthy: 1, want: map[string]bool{"b": true, "c": true}},
		{name: "two of three unhealthy: panic, all serve", unhealthy: 2, want: map[string]bool{"a": true, "b": true, "c": true}},
		{name: "all ejected: panic, all serve", ejectAll: true, want: map[string]bool{"a": true, "b": true, "c": true}},
		{name: "all ejected, panic threshold 0: no healthy upstream", ejectAll: true, panicPct: &typev3.Percent{Value: 0}, wantUH: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			bs := []*backend{newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")}
			c := staticCluster("panic")
			for i, b := range bs {
				ep := lbEndpoint(t, b.addr)
				if i < tt.unhealthy {
					ep.HealthStatus = corev3.HealthStatus_UNHEALTHY
				}
				c.LoadAssignment.Endpoints[0].LbEndpoints = append(c.LoadAssignment.Endpoints[0].LbEndpoints, ep)
			}
			if tt.panicPct != nil {
				c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: tt.panicPct}
			}
			if tt.ejectAll {
				c.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1), MaxEjectionPercent: wrapperspb.UInt32(100)}
				for _, b := range bs {
					b.status.Store(503)
				}
			}
			e.update(t, c)
			cl := e.cluster(t, "panic")
			if tt.ejectAll {
				// Ejecting two of three starts panic mode, which sends the
				// third its failures too.
				for i := 0; i < 30 && cl.pool.ejected() < 3; i++ {
					get(t, cl, Request{})
				}
				if got := cl.pool.ejected(); got != 3 {
					t.Fatalf("%d hosts ejected, want 3", got)
				}
			}
			got := spread(t, cl, 12)
			if tt.wantUH {
				if got[FlagNoHealthyUpstream] != 12 {
					t.Fatalf("got %v, want only UH", got)
				}
				return
			}
			for name := range got {
				if !tt.want[name] {
					t.Errorf("%s got traffic; want only %v (traffic %v)", name, tt.want, got)
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("traffic reached %v, want all of %v", got, tt.want)
			}
		})
	}
}
