package compile

import "testing"

// Istio (BuildHTTPRoutesForVirtualService) stops a VirtualService's routes at
// its first catch-all rule: the rules after it are never reached, at a
// gateway too (catch-alls go last only across VirtualServices).
func TestGatewayCatchAllEndsItsVirtualService(t *testing.T) {
	tab, _ := gatewayTable(t, `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["a.example.com"]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
  - match: [{uri: {prefix: /internal}}]
    route: [{destination: {host: ratings.default.svc.cluster.local, port: {number: 9080}}}]
`)
	rt := gatewayGet(tab, "http://a.example.com/internal/x")
	if rt == nil || rt.Cluster != "outbound|9080||reviews.default.svc.cluster.local" {
		c := "<nil>"
		if rt != nil {
			c = rt.Cluster
		}
		t.Fatalf("/internal on the gateway goes to %s; Istio sends every request to reviews (the first rule is a catch-all)", c)
	}
}
