package ca

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newTestAuthority(t, Config{Metrics: reg})
	key := testKey(t, "p256")

	for range 2 {
		signTestSVID(t, a)
	}
	if _, err := a.SignCSR(csrFor(t, key, "spiffe://example.org/ns/default/sa/admin"), testIdent, 0); err == nil {
		t.Fatal("SignCSR for another identity succeeded")
	}
	if _, err := a.SignCSR([]byte("junk"), testIdent, 0); err == nil {
		t.Fatal("SignCSR of junk succeeded")
	}
	cp := ControlPlaneIdentity(DefaultRootNamespace)
	if _, err := a.SignCSR(csrFor(t, key, "spiffe://example.org/ns/rampart-system/sa/rampartd"), cp, 0); err == nil {
		t.Fatal("SignCSR for the control plane's identity succeeded")
	}
	a.CountRejected("unauthenticated")

	const issued = `
# HELP rampart_ca_certificates_issued_total X.509-SVID signing requests by result (success, invalid_csr, identity_mismatch, reserved_identity, error; the CA server adds unauthenticated and invalid_request).
# TYPE rampart_ca_certificates_issued_total counter
rampart_ca_certificates_issued_total{result="error"} 0
rampart_ca_certificates_issued_total{result="identity_mismatch"} 1
rampart_ca_certificates_issued_total{result="invalid_csr"} 1
rampart_ca_certificates_issued_total{result="reserved_identity"} 1
rampart_ca_certificates_issued_total{result="success"} 2
rampart_ca_certificates_issued_total{result="unauthenticated"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(issued), "rampart_ca_certificates_issued_total"); err != nil {
		t.Error(err)
	}

	expiry := fmt.Sprintf(`
# HELP rampart_ca_root_expiry_timestamp_seconds Expiry (Unix seconds) of each root in the trust bundle, by generation and state.
# TYPE rampart_ca_root_expiry_timestamp_seconds gauge
rampart_ca_root_expiry_timestamp_seconds{generation="1",state="active"} %d
`, a.SigningRoot().NotAfter.Unix())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expiry), "rampart_ca_root_expiry_timestamp_seconds"); err != nil {
		t.Error(err)
	}

	// Only successful signings are timed.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var samples uint64
	for _, f := range families {
		if f.GetName() == "rampart_ca_sign_duration_seconds" {
			samples = f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if samples != 2 {
		t.Errorf("rampart_ca_sign_duration_seconds has %d samples, want 2", samples)
	}

	// After a rotation the gauge has one series per root.
	if _, err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "rampart_ca_root_expiry_timestamp_seconds"); err != nil || n != 2 {
		t.Errorf("root expiry series after Rotate = %d (%v), want 2", n, err)
	}
}
