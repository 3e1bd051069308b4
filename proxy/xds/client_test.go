package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca/catest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// scripted is a misbehaving control plane: it sends the responses a test queues
// and records every request the client sends back.
type scripted struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	out  chan *discovery.DiscoveryResponse
	mu   sync.Mutex
	reqs []*discovery.DiscoveryRequest
}

func (s *scripted) StreamAggregatedResources(st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			s.mu.Lock()
			s.reqs = append(s.reqs, r)
			s.mu.Unlock()
		}
	}()
	for {
		select {
		case r := <-s.out:
			if err := st.Send(r); err != nil {
				return err
			}
		case err := <-errc:
			return err
		}
	}
}

// reply waits for the client's answer to nonce.
func (s *scripted) reply(t *testing.T, nonce string) *discovery.DiscoveryRequest {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		for _, r := range s.reqs {
			if r.GetResponseNonce() == nonce {
				s.mu.Unlock()
				return r
			}
		}
		s.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no answer to nonce %s", nonce)
	return nil
}

const goodPolicy = "package rampart.policy\n\nimport rego.v1\n\nhits := set()\n\nallow_policies := set()\n\ndry_run_allow_policies := set()\n"

func bundleAny(t *testing.T, rev, module string) *anypb.Any {
	t.Helper()
	ext, err := authz.WireBundle{Revision: rev, Modules: map[string]string{"p.rego": module}}.Extension()
	if err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(ext)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func anyOf(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// startScripted serves a scripted ADS server on loopback until the test
// ends; dial connects a client to it.
func startScripted(t *testing.T) (*scripted, func() (*grpc.ClientConn, error)) {
	t.Helper()
	srv := &scripted{out: make(chan *discovery.DiscoveryResponse, 1)}
	gs := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return srv, func() (*grpc.ClientConn, error) {
		return grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
}

// Malformed xDS is NACKed with its reason, never applied, never a crash; the
// next good configuration is applied and ACKed.
func TestClientNACKsMalformedConfig(t *testing.T) {
	srv, dial := startScripted(t)

	eng := authz.New(authz.Config{})
	c, err := New(Config{
		Dial:  dial,
		Node:  &corev3.Node{Id: "spiffe://cluster.local/ns/foo/sa/web"},
		Apply: func(ctx context.Context, wb authz.WireBundle) error { return eng.Load(ctx, wb.Bundle()) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	send := func(version, nonce string, resources ...*anypb.Any) *discovery.DiscoveryRequest {
		srv.out <- &discovery.DiscoveryResponse{VersionInfo: version, Nonce: nonce, TypeUrl: ExtensionConfigType, Resources: resources}
		return srv.reply(t, nonce)
	}
	if r := send("v1", "1", bundleAny(t, "good-1", goodPolicy)); r.GetErrorDetail() != nil || r.GetVersionInfo() != "v1" {
		t.Fatalf("good config: %v", r)
	}
	if srv.reqs[0].GetNode().GetId() != "spiffe://cluster.local/ns/foo/sa/web" || srv.reqs[0].GetResourceNames()[0] != authz.ExtensionName {
		t.Fatalf("first request %v", srv.reqs[0])
	}
	for i, tc := range []struct {
		name, reason string
		res          []*anypb.Any
	}{
		{"not an extension config", "not a TypedExtensionConfig", []*anypb.Any{anyOf(t, wrapperspb.String("x"))}},
		{"typed_config of another type", "not a TypedStruct", []*anypb.Any{anyOf(t, &corev3.TypedExtensionConfig{Name: authz.ExtensionName, TypedConfig: anyOf(t, wrapperspb.String("x"))})}},
		{"another extension's name", `want "rampart.authz"`, []*anypb.Any{anyOf(t, &corev3.TypedExtensionConfig{Name: "other", TypedConfig: anyOf(t, wrapperspb.String("x"))})}},
		{"Rego that does not compile", "rego_parse_error", []*anypb.Any{bundleAny(t, "bad", "package rampart.policy\n\nhits := {")}},
		{"two resources", "2 resources", []*anypb.Any{bundleAny(t, "a", goodPolicy), bundleAny(t, "b", goodPolicy)}},
		{"no resources", "0 resources", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := send(fmt.Sprintf("bad-%d", i), fmt.Sprintf("n%d", i), tc.res...)
			if r.GetErrorDetail() == nil || !strings.Contains(r.GetErrorDetail().GetMessage(), tc.reason) {
				t.Fatalf("answer %v; want a NACK mentioning %q", r, tc.reason)
			}
			if r.GetVersionInfo() != "v1" {
				t.Fatalf("NACK version %q; want the last good one, v1", r.GetVersionInfo())
			}
			if eng.Revision() != "good-1" {
				t.Fatalf("engine runs %q; bad config must not be applied", eng.Revision())
			}
		})
	}
	if r := send("v2", "2", bundleAny(t, "good-2", goodPolicy)); r.GetErrorDetail() != nil || r.GetVersionInfo() != "v2" || eng.Revision() != "good-2" {
		t.Fatalf("good config after bad ones: %v, engine %q", r, eng.Revision())
	}
}

// With no control plane, Run keeps retrying and returns nil on cancel.
func TestClientRetriesAndStops(t *testing.T) {
	var dials int
	var mu sync.Mutex
	c, _ := New(Config{
		Dial: func() (*grpc.ClientConn, error) {
			mu.Lock()
			dials++
			mu.Unlock()
			return nil, errors.New("control plane down")
		},
		Node:       &corev3.Node{Id: "x"},
		Apply:      func(context.Context, authz.WireBundle) error { return nil },
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil on cancel", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if dials < 3 {
		t.Fatalf("%d dials in 300 ms with a 10-20 ms backoff", dials)
	}
}

// A server that sends one version of every type (as rampartd does) may have
// two of them refused: the second type's NACK is no resend of the first's,
// so it is logged with its reason and answered at once, not held back as a
// hot loop would be.
func TestNACKsOfTwoTypesAtOneVersion(t *testing.T) {
	srv, dial := startScripted(t)
	var logs catest.SyncBuffer
	eng := authz.New(authz.Config{})
	c, err := New(Config{
		Dial:       dial,
		Node:       &corev3.Node{Id: "spiffe://cluster.local/ns/foo/sa/web"},
		Apply:      func(ctx context.Context, wb authz.WireBundle) error { return eng.Load(ctx, wb.Bundle()) },
		MinBackoff: time.Minute, // a held-back NACK would outlast the test
		Log:        slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for i, typ := range []string{ExtensionConfigType, ClusterType} {
		nonce := fmt.Sprint("n", i)
		srv.out <- &discovery.DiscoveryResponse{VersionInfo: "v9", Nonce: nonce, TypeUrl: typ, Resources: []*anypb.Any{anyOf(t, wrapperspb.String("x"))}}
		if r := srv.reply(t, nonce); r.GetErrorDetail() == nil {
			t.Fatalf("%s: answer %v; want a NACK", typ, r)
		}
	}
	if n := strings.Count(logs.String(), "configuration refused (NACK)"); n != 2 {
		t.Errorf("%d NACKs logged; want one per type:\n%s", n, logs.String())
	}
}
