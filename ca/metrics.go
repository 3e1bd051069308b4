package ca

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	issued     *prometheus.CounterVec
	signTime   prometheus.Histogram
	rootExpiry *prometheus.GaugeVec
	rotations  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_ca_certificates_issued_total",
			Help: "X.509-SVID signing requests by result (success, invalid_csr, identity_mismatch, reserved_identity, error; the CA server adds unauthenticated and invalid_request).",
		}, []string{"result"}),
		signTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "rampart_ca_sign_duration_seconds",
			Help:    "Time to verify a CSR and sign an X.509-SVID.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14),
		}),
		rootExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rampart_ca_root_expiry_timestamp_seconds",
			Help: "Expiry (Unix seconds) of each root in the trust bundle, by generation and state.",
		}, []string{"generation", "state"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rampart_ca_root_rotation_transitions_total",
			Help: "Root rotation phase transitions (prepared, switched, retired).",
		}, []string{"transition"}),
	}
	for _, c := range []prometheus.Collector{m.issued, m.signTime, m.rootExpiry, m.rotations} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{"success", "invalid_csr", "identity_mismatch", "reserved_identity", "error"} {
		m.issued.WithLabelValues(r)
	}
	return m, nil
}

func (m *metrics) observeSign(err error, d time.Duration) {
	result := "success"
	switch {
	case err == nil:
		m.signTime.Observe(d.Seconds())
	case errors.Is(err, ErrInvalidCSR):
		result = "invalid_csr"
	case errors.Is(err, ErrIdentityMismatch):
		result = "identity_mismatch"
	case errors.Is(err, ErrReservedIdentity):
		result = "reserved_identity"
	default:
		result = "error"
	}
	m.issued.WithLabelValues(result).Inc()
}

func (m *metrics) setRoots(gens []*generation) {
	m.rootExpiry.Reset()
	for _, g := range gens {
		m.rootExpiry.WithLabelValues(strconv.Itoa(g.rec.ID), g.rec.State).Set(float64(g.root().NotAfter.Unix()))
	}
}

// CountRejected records a signing request refused before it reached the
// Authority (bad credential, malformed request), so the issued-by-result metric
// accounts for every request.
func (a *Authority) CountRejected(result string) {
	a.metrics.issued.WithLabelValues(result).Inc()
}
