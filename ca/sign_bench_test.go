package ca

import (
	"testing"

	"k8s.io/utils/clock"
)

// BenchmarkSignCSR measures X.509-SVID issuance (verify a P-256 CSR, sign, parse)
// under parallel load, per root key type.
func BenchmarkSignCSR(b *testing.B) {
	for _, kt := range []KeyType{KeyECDSAP256, KeyRSA2048} {
		b.Run("root="+string(kt), func(b *testing.B) {
			a := newTestAuthority(b, Config{KeyType: kt, Clock: clock.RealClock{}})
			csr := csrFor(b, testKey(b, "p256"), testID.String())
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := a.SignCSR(csr, testIdent, 0); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
		})
	}
}
