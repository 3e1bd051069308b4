package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authz"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// Keys a limit buckets by (authz.RateLimit.Key).
const (
	keyShared           = "Shared"
	keySourcePrincipal  = "SourcePrincipal"
	keyRequestPrincipal = "RequestPrincipal"
	keySourceIP         = "SourceIP"
	keyHeader           = "Header"
)

// Results of a limit check, the result label of rampart_ratelimit_requests_total.
const (
	ResultOK            = "ok"
	ResultLimited       = "limited"
	ResultDryRunLimited = "dry_run_limited"
)

// Config configures a Limiter.
type Config struct {
	// MaxKeys bounds the buckets one limit keeps. Default 10,000.
	MaxKeys int
	// SweepInterval is how often Run drops buckets that have refilled.
	// Default 1 minute.
	SweepInterval time.Duration
	Clock         clock.PassiveClock
	Log           *slog.Logger
	Metrics       prometheus.Registerer
}

// Result is the outcome of Check.
type Result struct {
	// Limited is true when an enforced limit refused the request; Limit names it.
	Limited bool
	Limit   string
}

// Set is a validated set of limits, ready to Swap in.
type Set struct {
	limits []*limit
}

type limit struct {
	spec authz.RateLimit
	b    *buckets
}

// Limiter checks requests against the current set of limits.
type Limiter struct {
	cfg Config
	log *slog.Logger
	cur atomic.Pointer[Set]

	swapMu sync.Mutex // serializes Build+Swap's reuse of buckets

	requests *prometheus.CounterVec
	keys     *prometheus.GaugeVec
	overflow *prometheus.CounterVec
}

