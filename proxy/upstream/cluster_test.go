package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestFailureFlags checks the flag each kind of failure carries: the caller's
// retry policy (connect-failure, reset, gateway-error) reads them.
func TestFailureFlags(t *testing.T) {
	e := newEnv(t)
	slow := newBackend(t, "slow")
	hangup := newBackend(t, "hangup", func(s *httptest.Server) {
		s.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
			}
		})
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()

	tests := []struct {
		name    string
		cluster *Cluster
		ctx     func() (context.Context, context.CancelFunc)
		hdr     []string
		want    string
		wantErr error
	}{
		{name: "no endpoints", want: FlagNoHealthyUpstream, wantErr: ErrNoHealthyUpstream},
		{name: "connection refused", want: FlagConnectFailure},
		{name: "closed before a response", want: FlagConnectionTermination},
		{name: "deadline passes", hdr: []string{"X-Block", "1"}, want: FlagTimeout, wantErr: context.DeadlineExceeded,
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			}},
		{name: "downstream goes away", hdr: []string{"X-Block", "1"}, want: FlagDownstreamTermination, wantErr: context.Canceled,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				go func() { <-slow.entered; cancel() }()
				return ctx, cancel
			}},
	}
	e.update(t,
		staticCluster("no endpoints"),
		staticCluster("connection refused", lbEndpoint(t, refused)),
		staticCluster("closed before a response", lbEndpoint(t, hangup.addr)),
		staticCluster("deadline passes", lbEndpoint(t, slow.addr)),
		staticCluster("downstream goes away", lbEndpoint(t, slow.addr)),
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			_, _, _, err := getCtx(ctx, e.cluster(t, tt.name), Request{}, tt.hdr...)
			var ue *Error
			if !errors.As(err, &ue) || ue.Flag != tt.want || Flag(err) != tt.want {
				t.Fatalf("got %v, want flag %s", err, tt.want)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("%v does not wrap %v", err, tt.wantErr)
			}
			if ue.Cluster != tt.name {
				t.Errorf("error names cluster %q", ue.Cluster)
			}
		})
	}
	if Flag(errors.New("other")) != "" || Flag(nil) != "" {
		t.Error("Flag of a foreign error is not empty")
	}
}
