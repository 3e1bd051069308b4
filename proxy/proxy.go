// Package proxy assembles rampart-sidecar: the identity agent, the SPIFFE Workload
// API for the app today; listeners, routing and policy as
// they land. New builds every part from typed Config; Run runs them under one
// errgroup, so the first failure stops the rest.
//
// It is data plane: it must not import policies/... or ca/server.
package proxy

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/workloadapi"
	"golang.org/x/sync/errgroup"
)

// Config configures a sidecar.
type Config struct {
	Agent agent.Config
	// WorkloadAPISocket is where the app fetches its SVID; empty disables the API.
	WorkloadAPISocket string
	// Registry receives every metric; the caller serves it.
	Registry *prometheus.Registry
	Log      *slog.Logger
}

// Proxy is a sidecar.
type Proxy struct {
	cfg   Config
	log   *slog.Logger
	agent *agent.Agent
	wl    *workloadapi.Server
}

// New builds the sidecar's parts. It does no I/O.
func New(cfg Config) (*Proxy, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	cfg.Agent.Log = cfg.Log
	cfg.Agent.Metrics = cfg.Registry
	a, err := agent.New(cfg.Agent)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: cfg.Log.With("component", "sidecar"), agent: a}
	if cfg.WorkloadAPISocket != "" {
		if p.wl, err = workloadapi.New(workloadapi.Config{Source: a, SocketPath: cfg.WorkloadAPISocket, Log: cfg.Log}); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Agent returns the identity agent.
func (p *Proxy) Agent() *agent.Agent { return p.agent }

// ReadyHandler answers 200 once the sidecar holds an SVID, 503 before.
func (p *Proxy) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-p.agent.Ready():
			_, _ = w.Write([]byte("ok\n"))
		default:
			http.Error(w, "no SVID yet", http.StatusServiceUnavailable)
		}
	})
}

// Run runs the sidecar until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.agent.Run(ctx) })
	if p.wl != nil {
		g.Go(func() error {
			// The Workload API opens only once there is an SVID to hand out.
			select {
			case <-p.agent.Ready():
			case <-ctx.Done():
				return nil
			}
			return p.wl.Run(ctx)
		})
	}
	return g.Wait()
}
