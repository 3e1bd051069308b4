package xds

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/rampart-mesh/rampart/policies/compile"
)

// Two proxies of one workload (service account, name and labels), one a
// gateway (node metadata ROUTER: a rollout that adds --gateway-listen), one
// a sidecar: each gets its own build, whichever connects first. They shared
// one, so the gateway could get the sidecar's (no Gateway routes: ingress
// served nothing) or the sidecar the gateway's.
func TestGatewayAndSidecarOfOneWorkloadBuildApart(t *testing.T) {
	for _, order := range [][]bool{{false, true}, {true, false}} {
		gw := strings.Replace(gatewayYAML(80), "  selector: {istio: ingressgateway}\n", "", 1)
		f := newFixture(t, map[string]string{"gateway.yaml": gw, "vs.yaml": vsYAML("b", "5s", "", "[ingress/gw]")}, nil)
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/edge/sa/gw")
		for i, router := range order {
			key := id.String() + []string{"", "~second"}[i]
			f.x.nodes[key] = &node{id: id, workload: compile.Workload{Namespace: "edge", Name: "gw", Labels: map[string]string{"app": "edge"}, Gateway: router}, acked: map[string]string{}}
			if err := f.x.push(key, time.Now()); err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range f.x.nodes[key].outbound.Routes {
				names = append(names, r.GetName())
			}
			if got := slices.Contains(names, "http.80"); got != router {
				t.Errorf("order %v: proxy %d (gateway %v) has the Gateway's http.80: %v (routes %v)", order, i, router, got, names)
			}
		}
	}
}
