package inbound

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/authz"
)

// slowAuthn takes a while over each request, so one is in flight when the
// server is told to stop.
type slowAuthn struct{ started chan struct{} }

func (a slowAuthn) Authenticate(context.Context, *http.Request) AuthnResult {
	close(a.started)
	time.Sleep(300 * time.Millisecond)
	return AuthnResult{}
}

// Run returns only once the HTTP/1.1 requests in flight at shutdown are
// decided: the decision log, stopped after Run returns, must get them.
func TestRunWaitsForHTTP1Requests(t *testing.T) {
	var cfg Config
	start(t, ModePermissive, func(c *Config) { cfg = *c })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := slowAuthn{started: make(chan struct{})}
	var decided atomic.Bool
	cfg.Listener, cfg.Metrics, cfg.Authn = lis, nil, a
	cfg.OnDecide = func(context.Context, *authz.Request, authz.Decision) { decided.Store(true) }
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { _ = srv.Run(ctx); done <- decided.Load() }()
	go func() {
		req, _ := http.NewRequest("GET", "http://"+lis.Addr().String()+"/public/x", nil)
		req.Host = "httpbin.foo"
		if resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-a.started
	cancel()
	if !<-done {
		t.Fatal("Run returned before the request in flight was decided")
	}
}