// New builds a Limiter with no limits. It does no I/O.
func New(cfg Config) (*Limiter, error) {
	if cfg.MaxKeys < 0 || cfg.SweepInterval < 0 {
		return nil, errors.New("ratelimit: MaxKeys and SweepInterval must not be negative")
	}
	if cfg.MaxKeys == 0 {
		cfg.MaxKeys = 10000
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = time.Minute
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
	l := &Limiter{cfg: cfg, log: cfg.Log.With("component", "ratelimit")}
	l.cur.Store(&Set{})
	l.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rampart_ratelimit_requests_total",
		Help: "Requests checked against a local rate limit, by limit (NAMESPACE/POLICY/LIMIT) and result: ok, limited (answered 429), dry_run_limited (would have been).",
	}, []string{"limit", "result"})
	l.keys = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rampart_ratelimit_buckets",
		Help: "Token buckets a local rate limit keeps (one per key seen recently).",
	}, []string{"limit"})
	l.overflow = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rampart_ratelimit_overflow_total",
		Help: "Requests whose key found no free bucket (MaxKeys busy) and shared the limit's overflow bucket.",
	}, []string{"limit"})
	for _, c := range []prometheus.Collector{l.requests, l.keys, l.overflow} {
		if err := cfg.Metrics.Register(c); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Build validates limits and prepares them as a Set. A limit identical to one
// in the current set (same ID, match, key, rate, burst, dry-run) shares its
// buckets, so an unrelated bundle change does not refill them. Nothing
// changes until Swap.
func (l *Limiter) Build(limits []authz.RateLimit) (*Set, error) {
	l.swapMu.Lock()
	defer l.swapMu.Unlock()
	old := map[string]*buckets{}
	for _, ol := range l.cur.Load().limits {
		old[fingerprint(ol.spec)] = ol.b
	}
	s := &Set{}
	seen := map[string]bool{}
	for i, rl := range limits {
		if rl.ID == "" || seen[rl.ID] {
			return nil, fmt.Errorf("rate limit %d: id %q is empty or repeated", i, rl.ID)
		}
		seen[rl.ID] = true
		r, burst, err := parse(rl)
		if err != nil {
			return nil, fmt.Errorf("rate limit %s: %w", rl.ID, err)
		}
		b := old[fingerprint(rl)]
		if b == nil {
			b = newBuckets(r, burst, l.cfg.MaxKeys)
		}
		s.limits = append(s.limits, &limit{spec: rl, b: b})
	}
	return s, nil
}

func parse(rl authz.RateLimit) (rate.Limit, int, error) {
	switch rl.Key {
	case keyShared, keySourcePrincipal, keyRequestPrincipal, keySourceIP:
	case keyHeader:
		if rl.KeyHeader == "" {
			return 0, 0, errors.New("key Header without a header name")
		}
	default:
		return 0, 0, fmt.Errorf("unknown key %q", rl.Key)
	}
	per, err := time.ParseDuration(rl.Period)
	if err != nil || per <= 0 {
		return 0, 0, fmt.Errorf("period %q is not a positive duration", rl.Period)
	}
	if rl.Requests < 1 || rl.Burst < 1 || rl.Burst > math.MaxInt32 {
		return 0, 0, fmt.Errorf("requests %d and burst %d must be positive (burst at most %d)", rl.Requests, rl.Burst, math.MaxInt32)
	}
	return rate.Limit(float64(rl.Requests) / per.Seconds()), int(rl.Burst), nil
}

// fingerprint identifies a limit's definition: every field, so any change
// to it is a new limit with fresh buckets.
func fingerprint(rl authz.RateLimit) string {
	return fmt.Sprintf("%#v", rl)
}

// Swap makes s the set Check uses.
func (l *Limiter) Swap(s *Set) {
	l.swapMu.Lock()
	defer l.swapMu.Unlock()
	prev := l.cur.Swap(s)
	kept := map[string]bool{}
	for _, lim := range s.limits {
		kept[lim.spec.ID] = true
	}
	for _, lim := range prev.limits {
		if !kept[lim.spec.ID] {
			l.keys.DeleteLabelValues(lim.spec.ID)
		}
	}
}

// Limits returns how many limits are in force.
func (l *Limiter) Limits() int { return len(l.cur.Load().limits) }

// Check takes a token from the bucket of every limit r matches, in order, and
// stops at the first enforced limit that has none. Dry-run limits are counted
// and logged but never refuse. path is r's path as authorization normalized it
// (the mesh's pathNormalization, so a limit on /api/* sees what a policy on
// /api/* saw); "" normalizes r.Path with the default mode.
func (l *Limiter) Check(r *authz.Request, path string) Result {
	s := l.cur.Load()
	if len(s.limits) == 0 {
		return Result{}
	}
	q := newRequest(r, path)
	now := l.cfg.Clock.Now()
	for _, lim := range s.limits {
		if !matches(&lim.spec.Match, q) {
			continue
		}
		ok, over := lim.b.allow(keyOf(&lim.spec, q), now)
		if over {
			l.overflow.WithLabelValues(lim.spec.ID).Inc()
		}
		switch {
		case ok:
			l.requests.WithLabelValues(lim.spec.ID, ResultOK).Inc()
		case lim.spec.DryRun:
			l.requests.WithLabelValues(lim.spec.ID, ResultDryRunLimited).Inc()
			l.log.Info("request over a dry-run rate limit; let through", "limit", lim.spec.ID, "request_id", r.ID,
				"source_principal", r.SourcePrincipal, "path", q.path)
		default:
			l.requests.WithLabelValues(lim.spec.ID, ResultLimited).Inc()
			return Result{Limited: true, Limit: lim.spec.ID}
		}
	}
	return Result{}
}

// Run drops refilled buckets every SweepInterval (and updates the bucket
// gauge) until ctx ends. Check works without it; it keeps idle memory low.
func (l *Limiter) Run(ctx context.Context) error {
	t := time.NewTicker(l.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		l.Sweep()
	}
}

// Sweep drops every bucket that has refilled and updates the bucket gauge.
func (l *Limiter) Sweep() {
	now := l.cfg.Clock.Now()
	for _, lim := range l.cur.Load().limits {
		l.keys.WithLabelValues(lim.spec.ID).Set(float64(lim.b.sweep(now)))
	}
}
