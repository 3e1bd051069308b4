package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	istioca "istio.io/api/security/v1alpha1"
	"k8s.io/utils/clock"
)

// Config configures an Agent.
type Config struct {
	// ControlPlane is rampartd's identity endpoint, host:port.
	ControlPlane string
	// RootCerts are trusted for the first connection to the control plane only.
	// Once the agent holds a bundle fetched from the control plane, it trusts that
	// bundle alone: rotation does not strand an agent started with the old root,
	// and a root the rotation retired stops authenticating the control plane.
	RootCerts []*x509.Certificate
	// Token returns the bearer credential (join token or Kubernetes token). It is
	// called when the agent has no valid SVID to authenticate with.
	Token func() (string, error)
	// Identity is the workload identity to ask for. If empty it is read from the
	// token (join tokens name their identity).
	Identity ca.Identity
	// TrustDomain, if zero, is taken from the root certificate's URI SAN, else cluster.local.
	TrustDomain spiffeid.TrustDomain
	// RootNamespace is where rampartd's identity lives; its serving certificate must
	// be spiffe://<td>/ns/<RootNamespace>/sa/rampartd. Default rampart-system.
	RootNamespace string
	// KeyType of the workload key. Default ECDSA P-256.
	KeyType ca.KeyType
	// TTL requested for each SVID; 0 takes the CA's default.
	TTL time.Duration
	// RenewFraction of an SVID's life after which it is renewed. Default 0.5.
	RenewFraction float64
	// Jitter, a fraction of the life, spreads renewals. Default 0.1 (±5%).
	Jitter float64
	// MinRetry and MaxRetry bound the backoff after a failed renewal. Defaults 500 ms, 30 s.
	MinRetry, MaxRetry time.Duration
	// DialTimeout bounds one request to the control plane. Default 10 s.
	DialTimeout time.Duration
	// DataDir, if set, is a directory (created mode 0700) where the agent keeps
	// its SVID with the key, its trust bundle and the SPIFFE ID it was issued
	// (mode 0600, replaced atomically on every change) across restarts. At
	// start a stored SVID that is still valid, chains to the stored bundle and
	// is for this agent's identity is served and renews itself, so a workload
	// that joined with a single-use token rejoins after a restart without one;
	// one for another identity than the recorded one stops the agent. Without
	// DataDir both live in memory only.
	DataDir string

	Clock   clock.WithTicker
	Log     *slog.Logger
	Metrics prometheus.Registerer
}

// Agent holds the workload's SVID and bundle and keeps them fresh.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	clock   clock.WithTicker
	cur     atomic.Pointer[state]
	ready   chan struct{}
	once    sync.Once
	renewal *prometheus.CounterVec

	jwtMu    sync.Mutex
	jwtCache map[string]cachedJWT

	// recorded is the SPIFFE ID DataDir records as issued to this agent
	// (zero: none yet). Only Run's goroutine (restore, persist) uses it.
	recorded spiffeid.ID
}

type cachedJWT struct {
	svid    *jwtsvid.SVID
	fetched time.Time
}

// state is one published identity: SVID and bundle together. changed is closed when
// a newer state replaces it.
type state struct {
	svid     *x509svid.SVID
	issuedAt time.Time
	bundle   *spiffebundle.Bundle
	changed  chan struct{}
}

var (
	_ x509svid.Source   = (*Agent)(nil)
	_ x509bundle.Source = (*Agent)(nil)
	_ jwtbundle.Source  = (*Agent)(nil)
)

// ErrNoSVID means the agent has not obtained an SVID yet.
var ErrNoSVID = errors.New("no X.509-SVID yet")

