package authz

import (
	"context"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// sampleExtAuthz behaves like Istio's samples/extauthz server: it allows a request
// iff it carries "x-ext-authz: allow"; it can also be made slow.
type sampleExtAuthz struct {
	authv3.UnimplementedAuthorizationServer
	delay time.Duration
	seen  chan *authv3.CheckRequest
}

func (s *sampleExtAuthz) Check(ctx context.Context, r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	select {
	case s.seen <- r:
	default:
	}
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if r.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-ext-authz"] == "allow" {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-ext-authz-check-result", Value: "allowed"}}},
		}}}, nil
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied), Message: "missing x-ext-authz: allow"},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}, Body: "denied by ext_authz",
		}}}, nil
}

// startExtAuthz serves srv on a loopback port and returns a connection to it.
func startExtAuthz(t *testing.T, srv authv3.AuthorizationServer) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestExtAuthzProvider(t *testing.T) {
	srv := &sampleExtAuthz{seen: make(chan *authv3.CheckRequest, 16)}
	conn := startExtAuthz(t, srv)
	p, err := NewExtAuthzProvider(ExtAuthzConfig{Conn: conn})
	if err != nil {
		t.Fatal(err)
	}
	req := &Request{Protocol: ProtocolHTTP, SourcePrincipal: "spiffe://cluster.local/ns/bar/sa/sleep", SourceIP: "10.0.0.9",
		DestinationIP: "10.0.0.5", DestinationPort: 8000, Method: "GET", Host: "httpbin.foo", Path: "/headers",
		Headers: []Header{{Name: "X-Ext-Authz", Value: "allow"}}}
	res := p.Check(context.Background(), req, nil)
	if !res.Allowed || res.Headers["x-ext-authz-check-result"] != "allowed" {
		t.Fatalf("allowed request: %+v", res)
	}
	got := <-srv.seen
	if got.GetAttributes().GetSource().GetPrincipal() != req.SourcePrincipal || got.GetAttributes().GetRequest().GetHttp().GetPath() != "/headers" {
		t.Fatalf("the server saw %v", got.GetAttributes())
	}
	req.Headers = nil
	res = p.Check(context.Background(), req, nil)
	if res.Allowed || res.Status != 403 || res.Body != "denied by ext_authz" {
		t.Fatalf("denied request: %+v", res)
	}
}

// Timeouts and unreachable servers honour failOpen and statusOnError.
func TestExtAuthzProviderFailure(t *testing.T) {
	slow := startExtAuthz(t, &sampleExtAuthz{delay: 2 * time.Second, seen: make(chan *authv3.CheckRequest, 4)})
	req := &Request{Protocol: ProtocolHTTP, Method: "GET", Path: "/", Headers: []Header{{Name: "x-ext-authz", Value: "allow"}}}
	for _, tc := range []struct {
		name    string
		cfg     ExtAuthzConfig
		allowed bool
		status  int
	}{
		{"timeout fails closed with 403", ExtAuthzConfig{Conn: slow, Timeout: 50 * time.Millisecond}, false, 403},
		{"timeout with statusOnError 503", ExtAuthzConfig{Conn: slow, Timeout: 50 * time.Millisecond, StatusOnError: 503}, false, 503},
		{"timeout with failOpen", ExtAuthzConfig{Conn: slow, Timeout: 50 * time.Millisecond, FailOpen: true}, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewExtAuthzProvider(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			res := p.Check(context.Background(), req, nil)
			if res.Allowed != tc.allowed || (!tc.allowed && res.Status != tc.status) {
				t.Fatalf("got %+v; want allowed=%t status=%d", res, tc.allowed, tc.status)
			}
		})
	}
	if _, err := ParseStatusOnError("abc"); err == nil {
		t.Fatal("statusOnError 'abc' accepted")
	}
	if n, _ := ParseStatusOnError(""); n != 403 {
		t.Fatalf("default statusOnError = %d", n)
	}
}
