package compile

import (
	"context"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"

	"github.com/rampart-mesh/rampart/proxy/upstream"
)

type noSVID struct{}

func (noSVID) GetX509SVID() (*x509svid.SVID, error) { return nil, errors.New("no SVID in this test") }

type noBundle struct{}

func (noBundle) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return nil, errors.New("no bundle in this test")
}

// TestOutboundTLSOrigination compiles DestinationRule TLS origination and
// runs the clusters in the real upstream manager against a real TLS server
// whose certificate is for example.com and *.example.com.
func TestOutboundTLSOrigination(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.TLS.ServerName) }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	srv.StartTLS()
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild}
spec:
  hosts: ["*.example.com"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wild}
spec:
  host: "*.example.com"
  trafficPolicy: {tls: {mode: SIMPLE, caCertificates: ` + caFile + `}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.corp.test]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy}
spec:
  host: legacy.corp.test
  trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /nonexistent/ca.pem, subjectAltNames: [other.test]}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pinned}
spec:
  hosts: [pinned.example.com]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pinned}
spec:
  host: pinned.example.com
  trafficPolicy: {tls: {mode: SIMPLE, sni: api.example.com, caCertificates: ` + caFile + `}}
`
	out, fs := outbound(t, extra, productpage)
	for _, f := range fs {
		t.Errorf("finding: %s", f)
	}
	const (
		wildHTTP = "outbound|80||*.example.com"
		wildTCP  = "outbound|9000||*.example.com"
		legacy   = "outbound|80||legacy.corp.test"
		pinned   = "outbound|80||pinned.example.com"
	)
	// What is compiled.
	for _, tt := range []struct {
		cluster          string
		autoSNI, autoSAN bool
		trust            tlsv3.CertificateValidationContext_TrustChainVerification
		sans             int
		ca               string
	}{
		{cluster: wildHTTP, autoSNI: true, autoSAN: true, ca: caFile},
		{cluster: legacy, autoSNI: true, trust: tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED},
		{cluster: pinned, ca: caFile},
	} {
		c := clusterByName(out, tt.cluster)
		if c == nil {
			t.Fatalf("cluster %s missing", tt.cluster)
		}
		var po httpv3.HttpProtocolOptions
		if err := c.GetTypedExtensionProtocolOptions()[ProtocolOptions].UnmarshalTo(&po); err != nil {
			t.Fatalf("%s: protocol options: %v", tt.cluster, err)
		}
		u := po.GetUpstreamHttpProtocolOptions()
		if u.GetAutoSni() != tt.autoSNI || u.GetAutoSanValidation() != tt.autoSAN {
			t.Errorf("%s: upstream_http_protocol_options = %v, want auto_sni %v auto_san_validation %v", tt.cluster, u, tt.autoSNI, tt.autoSAN)
		}
		var utc tlsv3.UpstreamTlsContext
		if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&utc); err != nil {
			t.Fatalf("%s: transport socket: %v", tt.cluster, err)
		}
		vc := utc.GetCommonTlsContext().GetValidationContext()
		if vc.GetTrustChainVerification() != tt.trust || len(vc.GetMatchTypedSubjectAltNames()) != tt.sans || vc.GetTrustedCa().GetFilename() != tt.ca {
			t.Errorf("%s: validation context = %v, want trust %v, %d SANs, CA %q", tt.cluster, vc, tt.trust, tt.sans, tt.ca)
		}
	}

	// What the sidecar does with it.
	m, err := upstream.NewManager(upstream.Config{SVID: noSVID{}, Bundle: noBundle{}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// The clusters as compiled, their endpoints the test server's.
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	portNum, _ := strconv.Atoi(port)
	var clusters []*clusterv3.Cluster
	for _, name := range []string{wildHTTP, wildTCP, legacy, pinned} {
		c := proto.Clone(clusterByName(out, name)).(*clusterv3.Cluster)
		c.ClusterDiscoveryType, c.EdsClusterConfig = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}, nil
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, uint32(portNum))}}}}}}}
		clusters = append(clusters, c)
	}
	if err := m.Update(clusters, nil); err != nil {
		t.Fatal(err)
	}
	dst := upstream.Request{}
	for _, tt := range []struct {
		name, cluster, host string
		want                string // the SNI the server saw; "" for a refusal
	}{
		{name: "wildcard: SNI from the Host", cluster: wildHTTP, host: "api.example.com", want: "api.example.com"},
		{name: "wildcard: a name the certificate lacks is refused", cluster: wildHTTP, host: "login.bank.test"},
		{name: "insecureSkipVerify: any certificate", cluster: legacy, host: "legacy.corp.test", want: "legacy.corp.test"},
		{name: "sni: the configured name", cluster: pinned, host: "pinned.example.com", want: "api.example.com"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cl, ok := m.Cluster(tt.cluster)
			if !ok {
				t.Fatalf("no cluster %s", tt.cluster)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+tt.host+"/", nil)
			resp, _, err := cl.RoundTrip(req, dst)
			if tt.want == "" {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("request for %s accepted a certificate for %v", tt.host, srv.Certificate().DNSNames)
				}
				if !strings.Contains(err.Error(), "not "+tt.host) {
					t.Fatalf("request for %s: %v; want the certificate refused for the name", tt.host, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if b, _ := io.ReadAll(resp.Body); string(b) != tt.want {
				t.Errorf("server saw SNI %q, want %q", b, tt.want)
			}
		})
	}
	cl, _ := m.Cluster(wildTCP)
	conn, _, err := cl.DialTCP(context.Background(), dst)
	if err == nil {
		conn.Close()
	}
	if !errors.Is(err, upstream.ErrNoServerName) || !strings.Contains(err.Error(), wildTCP) {
		t.Errorf("TCP to a wildcard host with no sni or subjectAltNames: %v; want ErrNoServerName naming the cluster", err)
	}
}
