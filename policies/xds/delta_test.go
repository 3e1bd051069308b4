package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca/catest"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Incremental (delta) ADS is refused, with or without a client certificate:
// go-control-plane runs no identity callback on a delta stream, and a client
// without a certificate, naming a connected proxy's node id, was served that
// proxy's bundle and clusters (found in review).
func TestDeltaADSRefused(t *testing.T) {
	a := catest.Authority(t)
	x := startServer(t, a, prometheus.NewRegistry(), `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: secret-policy, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{from: [{source: {namespaces: [bar]}}]}]
`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := serveADS(t, ctx, a, x)
	// The victim is connected, so its snapshot is in the cache.
	victim := "spiffe://cluster.local/ns/foo/sa/httpbin"
	md, _ := structpb.NewStruct(map[string]any{"NAME": "httpbin", "LABELS": map[string]any{"app": "httpbin"}})
	own := adsStream(t, ctx, a, addr, catest.TLSCertificate(catest.IssueSVID(t, a, "foo", "httpbin")))
	if err := own.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: victim, Metadata: md}, TypeUrl: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", ResourceNames: []string{authz.ExtensionName}}); err != nil {
		t.Fatal(err)
	}
	if _, err := own.Recv(); err != nil {
		t.Fatal(err)
	}
	for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "the victim's own certificate": ptr(catest.TLSCertificate(catest.IssueSVID(t, a, "foo", "httpbin")))} {
		cfg := &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, _, err = x509svid.Verify([]*x509.Certificate{c}, a.Bundle())
			return err
		}}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ds, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = ds.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: victim}, TypeUrl: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", ResourceNamesSubscribe: []string{"*"}})
		resp, err := ds.Recv()
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("%s: delta stream answered %d resources, err %v; want it refused (Unimplemented)", name, len(resp.GetResources()), err)
		}
	}
}

func ptr[T any](v T) *T { return &v }
