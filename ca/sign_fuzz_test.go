package ca

import (
	"errors"
	"testing"
)

// FuzzSignCSR feeds arbitrary bytes to SignCSR: it must never panic, fail only
// with the documented sentinels, and sign nothing but the requested identity.
func FuzzSignCSR(f *testing.F) {
	a := newTestAuthority(f, Config{})
	key := testKey(f, "p256")
	valid := csrFor(f, key, testID.String())
	flip := func(i int) []byte {
		b := append([]byte(nil), valid...)
		b[i%len(b)] ^= 0x5a
		return b
	}
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(append(append([]byte(nil), valid...), 0))
	f.Add(flip(4))              // inside the outer SEQUENCE header
	f.Add(flip(len(valid) / 2)) // inside the URI SAN extension or key
	f.Add(flip(len(valid) - 1)) // the signature
	f.Add(csrFor(f, key))       // no URI SAN
	f.Add(csrFor(f, key, "spiffe://example.org/ns/default/sa/admin"))
	f.Add(csrFor(f, key, testID.String(), testID.String()))
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})

	f.Fuzz(func(t *testing.T, der []byte) {
		chain, err := a.SignCSR(der, testIdent, 0)
		if err != nil {
			if !errors.Is(err, ErrInvalidCSR) && !errors.Is(err, ErrIdentityMismatch) {
				t.Fatalf("SignCSR error %v is neither ErrInvalidCSR nor ErrIdentityMismatch", err)
			}
			if chain != nil {
				t.Fatalf("SignCSR returned a chain with error %v", err)
			}
			return
		}
		leaf := chain[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() {
			t.Fatalf("signed URI SANs %v, want exactly [%s]", leaf.URIs, testID)
		}
		if leaf.IsCA || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
			t.Fatalf("signed certificate is a CA (%v) or carries CSR SANs %v %v %v", leaf.IsCA, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
		}
	})
}