// New validates cfg and fills defaults. It does no I/O.
func New(cfg Config) (*Agent, error) {
	if cfg.ControlPlane == "" {
		return nil, errors.New("agent: ControlPlane is required")
	}
	if len(cfg.RootCerts) == 0 {
		return nil, errors.New("agent: RootCerts is required (the control plane's root certificate)")
	}
	if cfg.Token == nil && cfg.Identity == (ca.Identity{}) {
		return nil, errors.New("agent: a Token source is required")
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
		for _, u := range cfg.RootCerts[0].URIs {
			if id, err := spiffeid.FromURI(u); err == nil {
				cfg.TrustDomain = id.TrustDomain()
				break
			}
		}
	}
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = ca.DefaultRootNamespace
	}
	if cfg.KeyType == "" {
		cfg.KeyType = ca.KeyECDSAP256
	}
	if cfg.RenewFraction == 0 {
		cfg.RenewFraction = 0.5
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		return nil, fmt.Errorf("agent: RenewFraction must be between 0 and 1, got %v", cfg.RenewFraction)
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = 0.1
	}
	if cfg.MinRetry == 0 {
		cfg.MinRetry = 500 * time.Millisecond
	}
	if cfg.MaxRetry == 0 {
		cfg.MaxRetry = 30 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Log.With("component", "identity-agent"),
		clock:    cfg.Clock,
		ready:    make(chan struct{}),
		jwtCache: map[string]cachedJWT{},
	}
	a.cur.Store(&state{changed: make(chan struct{})})
	a.renewal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rampart_agent_svid_renewals_total",
		Help: "X.509-SVID requests to the control plane by result (success, failure).",
	}, []string{"result"})
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rampart_agent_svid_expiry_seconds",
		Help: "Seconds until the current X.509-SVID expires (negative once expired; absent value 0 before the first SVID).",
	}, func() float64 {
		st := a.cur.Load()
		if st.svid == nil {
			return 0
		}
		return st.svid.Certificates[0].NotAfter.Sub(a.clock.Now()).Seconds()
	})
	seq := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rampart_agent_bundle_sequence",
		Help: "Sequence number of the trust bundle the agent holds.",
	}, func() float64 {
		if b := a.cur.Load().bundle; b != nil {
			n, _ := b.SequenceNumber()
			return float64(n)
		}
		return 0
	})
	for _, c := range []prometheus.Collector{a.renewal, expiry, seq} {
		if err := cfg.Metrics.Register(c); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	return a, nil
}

// Ready is closed once the agent holds its first SVID.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Updated returns a channel closed the next time the SVID or bundle changes.
func (a *Agent) Updated() <-chan struct{} { return a.cur.Load().changed }

// GetX509SVID implements x509svid.Source.
func (a *Agent) GetX509SVID() (*x509svid.SVID, error) {
	if s := a.cur.Load().svid; s != nil {
		return s, nil
	}
	return nil, ErrNoSVID
}

// Bundle returns the trust bundle for the agent's trust domain, or nil before the first fetch.
func (a *Agent) Bundle() *spiffebundle.Bundle { return a.cur.Load().bundle }

// TrustDomain is the trust domain the agent belongs to.
func (a *Agent) TrustDomain() spiffeid.TrustDomain { return a.cfg.TrustDomain }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (a *Agent) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b := a.cur.Load().bundle
	if b == nil || td != b.TrustDomain() {
		return nil, fmt.Errorf("no X.509 bundle for trust domain %q", td)
	}
	return b.X509Bundle(), nil
}

// GetJWTBundleForTrustDomain implements jwtbundle.Source.
func (a *Agent) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	b := a.cur.Load().bundle
	if b == nil || td != b.TrustDomain() {
		return nil, fmt.Errorf("no JWT bundle for trust domain %q", td)
	}
	return b.JWTBundle(), nil
}

