package main

import (
	"net"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/policies/source"
)

func TestPlanMeshBookinfo(t *testing.T) {
	objs, err := source.ReadPaths([]string{"../../deploy/examples/bookinfo"})
	if err != nil {
		t.Fatal(err)
	}
	plans, err := planMesh(objs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]workloadPlan{}
	for _, p := range plans {
		got[p.Namespace+"/"+p.Name] = p
	}
	if len(got) != 8 {
		t.Fatalf("%d workloads, want 8: %v", len(got), got)
	}
	r2 := got["default/reviews-v2"]
	if r2.Address != "127.0.10.4" || r2.Port != 9080 || r2.ServiceAccount != "bookinfo-reviews" || r2.Labels["version"] != "v2" ||
		strings.Join(r2.Command, " ") != "bookinfo reviews --version v2" {
		t.Errorf("reviews-v2 = %+v", r2)
	}
	gw := got["istio-system/istio-ingressgateway"]
	if !gw.Gateway || len(gw.GatewayPorts) != 1 || gw.GatewayPorts[0] != 8080 {
		t.Errorf("gateway = %+v", gw)
	}
}

func TestPlanMeshErrors(t *testing.T) {
	const se = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec: {hosts: [a.default.svc.cluster.local], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: a}}}
---
`
	for _, tc := range []struct{ name, yaml, want string }{
		{"missing entry", `apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: a}
spec: {command: [x]}`, "no WorkloadEntry default/a"},
		{"not loopback", `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a}
spec: {address: 10.0.0.1, labels: {app: a}}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: a}
spec: {command: [x]}`, "must be a loopback IP"},
		{"unknown field", `apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: a}
spec: {comand: [x]}`, `unknown field "comand"`},
		{"no command", `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a}
spec: {address: 127.0.0.9, labels: {app: a}}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: a}
spec: {}`, "every other process needs one"},
		{"shared address", `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a}
spec: {address: 127.0.0.9, labels: {app: a}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b}
spec: {address: 127.0.0.9, labels: {app: a}}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: a}
spec: {command: [x]}
---
apiVersion: local.rampart.dev/v1alpha1
kind: Process
metadata: {name: b}
spec: {command: [x]}`, "share address 127.0.0.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := source.Parse("dir/mesh.yaml", []byte(se+tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			_, err = planMesh(objs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if tc.name != "shared address" && !strings.Contains(err.Error(), "dir/mesh.yaml:") {
				t.Errorf("err %v does not name the file and line", err)
			}
		})
	}
}

// A second mesh is refused before it starts anything, naming what is taken.
func TestUpRefusesTakenAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	plans := []workloadPlan{{Name: "web", Address: "127.0.10.250", Port: 9080}}
	if err := addressesFree(freeAddr, "127.0.0.1:0", plans); err != nil {
		t.Fatalf("nothing is taken, yet: %v", err)
	}
	err = addressesFree(ln.Addr().String(), "127.0.0.1:0", plans)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()+" (rampartd's --control-plane)") {
		t.Fatalf("err = %v; want the taken control-plane address named", err)
	}
	busy, err := net.Listen("tcp", "127.0.10.250:9080")
	if err != nil {
		t.Skipf("cannot bind 127.0.10.250 here: %v", err)
	}
	defer busy.Close()
	if err := addressesFree(freeAddr, "127.0.0.1:0", plans); err == nil || !strings.Contains(err.Error(), "127.0.10.250:9080 (web's inbound listener)") {
		t.Fatalf("err = %v; want the taken inbound listener named", err)
	}
}
