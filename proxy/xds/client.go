// Package xds is the sidecar's xDS client: one ADS stream to rampartd over mTLS,
// ACKing what it applies and NACKing (with the reason) what it cannot, keeping
// the last good configuration through control-plane outages, reconnecting with
// backoff and jitter.
//
// It is data plane: it must not import policies/... or ca/server.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rampart-mesh/rampart/authz"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// ExtensionConfigType is ECDS's type URL.
const ExtensionConfigType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

// Config configures a Client.
type Config struct {
	// Dial connects to the control plane (mTLS with the sidecar's SVID).
	Dial func() (*grpc.ClientConn, error)
	// Node identifies the proxy: Id is its SPIFFE ID; metadata NAME and LABELS.
	Node *corev3.Node
	// Apply installs a bundle; an error NACKs it and the last good one stays.
	Apply func(context.Context, authz.WireBundle) error
	// ApplyOutbound, if set, subscribes to listeners, routes, clusters and
	// endpoints, and installs each complete set; an error NACKs the update.
	ApplyOutbound func(context.Context, *Resources) error
	// MinBackoff and MaxBackoff bound reconnection delays. Defaults 200 ms, 10 s.
	MinBackoff, MaxBackoff time.Duration
	Log                    *slog.Logger
}

// Client keeps an ADS stream open and applies what arrives.
type Client struct {
	cfg      Config
	log      *slog.Logger
	applied  string            // version of the last bundle applied
	versions map[string]string // by type: version last ACKed
	pending  *Resources        // the latest valid resources (applied once complete)

	nacked  string // version last refused, and how often in a row
	nackRun int
}

// New validates cfg.
func New(cfg Config) (*Client, error) {
	if cfg.Dial == nil || cfg.Node == nil || cfg.Apply == nil {
		return nil, errors.New("xds client: Dial, Node and Apply are required")
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: cfg.Log.With("component", "xds-client"), versions: map[string]string{}, pending: &Resources{}}, nil
}

// Run streams until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	delay := c.cfg.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := c.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 30*time.Second {
			delay = c.cfg.MinBackoff // it was a healthy stream
		}
		wait := delay/2 + time.Duration(rand.Int64N(int64(delay/2)+1))
		c.log.Warn("xDS stream ended; keeping the last good configuration", "err", err, "retry_in", wait.Round(time.Millisecond), "applied_version", c.applied)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		delay = min(2*delay, c.cfg.MaxBackoff)
	}
	return nil
}

func (c *Client) stream(ctx context.Context) error {
	conn, err := c.cfg.Dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, grpc.MaxCallRecvMsgSize(64<<20))
	if err != nil {
		return err
	}
	// What this stream has asked for, by type; EDS and RDS names follow CDS and LDS.
	asked := map[string][]string{ExtensionConfigType: {authz.ExtensionName}}
	types := []string{ExtensionConfigType}
	if c.cfg.ApplyOutbound != nil {
		asked[ClusterType], asked[ListenerType] = nil, nil
		types = append(types, ClusterType, ListenerType)
	}
	for i, t := range types {
		req := &discovery.DiscoveryRequest{TypeUrl: t, ResourceNames: asked[t], VersionInfo: c.versions[t]}
		if i == 0 {
			req.Node = c.cfg.Node
		}
		if err := st.Send(req); err != nil {
			return err
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		t := resp.GetTypeUrl()
		ack := &discovery.DiscoveryRequest{TypeUrl: t, ResourceNames: asked[t], ResponseNonce: resp.GetNonce()}
		if aerr := c.apply(ctx, resp); aerr != nil {
			ack.VersionInfo = c.versions[t]
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: aerr.Error()}
			// A server that resends what was just refused would make a hot loop:
			// refusing the same version again waits longer each time.
			if resp.GetVersionInfo() == c.nacked {
				c.nackRun++
				wait := min(c.cfg.MinBackoff<<min(c.nackRun, 10), c.cfg.MaxBackoff)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(wait):
				}
			} else {
				c.nacked, c.nackRun = resp.GetVersionInfo(), 0
				c.log.Error("configuration refused (NACK); the last good one stays", "type", t, "version", resp.GetVersionInfo(), "err", aerr)
			}
		} else {
			c.versions[t] = resp.GetVersionInfo()
			if t == ExtensionConfigType {
				c.applied = resp.GetVersionInfo()
			}
			c.nacked, c.nackRun = "", 0
			ack.VersionInfo = resp.GetVersionInfo()
		}
		if err := st.Send(ack); err != nil {
			return err
		}
		// New clusters and listeners may name new endpoints and routes.
		for _, dep := range []struct{ from, to string }{{ClusterType, EndpointType}, {ListenerType, RouteType}} {
			if t != dep.from {
				continue
			}
			names := c.pending.dependencies(dep.to)
			if _, ok := asked[dep.to]; ok && slices.Equal(names, asked[dep.to]) {
				continue
			}
			asked[dep.to] = names
			if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: dep.to, ResourceNames: names, VersionInfo: c.versions[dep.to]}); err != nil {
				return err
			}
		}
	}
}

func (c *Client) apply(ctx context.Context, resp *discovery.DiscoveryResponse) error {
	switch resp.GetTypeUrl() {
	case ExtensionConfigType:
		if len(resp.GetResources()) != 1 {
			return fmt.Errorf("%d resources, want exactly %s", len(resp.GetResources()), authz.ExtensionName)
		}
		b, err := authz.WireBundleFrom(resp.GetResources()[0])
		if err != nil {
			return err
		}
		return c.cfg.Apply(ctx, b)
	case ClusterType, EndpointType, ListenerType, RouteType:
		if c.cfg.ApplyOutbound == nil {
			return fmt.Errorf("unexpected type %q", resp.GetTypeUrl())
		}
		next, err := c.pending.with(resp)
		if err != nil {
			return err
		}
		// Apply only a complete set (every EDS cluster has its endpoints, every
		// listener its routes), as Envoy warms clusters and listeners; what is
		// incomplete is held until the rest arrives.
		if missing := next.missing(); missing != "" {
			c.pending = next
			c.log.Debug("configuration held until it is complete", "missing", missing)
			return nil
		}
		if err := c.cfg.ApplyOutbound(ctx, next); err != nil {
			return err
		}
		c.pending = next
		return nil
	}
	return fmt.Errorf("unexpected type %q", resp.GetTypeUrl())
}
