package upstream

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// flagNone is the flag label of an attempt that got a response (Envoy's
// access logs print "-" for no flags).
const flagNone = "-"

var allFlags = []string{flagNone, FlagNoHealthyUpstream, FlagConnectFailure, FlagOverflow, FlagConnectionTermination, FlagTimeout, FlagDownstreamTermination}

// Circuit breakers, as the breaker label and Error.Breaker name them.
const (
	breakerRequests    = "max_requests"
	breakerPending     = "max_pending_requests"
	breakerConnections = "max_connections"
	breakerRetries     = "max_retries"
)

var allBreakers = []string{breakerRequests, breakerPending, breakerConnections, breakerRetries}

// metrics are the package's collectors. Every series is labelled by cluster
// name (bounded by configuration, and deleted when a cluster goes) and at
// most one label with a fixed set of values.
type metrics struct {
	requests    *prometheus.CounterVec
	overflows   *prometheus.CounterVec
	ejections   *prometheus.CounterVec
	connsActive *prometheus.GaugeVec
	connsTotal  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_upstream_requests_total",
			Help: "Attempts sent to a cluster (HTTP requests and TCP connections), by Envoy response flag; \"-\" is an attempt that got a response.",
		}, []string{"cluster", "flag"}),
		overflows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_upstream_overflow_total",
			Help: "Attempts and retries refused by a circuit breaker, by breaker.",
		}, []string{"cluster", "breaker"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_upstream_ejections_total",
			Help: "Hosts ejected by outlier detection.",
		}, []string{"cluster"}),
		connsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rampart_upstream_connections_active",
			Help: "Open connections to a cluster's hosts.",
		}, []string{"cluster"}),
		connsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_upstream_connections_total",
			Help: "Connections opened to a cluster's hosts.",
		}, []string{"cluster"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.overflows, m.ejections, m.connsActive, m.connsTotal} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("upstream: metrics already registered on this registry (one Manager per registry)")
			}
			return nil, err
		}
	}
	return m, nil
}

// clusterMetrics are one cluster's series, looked up once so the request
// path does no label hashing.
type clusterMetrics struct {
	requests    [7]prometheus.Counter // by allFlags index
	overflows   [4]prometheus.Counter // by allBreakers index
	ejections   prometheus.Counter
	connsActive prometheus.Gauge
	connsTotal  prometheus.Counter
}

func (m *metrics) forCluster(name string) *clusterMetrics {
	cm := &clusterMetrics{
		ejections:   m.ejections.WithLabelValues(name),
		connsActive: m.connsActive.WithLabelValues(name),
		connsTotal:  m.connsTotal.WithLabelValues(name),
	}
	for i, f := range allFlags {
		cm.requests[i] = m.requests.WithLabelValues(name, f)
	}
	for i, b := range allBreakers {
		cm.overflows[i] = m.overflows.WithLabelValues(name, b)
	}
	return cm
}

func (m *metrics) deleteCluster(name string) {
	l := prometheus.Labels{"cluster": name}
	m.requests.DeletePartialMatch(l)
	m.overflows.DeletePartialMatch(l)
	m.ejections.DeletePartialMatch(l)
	m.connsActive.DeletePartialMatch(l)
	m.connsTotal.DeletePartialMatch(l)
}

func (cm *clusterMetrics) request(flag string) {
	for i, f := range allFlags {
		if f == flag {
			cm.requests[i].Inc()
			return
		}
	}
}

func (cm *clusterMetrics) overflow(breaker string) {
	for i, b := range allBreakers {
		if b == breaker {
			cm.overflows[i].Inc()
			return
		}
	}
}
