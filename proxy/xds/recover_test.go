package xds

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/rampart-mesh/rampart/authz"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Against go-control-plane's real server, which resends a version the client
// refused: the client backs off instead of spinning, and the next good snapshot
// is applied.
func TestClientRecoversAfterNACK(t *testing.T) {
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := serverv3.NewServer(ctx, cache, nil)
	gs := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	set := func(v, mod string) {
		ext, _ := authz.WireBundle{Revision: v, Modules: map[string]string{"p.rego": mod}}.Extension()
		snap, _ := cachev3.NewSnapshot(v, map[resource.Type][]types.Resource{resource.ExtensionConfigType: {ext}})
		if err := cache.SetSnapshot(ctx, "n", snap); err != nil {
			t.Fatal(err)
		}
	}
	eng := authz.New(authz.Config{})
	var mu sync.Mutex
	badApplies := 0
	set("v1", goodPolicy)
	c, _ := New(Config{Dial: func() (*grpc.ClientConn, error) {
		return grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}, Node: &corev3.Node{Id: "n"}, Apply: func(ctx context.Context, wb authz.WireBundle) error {
		mu.Lock()
		defer mu.Unlock()
		if wb.Revision == "bad" {
			badApplies++
		}
		return eng.Load(ctx, wb.Bundle())
	}})
	go func() { _ = c.Run(ctx) }()
	wait := func(rev string) {
		for i := 0; i < 300; i++ {
			if eng.Revision() == rev {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("engine at %q, want %q", eng.Revision(), rev)
	}
	wait("v1")
	set("bad", "package rampart.policy\n\nhits := {")
	time.Sleep(time.Second)
	mu.Lock()
	n := badApplies
	mu.Unlock()
	if n < 1 || n > 5 {
		t.Fatalf("the refused version was tried %d times in 1 s; want a few, backed off", n)
	}
	set("v2", goodPolicy)
	wait("v2")
}
