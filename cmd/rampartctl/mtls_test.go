package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestReadiness(t *testing.T) {
	const mtlsOnly = `# TYPE istio_requests_total counter
istio_requests_total{connection_security_policy="mutual_tls",destination_workload="api",destination_workload_namespace="foo",reporter="destination",response_code="200",source_principal="spiffe://cluster.local/ns/bar/sa/web"} 12
`
	const mixed = mtlsOnly + `istio_requests_total{connection_security_policy="none",destination_workload="api",destination_workload_namespace="foo",reporter="destination",response_code="200",source_principal="unknown"} 3
# TYPE rampart_inbound_plaintext_requests_total counter
rampart_inbound_plaintext_requests_total{source_ip="10.0.0.7"} 2
rampart_inbound_plaintext_requests_total{source_ip="10.0.0.9"} 1
`
	for _, tc := range []struct {
		name    string
		body    string
		plain   float64
		clients string
	}{
		{"only mTLS: ready", mtlsOnly, 0, "[]"},
		{"plaintext clients named", mixed, 3, "[10.0.0.7 10.0.0.9]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, tc.body) }))
			defer srv.Close()
			r, err := readiness(context.Background(), srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			if r.workload != "foo/api" || r.mtls != 12 || r.plain != tc.plain || fmt.Sprint(r.clients) != tc.clients && !(tc.clients == "[]" && len(r.clients) == 0) {
				t.Fatalf("got %+v", r)
			}
		})
	}
}
