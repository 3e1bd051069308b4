package jwt

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Results counted by rampart_jwt_requests_total.
const (
	resultNoToken  = "no_token"
	resultValid    = "valid"
	resultInvalid  = "invalid"
	resultAudience = "audience"
)

type metrics struct {
	requests    *prometheus.CounterVec
	fetches     *prometheus.CounterVec
	up          *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
	cache       *prometheus.CounterVec

	noToken, valid, invalid, audience prometheus.Counter
	cacheHit, cacheMiss               prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_jwt_requests_total",
			Help: "Requests seen by JWT authentication, by result: no_token, valid, invalid (401), audience (403).",
		}, []string{"result"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_jwks_fetch_total",
			Help: "JWKS fetches (with OpenID discovery when configured), by issuer and result: success or error.",
		}, []string{"issuer", "result"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rampart_jwks_issuer_up",
			Help: "1 if the last JWKS fetch for the issuer succeeded, 0 if it failed (tokens keep verifying with the last good keys).",
		}, []string{"issuer"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rampart_jwks_last_success_timestamp_seconds",
			Help: "Unix time of the last successful JWKS fetch for the issuer.",
		}, []string{"issuer"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_jwt_token_cache_total",
			Help: "Verified-token cache lookups, by result: hit or miss.",
		}, []string{"result"}),
	}
	m.noToken = m.requests.WithLabelValues(resultNoToken)
	m.valid = m.requests.WithLabelValues(resultValid)
	m.invalid = m.requests.WithLabelValues(resultInvalid)
	m.audience = m.requests.WithLabelValues(resultAudience)
	m.cacheHit = m.cache.WithLabelValues("hit")
	m.cacheMiss = m.cache.WithLabelValues("miss")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.fetches, m.up, m.lastSuccess, m.cache} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register jwt metrics: %w", err)
		}
	}
	return m, nil
}
