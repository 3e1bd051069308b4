package upstream

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/google/go-cmp/cmp"
)

func TestRoundRobin(t *testing.T) {
	e := newEnv(t)
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	tests := []struct {
		name    string
		weights []uint32
		n       int
		want    string
	}{
		{name: "equal weights go in order", weights: []uint32{1, 1, 1}, n: 6, want: "a b c a b c"},
		{name: "weights interleave", weights: []uint32{3, 1, 1}, n: 10, want: "a b a c a a b a c a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var eps []*endpointv3.LbEndpoint
			for i, be := range []*backend{a, b, c} {
				eps = append(eps, weighted(lbEndpoint(t, be.addr), tt.weights[i]))
			}
			e.update(t, staticCluster(tt.name, eps...))
			cl := e.cluster(t, tt.name)
			var got []string
			for range tt.n {
				got = append(got, mustGet(t, cl, Request{}))
			}
			if diff := cmp.Diff(tt.want, strings.Join(got, " ")); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRandomReachesEveryHost(t *testing.T) {
	e := newEnv(t)
	bs := []*backend{newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")}
	c := staticCluster("random", lbEndpoint(t, bs[0].addr), lbEndpoint(t, bs[1].addr), weighted(lbEndpoint(t, bs[2].addr), 2))
	c.LbPolicy = clusterv3.Cluster_RANDOM
	e.update(t, c)
	cl := e.cluster(t, "random")
	seen := map[string]int{}
	for range 60 {
		seen[mustGet(t, cl, Request{})]++
	}
	for _, b := range bs {
		if seen[b.name] == 0 {
			t.Errorf("%s got nothing in 60 random picks: %v", b.name, seen)
		}
	}
}

func TestLeastRequestPrefersIdleHost(t *testing.T) {
	e := newEnv(t)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	c := staticCluster("lr", lbEndpoint(t, a.addr), lbEndpoint(t, b.addr))
	c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	e.update(t, c)
	cl := e.cluster(t, "lr")

	done := make(chan error, 1)
	go func() {
		_, _, _, err := get(t, cl, Request{}, "X-Block", "1")
		done <- err
	}()
	var busy string
	select {
	case busy = <-a.entered:
	case busy = <-b.entered:
	}
	for i := range 10 {
		if got := mustGet(t, cl, Request{}); got == busy {
			t.Fatalf("request %d went to %s, which has a request in flight, while the other host is idle", i, busy)
		}
	}
	a.unblock()
	b.unblock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Idle again, both hosts get traffic.
	seen := map[string]bool{}
	for range 40 {
		seen[mustGet(t, cl, Request{})] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("with both hosts idle, least request used only %v", seen)
	}
}

func TestConsistentHash(t *testing.T) {
	for _, policy := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV} {
		t.Run(policy.String(), func(t *testing.T) {
			e := newEnv(t)
			bs := []*backend{newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c"), newBackend(t, "d")}
			build := func(bs []*backend) *clusterv3.Cluster {
				var eps []*endpointv3.LbEndpoint
				for _, b := range bs {
					eps = append(eps, lbEndpoint(t, b.addr))
				}
				c := staticCluster("hash", eps...)
				c.LbPolicy = policy
				return c
			}
			e.update(t, build(bs))
			const keys = 200
			route := func() map[uint64]string {
				cl := e.cluster(t, "hash")
				m := map[uint64]string{}
				for k := range uint64(keys) {
					m[k] = mustGet(t, cl, Request{HashKey: k, HasHash: true})
				}
				return m
			}
			before := route()
			if again := route(); !cmp.Equal(before, again) {
				t.Fatalf("the same keys went to other hosts the second time: %s", cmp.Diff(before, again))
			}
			share := map[string]int{}
			for _, h := range before {
				share[h]++
			}
			for _, b := range bs {
				if share[b.name] < keys/10 {
					t.Errorf("host %s got %d of %d keys; the ring is lopsided: %v", b.name, share[b.name], keys, share)
				}
			}

			// Remove c: only its keys move.
			e.update(t, build([]*backend{bs[0], bs[1], bs[3]}))
			after := route()
			for k, was := range before {
				switch now := after[k]; {
				case was == "c" && now == "c":
					t.Errorf("key %d still goes to the removed host", k)
				case was != "c" && now != was:
					t.Errorf("key %d moved from %s to %s though %s stayed", k, was, now, was)
				}
			}
		})
	}
}

func TestExcludeAvoidsTriedHosts(t *testing.T) {
	e := newEnv(t)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	tests := []struct {
		name    string
		policy  clusterv3.Cluster_LbPolicy
		exclude []string
		want    []string // acceptable answers
	}{
		{name: "round robin skips a", policy: clusterv3.Cluster_ROUND_ROBIN, exclude: []string{a.addr}, want: []string{"b"}},
		{name: "hash skips a", policy: clusterv3.Cluster_RING_HASH, exclude: []string{a.addr}, want: []string{"b"}},
		{name: "least request skips b", policy: clusterv3.Cluster_LEAST_REQUEST, exclude: []string{b.addr}, want: []string{"a"}},
		{name: "all tried: any", policy: clusterv3.Cluster_ROUND_ROBIN, exclude: []string{a.addr, b.addr}, want: []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := staticCluster("x", lbEndpoint(t, a.addr), lbEndpoint(t, b.addr))
			c.LbPolicy = tt.policy
			e.update(t, c)
			cl := e.cluster(t, "x")
			for k := range uint64(10) {
				got := mustGet(t, cl, Request{Exclude: tt.exclude, HashKey: k, HasHash: true})
				if !strings.Contains(strings.Join(tt.want, " "), got) {
					t.Fatalf("picked %s, want one of %v", got, tt.want)
				}
			}
		})
	}
}

func TestPriorities(t *testing.T) {
	e := newEnv(t)
	p0, p1 := newBackend(t, "p0"), newBackend(t, "p1")
	tests := []struct {
		name     string
		p0Health corev3.HealthStatus
		want     string
	}{
		{name: "priority 0 serves while healthy", p0Health: corev3.HealthStatus_HEALTHY, want: "p0"},
		{name: "priority 1 takes over when priority 0 is unhealthy", p0Health: corev3.HealthStatus_UNHEALTHY, want: "p1"},
		{name: "draining counts as unhealthy", p0Health: corev3.HealthStatus_DRAINING, want: "p1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep0 := lbEndpoint(t, p0.addr)
			ep0.HealthStatus = tt.p0Health
			c := staticCluster("prio")
			c.LoadAssignment.Endpoints = []*endpointv3.LocalityLbEndpoints{
				{Priority: 1, LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(t, p1.addr)}},
				{Priority: 0, LbEndpoints: []*endpointv3.LbEndpoint{ep0}},
			}
			e.update(t, c)
			cl := e.cluster(t, "prio")
			for range 5 {
				if got := mustGet(t, cl, Request{}); got != tt.want {
					t.Fatalf("went to %s, want %s", got, tt.want)
				}
			}
		})
	}
}
