// Package xds is the sidecar's xDS client: one ADS stream to rampartd over mTLS,
// ACKing what it has validated and applies (a cluster or listener waiting for
// its endpoints or routes at most WarmTimeout later, as Envoy warms them) and
// NACKing (with the reason) what it cannot, keeping
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
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rampart-mesh/rampart/authz"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"k8s.io/utils/clock"
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
	// endpoints, and installs them; an error NACKs the update. Each response
	// is validated when it arrives; a cluster or listener waiting for its
	// endpoints or routes is installed once they come, or after WarmTimeout
	// without them, keeping its previous version meanwhile.
	ApplyOutbound func(context.Context, *Resources) error
	// WarmTimeout bounds how long a cluster waits for its endpoints and a
	// listener for its routes (Envoy's initial_fetch_timeout). Default 15 s.
	WarmTimeout time.Duration
	// CheckListener, if set, runs the checks of what installs listeners
	// this package cannot import (the TCP listeners' parse), so a bad
	// listener is NACKed in the response that carried it, not later.
	CheckListener func(name string, l *listenerv3.Listener) error
	// MinBackoff and MaxBackoff bound reconnection delays. Defaults 200 ms, 10 s.
	MinBackoff, MaxBackoff time.Duration
	Clock                  clock.Clock // warming; nil: the real clock
	Log                    *slog.Logger
}

// Client keeps an ADS stream open and applies what arrives.
type Client struct {
	cfg      Config
	log      *slog.Logger
	applied  string            // version of the last bundle applied
	versions map[string]string // by type: version last ACKed
	accepted *Resources        // the resources last ACKed: validated, installed or warming
	active   *Resources        // the set last installed (nil: none yet)
	// waits holds, by key of Resources.waiting, since when each missing
	// dependency of accepted has been awaited; settled is when the active
	// set was last computed, so each warming time ends one install.
	waits   map[string]time.Time
	settled time.Time

	// nacked is, by type URL, the version last refused and how often in a
	// row: per type, since a server may send one version of every type (as
	// rampartd does), and one type's refusal is no resend of another's.
	nacked map[string]nackRun
}

type nackRun struct {
	version string
	run     int
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
	if cfg.WarmTimeout == 0 {
		cfg.WarmTimeout = 15 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: cfg.Log.With("component", "xds-client"), versions: map[string]string{}, accepted: &Resources{}}, nil
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
	var wg sync.WaitGroup
	defer wg.Wait()
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
	// Responses are read aside so that warming can end between them.
	resps, recvErr := make(chan *discovery.DiscoveryResponse), make(chan error, 1)
	wg.Go(func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case resps <- resp:
			case <-ctx.Done():
				return
			}
		}
	})
	for {
		var timer clock.Timer
		var warmed <-chan time.Time
		if at, ok := c.warmEnd(); ok {
			wait := at.Sub(c.cfg.Clock.Now())
			if wait <= 0 {
				c.warmOver(ctx)
				continue
			}
			timer = c.cfg.Clock.NewTimer(wait)
			warmed = timer.C()
		}
		var resp *discovery.DiscoveryResponse
		select {
		case err := <-recvErr:
			if timer != nil {
				timer.Stop()
			}
			return err
		case <-warmed:
			c.warmOver(ctx)
			continue
		case resp = <-resps:
			if timer != nil {
				timer.Stop()
			}
		}
		t := resp.GetTypeUrl()
		ack := &discovery.DiscoveryRequest{TypeUrl: t, ResourceNames: asked[t], ResponseNonce: resp.GetNonce()}
		if aerr := c.apply(ctx, resp); aerr != nil {
			ack.VersionInfo = c.versions[t]
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: aerr.Error()}
			// A server that resends what was just refused would make a hot loop:
			// refusing the same version again waits longer each time.
			if n, ok := c.nacked[t]; ok && n.version == resp.GetVersionInfo() {
				n.run++
				c.nacked[t] = n
				wait := min(c.cfg.MinBackoff<<min(n.run, 10), c.cfg.MaxBackoff)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(wait):
				}
			} else {
				if c.nacked == nil {
					c.nacked = map[string]nackRun{}
				}
				c.nacked[t] = nackRun{version: resp.GetVersionInfo()}
				c.log.Error("configuration refused (NACK); the last good one stays", "type", t, "version", resp.GetVersionInfo(), "err", aerr)
			}
		} else {
			c.versions[t] = resp.GetVersionInfo()
			if t == ExtensionConfigType {
				c.applied = resp.GetVersionInfo()
			}
			delete(c.nacked, t)
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
			names := c.accepted.dependencies(dep.to)
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
		next, err := c.accepted.with(resp)
		if err != nil {
			return err
		}
		// Validated on arrival, as Envoy validates each resource it receives:
		// what waits for its endpoints or routes has been checked too.
		if err := next.check(resp.GetTypeUrl()); err != nil {
			return err
		}
		if resp.GetTypeUrl() == ListenerType && c.cfg.CheckListener != nil {
			for _, name := range slices.Sorted(maps.Keys(next.Listeners)) {
				if err := c.cfg.CheckListener(name, next.Listeners[name]); err != nil {
					return fmt.Errorf("listener %s: %w", name, err)
				}
			}
		}
		now := c.cfg.Clock.Now()
		waits := c.waitsOf(next, now)
		if set := c.activeOf(next, waits, now); set != nil {
			if err := c.cfg.ApplyOutbound(ctx, set); err != nil {
				return err
			}
			c.active = set
		}
		c.accepted, c.waits, c.settled = next, waits, now
		if w := next.waiting(); len(w) > 0 {
			c.log.Debug("warming", "waiting_for", strings.Join(w, ", "))
		}
		return nil
	}
	return fmt.Errorf("unexpected type %q", resp.GetTypeUrl())
}

