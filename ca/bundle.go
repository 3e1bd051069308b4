package ca

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func makeBundle(td spiffeid.TrustDomain, st *stateRecord, roots []*x509.Certificate, jwtKeys map[string]crypto.PublicKey) *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(td, roots)
	b.SetJWTAuthorities(jwtKeys)
	b.SetSequenceNumber(st.Sequence)
	if st.RefreshHint > 0 {
		b.SetRefreshHint(time.Duration(st.RefreshHint) * time.Second)
	}
	return b
}

func jwtPubFile(rec genRecord) string { return strings.TrimSuffix(rec.JWTKeyFile, ".key") + ".pub" }

// ReadBundle builds the trust bundle from stateDir without taking its lock and
// without reading any private key, for tools that run beside (or without) rampartd.
func ReadBundle(stateDir string) (*spiffebundle.Bundle, error) {
	st, err := readState(stateDir)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(st.TrustDomain)
	if err != nil {
		return nil, err
	}
	roots, err := ReadRoots(stateDir)
	if err != nil {
		return nil, err
	}
	keys := map[string]crypto.PublicKey{}
	for _, rec := range st.Generations {
		path := filepath.Join(caDir(stateDir), jwtPubFile(rec))
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("generation %d JWT public key: %w", rec.ID, err)
		}
		pub, err := parsePublicKeyPEM(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		keys[rec.JWTKeyID] = pub
	}
	return makeBundle(td, st, roots, keys), nil
}