// Run obtains the first SVID, then renews it and refreshes the bundle until ctx
// ends. Failures are retried with backoff; the last good SVID stays in use. With
// a DataDir it first restores what the directory holds, and fails if the
// directory cannot be used.
func (a *Agent) Run(ctx context.Context) error {
	if a.cfg.DataDir != "" {
		lock, err := a.openDataDir()
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer lock.Close()
		if err := a.restore(); err != nil {
			return fmt.Errorf("agent: data dir: %w", err)
		}
	}
	var (
		nextRenew  time.Time // zero: now
		nextBundle time.Time
		failures   int
		bundleFail int
	)
	for {
		now := a.clock.Now()
		if !now.Before(nextRenew) {
			if err := a.renew(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				failures++
				a.renewal.WithLabelValues("failure").Inc()
				wait := a.retryDelay(failures)
				attrs := []any{"err", err, "retry_in", wait.Round(time.Millisecond), "attempt", failures}
				if s := a.cur.Load().svid; s != nil {
					attrs = append(attrs, "current_svid_expires_in", s.Certificates[0].NotAfter.Sub(now).Round(time.Second))
				}
				a.log.Warn("X.509-SVID renewal failed; keeping the last good SVID", attrs...)
				nextRenew = now.Add(wait)
			} else {
				failures = 0
				a.renewal.WithLabelValues("success").Inc()
				st := a.cur.Load()
				nextRenew = a.renewAt(st)
				nextBundle = now.Add(a.refreshHint(st.bundle))
				leaf := st.svid.Certificates[0]
				a.log.Info("X.509-SVID rotated", "spiffe_id", st.svid.ID.String(), "serial", fmt.Sprintf("%x", leaf.SerialNumber),
					"not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "next_renewal_in", nextRenew.Sub(now).Round(time.Millisecond))
			}
		} else if !now.Before(nextBundle) {
			if err := a.refreshBundle(ctx); err != nil && ctx.Err() == nil {
				bundleFail++
				wait := min(a.retryDelay(bundleFail), a.refreshHint(a.cur.Load().bundle))
				a.log.Warn("trust bundle refresh failed; keeping the last good bundle", "err", err, "retry_in", wait.Round(time.Millisecond), "attempt", bundleFail)
				nextBundle = now.Add(wait)
			} else {
				bundleFail = 0
				nextBundle = now.Add(a.refreshHint(a.cur.Load().bundle))
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		wake := nextRenew
		if !nextBundle.IsZero() && nextBundle.Before(wake) {
			wake = nextBundle
		}
		t := a.clock.NewTimer(max(wake.Sub(a.clock.Now()), 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

func (a *Agent) renewAt(st *state) time.Time {
	life := st.svid.Certificates[0].NotAfter.Sub(st.issuedAt)
	f := a.cfg.RenewFraction + a.cfg.Jitter*(mrand.Float64()-0.5)
	return st.issuedAt.Add(time.Duration(float64(life) * f))
}

func (a *Agent) refreshHint(b *spiffebundle.Bundle) time.Duration {
	if b != nil {
		if h, ok := b.RefreshHint(); ok && h > 0 {
			return h
		}
	}
	return 5 * time.Minute
}

// retryDelay is exponential backoff with full jitter, capped so that several
// attempts still fit in what is left of the current SVID's life.
func (a *Agent) retryDelay(failures int) time.Duration {
	limit := a.cfg.MaxRetry
	if s := a.cur.Load().svid; s != nil {
		// Near the end the cap stays at MinRetry; it must not jump back to MaxRetry
		// just when the last attempts before expiry count most.
		if left := s.Certificates[0].NotAfter.Sub(a.clock.Now()) / 4; left > 0 && left < limit {
			limit = max(left, a.cfg.MinRetry)
		}
	}
	d := time.Duration(float64(a.cfg.MinRetry) * math.Pow(2, float64(min(failures-1, 20))))
	d = min(d, limit)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// identity returns the identity to request and the token, if one is needed.
func (a *Agent) identity(useToken bool) (ca.Identity, string, error) {
	var token string
	if useToken {
		if a.cfg.Token == nil {
			return ca.Identity{}, "", errors.New("no valid SVID and no token to authenticate with")
		}
		t, err := a.cfg.Token()
		if err != nil {
			return ca.Identity{}, "", fmt.Errorf("read token: %w", err)
		}
		token = strings.TrimSpace(t)
	}
	if a.cfg.Identity != (ca.Identity{}) {
		return a.cfg.Identity, token, nil
	}
	if s := a.cur.Load().svid; s != nil {
		ident, err := ca.IdentityFromID(s.ID)
		return ident, token, err
	}
	if token == "" {
		t, err := a.cfg.Token()
		if err != nil {
			return ca.Identity{}, "", fmt.Errorf("read token: %w", err)
		}
		token = strings.TrimSpace(t)
	}
	ident, err := IdentityFromToken(token)
	if err != nil {
		return ca.Identity{}, "", err
	}
	return ident, token, nil
}

// IdentityFromToken reads the identity a join token names. The CA checks the
// binding; this only tells the agent what to put in its CSR.
func IdentityFromToken(token string) (ca.Identity, error) {
	rest, ok := strings.CutPrefix(token, "rampart-join.")
	if !ok {
		return ca.Identity{}, errors.New("the token does not name its identity; set the namespace and service account explicitly")
	}
	hint, _, ok := strings.Cut(rest, ".")
	if !ok {
		return ca.Identity{}, errors.New("malformed join token")
	}
	raw, err := base64.RawURLEncoding.DecodeString(hint)
	if err != nil {
		return ca.Identity{}, fmt.Errorf("malformed join token: %w", err)
	}
	ns, sa, ok := strings.Cut(string(raw), "/")
	if !ok {
		return ca.Identity{}, errors.New("malformed join token")
	}
	ident := ca.Identity{Namespace: ns, ServiceAccount: sa}
	return ident, ident.Validate()
}

// svidUsable reports whether the current SVID can authenticate a renewal.
func (a *Agent) svidUsable() bool {
	s := a.cur.Load().svid
	return s != nil && a.clock.Now().Before(s.Certificates[0].NotAfter)
}

func (a *Agent) renew(ctx context.Context) error {
	useSVID := a.svidUsable()
	err := a.renewWith(ctx, useSVID)
	if err != nil && useSVID && a.cfg.Token != nil {
		if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied {
			a.log.Warn("renewal with the current SVID was refused; trying the token", "err", err)
			return a.renewWith(ctx, false)
		}
	}
	return err
}

func (a *Agent) renewWith(ctx context.Context, useSVID bool) error {
	ident, token, err := a.identity(!useSVID)
	if err != nil {
		return err
	}
	id, err := ident.ID(a.cfg.TrustDomain)
	if err != nil {
		return err
	}
	key, err := ca.GenerateKey(a.cfg.KeyType)
	if err != nil {
		return err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return fmt.Errorf("create CSR: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	defer cancel()
	conn, err := a.dial(useSVID)
	if err != nil {
		return err
	}
	defer conn.Close()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := istioca.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &istioca.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		ValidityDuration: int64(a.cfg.TTL / time.Second),
	})
	if err != nil {
		return fmt.Errorf("CreateCertificate at %s: %w", a.cfg.ControlPlane, err)
	}
	svid, root, err := a.parseChain(resp.GetCertChain(), id, key)
	if err != nil {
		return fmt.Errorf("CA response: %w", err)
	}
	bundle, err := a.fetchBundle(ctx, conn)
	if err != nil {
		a.log.Warn("bundle fetch after renewal failed; adding the new SVID's root to the last good bundle", "err", err)
		bundle = a.cur.Load().bundle
		if bundle == nil {
			bundle = spiffebundle.New(a.cfg.TrustDomain)
		} else {
			bundle = bundle.Clone()
		}
		bundle.AddX509Authority(root)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(a.clock.Now())); err != nil {
		return fmt.Errorf("the new SVID does not verify against the bundle: %w", err)
	}
	a.publish(svid, bundle)
	return nil
}

func (a *Agent) parseChain(pems []string, want spiffeid.ID, key crypto.Signer) (*x509svid.SVID, *x509.Certificate, error) {
	if len(pems) < 2 {
		return nil, nil, fmt.Errorf("certificate chain has %d certificates; want the SVID and its root at least", len(pems))
	}
	var chain []*x509.Certificate
	for i, p := range pems {
		certs, err := ca.ParseCertsPEM([]byte(p))
		if err != nil {
			return nil, nil, fmt.Errorf("certificate %d: %w", i+1, err)
		}
		chain = append(chain, certs...)
	}
	svid := &x509svid.SVID{Certificates: chain[:len(chain)-1], PrivateKey: key}
	leaf := chain[0]
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := key.Public().(equaler); !ok || !pub.Equal(leaf.PublicKey) {
		return nil, nil, errors.New("the SVID's public key is not ours")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, nil, err
	}
	if id != want {
		return nil, nil, fmt.Errorf("the SVID is for %s, not %s", id, want)
	}
	svid.ID = id
	return svid, chain[len(chain)-1], nil
}

func (a *Agent) refreshBundle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	defer cancel()
	conn, err := a.dial(a.svidUsable())
	if err != nil {
		return err
	}
	defer conn.Close()
	b, err := a.fetchBundle(ctx, conn)
	if err != nil {
		return err
	}
	st := a.cur.Load()
	if st.bundle != nil && st.bundle.Equal(b) {
		return nil
	}
	a.publish(st.svid, b)
	n, _ := b.SequenceNumber()
	a.log.Info("trust bundle updated", "sequence", n, "x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()))
	return nil
}

func (a *Agent) fetchBundle(ctx context.Context, conn *grpc.ClientConn) (*spiffebundle.Bundle, error) {
	out := new(wrapperspb.BytesValue)
	if err := conn.Invoke(ctx, ca.BundleMethod, &emptypb.Empty{}, out); err != nil {
		return nil, fmt.Errorf("GetBundle: %w", err)
	}
	b, err := spiffebundle.Parse(a.cfg.TrustDomain, out.GetValue())
	if err != nil {
		return nil, fmt.Errorf("parse bundle: %w", err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, errors.New("bundle has no X.509 authorities")
	}
	if cur := a.cur.Load().bundle; cur != nil {
		old, _ := cur.SequenceNumber()
		if n, _ := b.SequenceNumber(); n < old {
			return nil, fmt.Errorf("bundle sequence %d is older than the one held (%d); ignoring it", n, old)
		}
	}
	return b, nil
}

// publish makes svid and b current and keeps them in DataDir.
func (a *Agent) publish(svid *x509svid.SVID, b *spiffebundle.Bundle) {
	old := a.set(svid, b)
	a.persist(old, a.cur.Load())
}

// set makes svid and b current and returns what they replaced.
func (a *Agent) set(svid *x509svid.SVID, b *spiffebundle.Bundle) *state {
	old := a.cur.Load()
	issued := old.issuedAt
	if svid != old.svid {
		issued = a.clock.Now()
	}
	a.cur.Store(&state{svid: svid, issuedAt: issued, bundle: b, changed: make(chan struct{})})
	close(old.changed)
	if svid != nil {
		a.once.Do(func() { close(a.ready) })
	}
	if svid != old.svid {
		a.jwtMu.Lock()
		clear(a.jwtCache)
		a.jwtMu.Unlock()
	}
	return old
}

// dial opens a connection to the control plane. The server must present an SVID
// for rampartd's identity that chains to a root we trust; with useSVID the agent
// presents its own SVID as client certificate.
func (a *Agent) dial(useSVID bool) (*grpc.ClientConn, error) {
	serverID, err := ca.ControlPlaneIdentity(a.cfg.RootNamespace).ID(a.cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate: SPIFFE authentication, not WebPKI hostnames
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs := make([]*x509.Certificate, 0, len(raw))
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			id, _, err := x509svid.Verify(certs, a.trustForControlPlane(), x509svid.WithTime(a.clock.Now()))
			if err != nil {
				return fmt.Errorf("control plane certificate: %w", err)
			}
			if id != serverID {
				return fmt.Errorf("control plane presented %s, want %s", id, serverID)
			}
			return nil
		},
	}
	if useSVID {
		// The current SVID at each handshake, so a long-lived connection's
		// reconnects present the rotated one.
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			svid := a.cur.Load().svid
			if svid == nil {
				return &tls.Certificate{}, nil
			}
			c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
			for _, x := range svid.Certificates {
				c.Certificate = append(c.Certificate, x.Raw)
			}
			return c, nil
		}
	}
	conn, err := grpc.NewClient(a.cfg.ControlPlane, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", a.cfg.ControlPlane, err)
	}
	return conn, nil
}

// DialControlPlane opens a connection to rampartd authenticated with the agent's
// current SVID (for xDS). It needs the first SVID.
func (a *Agent) DialControlPlane() (*grpc.ClientConn, error) {
	if !a.svidUsable() {
		return nil, ErrNoSVID
	}
	return a.dial(true)
}

// trustForControlPlane is the latest bundle fetched from rampartd once there is
// one, else the configured roots. The roots are for first contact only: a root
// that a rotation retired has left the bundle, and whoever holds its key must not
// be able to pose as rampartd and push a bundle of their own.
func (a *Agent) trustForControlPlane() x509bundle.Source {
	if cur := a.cur.Load().bundle; cur != nil {
		return cur.X509Bundle()
	}
	return x509bundle.FromX509Authorities(a.cfg.TrustDomain, a.cfg.RootCerts)
}

// FetchJWTSVID returns a JWT-SVID for the agent's identity and the audiences, from
// a cache while the cached one has more than half its life left.
func (a *Agent) FetchJWTSVID(ctx context.Context, audience []string) (*jwtsvid.SVID, error) {
	if !a.svidUsable() {
		return nil, ErrNoSVID
	}
	key := strings.Join(audience, "\x00")
	a.jwtMu.Lock()
	if c, ok := a.jwtCache[key]; ok && a.clock.Now().Before(c.fetched.Add(c.svid.Expiry.Sub(c.fetched)/2)) {
		a.jwtMu.Unlock()
		return c.svid, nil
	}
	a.jwtMu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	defer cancel()
	conn, err := a.dial(true)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp := new(workload.JWTSVIDResponse)
	if err := conn.Invoke(ctx, ca.JWTSVIDMethod, &workload.JWTSVIDRequest{Audience: audience}, resp); err != nil {
		return nil, fmt.Errorf("MintJWTSVID: %w", err)
	}
	if len(resp.GetSvids()) != 1 {
		return nil, fmt.Errorf("MintJWTSVID returned %d SVIDs, want 1", len(resp.GetSvids()))
	}
	svid, err := jwtsvid.ParseAndValidate(resp.Svids[0].GetSvid(), a, audience)
	if err != nil {
		return nil, fmt.Errorf("control plane returned an invalid JWT-SVID: %w", err)
	}
	a.jwtMu.Lock()
	a.jwtCache[key] = cachedJWT{svid: svid, fetched: a.clock.Now()}
	a.jwtMu.Unlock()
	return svid, nil
}