// waitsOf says since when each missing dependency of next has been awaited.
func (c *Client) waitsOf(next *Resources, now time.Time) map[string]time.Time {
	waits := map[string]time.Time{}
	for _, k := range next.waiting() {
		since, ok := c.waits[k]
		if !ok {
			since = now
		}
		waits[k] = since
	}
	return waits
}

// activeOf is the set to install at now, or nil to install nothing. The first
// set waits for all of its parts (as Envoy's initialization does) until their
// warming time is over; later, each cluster and listener warms on its own.
func (c *Client) activeOf(next *Resources, waits map[string]time.Time, now time.Time) *Resources {
	warming := func(k string) bool {
		since, ok := waits[k]
		return ok && now.Sub(since) < c.cfg.WarmTimeout
	}
	if c.active == nil && slices.ContainsFunc(next.waiting(), warming) {
		return nil
	}
	return next.active(c.active, warming)
}

// warmEnd is when the next warming time ends after the active set was last
// computed.
func (c *Client) warmEnd() (time.Time, bool) {
	var end time.Time
	for _, since := range c.waits {
		if at := since.Add(c.cfg.WarmTimeout); at.After(c.settled) && (end.IsZero() || at.Before(end)) {
			end = at
		}
	}
	return end, !end.IsZero()
}

// warmOver installs the accepted set once a warming time has ended, with what
// is still missing left empty. There is no response to NACK: a failure is
// logged and the installed set stays.
func (c *Client) warmOver(ctx context.Context) {
	now := c.cfg.Clock.Now()
	c.settled = now
	var late []string
	for k, since := range c.waits {
		if now.Sub(since) >= c.cfg.WarmTimeout {
			late = append(late, k)
		}
	}
	slices.Sort(late)
	set := c.activeOf(c.accepted, c.waits, now)
	if set == nil {
		return
	}
	if err := c.cfg.ApplyOutbound(ctx, set); err != nil {
		c.log.Error("configuration not installed after warming ended; the last installed one stays", "missing", strings.Join(late, ", "), "err", err)
		return
	}
	c.active = set
	c.log.Warn("installed without what did not arrive in time (a cluster without endpoints answers 503 UH, a listener without routes 404 NR)", "missing", strings.Join(late, ", "), "warm_timeout", c.cfg.WarmTimeout)
}
