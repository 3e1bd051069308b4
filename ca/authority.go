package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/utils/clock"
)

// Config configures an Authority.
type Config struct {
	// StateDir holds the CA's keys and state (see store.go). Required.
	StateDir string
	// TrustDomain of every SVID issued. Default cluster.local.
	TrustDomain spiffeid.TrustDomain
	// KeyType of generated roots. Default ECDSA P-256.
	KeyType KeyType
	// RootTTL is the lifetime of a generated root. Default 10 years.
	RootTTL time.Duration
	// SVIDTTL is the default and maximum lifetime of an X.509-SVID. Default 1 h.
	SVIDTTL time.Duration
	// JWTSVIDTTL is the lifetime of a JWT-SVID. Default 5 min.
	JWTSVIDTTL time.Duration
	// RefreshHint is published in the bundle: how often holders should re-fetch it.
	// Default 5 min.
	RefreshHint time.Duration
	// PropagationDelay is how long a prepared root sits in the bundle before it
	// starts signing. Default twice the refresh hint.
	PropagationDelay time.Duration
	// RetireMargin is added to the longest SVID lifetime before an old root leaves
	// the bundle after a switch. Default 1 min.
	RetireMargin time.Duration
	// External, when set, is an operator-supplied signing CA ("bring your own CA").
	External *ExternalCA
	// RootNamespace is the mesh root namespace, where rampartd's own identity lives.
	RootNamespace string

	Clock   clock.WithTicker
	Log     *slog.Logger
	Metrics prometheus.Registerer
}

// ExternalCA names an operator-supplied signing certificate and key. The certificate
// file may carry the chain after the signing certificate; ChainFile may add the rest.
// The chain must end with a self-signed root, which becomes the bundle's authority.
type ExternalCA struct {
	CertFile  string
	KeyFile   string
	ChainFile string
}

// Authority signs SVIDs, publishes the trust bundle and rotates roots.
type Authority struct {
	cfg     Config
	log     *slog.Logger
	clock   clock.WithTicker
	metrics *metrics

	mu   sync.Mutex // serialises state changes; readers use cur
	st   *stateRecord
	cur  atomic.Pointer[view]
	wake chan struct{}
	lock *os.File
}

// view is an immutable snapshot of the CA: what signs and what the bundle holds.
type view struct {
	signer *generation
	gens   []*generation // every generation in the bundle, oldest first
	bundle *spiffebundle.Bundle
}

type generation struct {
	rec    genRecord
	chain  []*x509.Certificate // signing certificate first, root last
	key    crypto.Signer
	jwtKey crypto.Signer
}

func (g *generation) root() *x509.Certificate { return g.chain[len(g.chain)-1] }

// Errors returned by the Authority. Callers match them with errors.Is.
var (
	ErrInvalidCSR         = errors.New("invalid CSR")
	ErrIdentityMismatch   = errors.New("CSR identity does not match the credential")
	ErrReservedIdentity   = errors.New("reserved for the control plane")
	ErrRotationInProgress = errors.New("a root rotation is already in progress")
	ErrExternalCA         = errors.New("the signing CA is operator-supplied")
	ErrStateDirInUse      = errors.New("state directory is in use by another rampartd")
	// ErrCredentialRefused is what an Authenticator's refusal of a credential
	// matches (errors.Is): the client is told it is unauthenticated. Any
	// other error is a failure to decide.
	ErrCredentialRefused = errors.New("credential refused")
)

// New validates cfg and fills defaults. It does no I/O; call Load next.
func New(cfg Config) (*Authority, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("ca: StateDir is required")
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	}
	if cfg.KeyType == "" {
		cfg.KeyType = KeyECDSAP256
	}
	if _, err := ParseKeyType(string(cfg.KeyType)); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if cfg.RootTTL == 0 {
		cfg.RootTTL = 10 * 365 * 24 * time.Hour
	}
	if cfg.SVIDTTL == 0 {
		cfg.SVIDTTL = time.Hour
	}
	if cfg.JWTSVIDTTL == 0 {
		cfg.JWTSVIDTTL = 5 * time.Minute
	}
	if cfg.RefreshHint == 0 {
		cfg.RefreshHint = 5 * time.Minute
	}
	if cfg.PropagationDelay == 0 {
		cfg.PropagationDelay = 2 * cfg.RefreshHint
	}
	if cfg.RetireMargin == 0 {
		cfg.RetireMargin = time.Minute
	}
	// A negative retire margin would drop the old root before its last SVID expires.
	for name, d := range map[string]time.Duration{"RootTTL": cfg.RootTTL, "SVIDTTL": cfg.SVIDTTL, "JWTSVIDTTL": cfg.JWTSVIDTTL, "RefreshHint": cfg.RefreshHint, "PropagationDelay": cfg.PropagationDelay, "RetireMargin": cfg.RetireMargin} {
		if d < 0 {
			return nil, fmt.Errorf("ca: %s must be positive, got %s", name, d)
		}
	}
	if cfg.SVIDTTL >= cfg.RootTTL {
		return nil, fmt.Errorf("ca: SVID TTL %s must be shorter than the root TTL %s", cfg.SVIDTTL, cfg.RootTTL)
	}
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = DefaultRootNamespace
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
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return &Authority{
		cfg:     cfg,
		log:     cfg.Log.With("component", "ca"),
		clock:   cfg.Clock,
		metrics: m,
		wake:    make(chan struct{}, 1),
	}, nil
}

// TrustDomain returns the trust domain the Authority signs for.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.cfg.TrustDomain }

// SVIDTTL returns the default and maximum X.509-SVID lifetime.
func (a *Authority) SVIDTTL() time.Duration { return a.cfg.SVIDTTL }

// Load takes the state directory's lock, then loads the CA from it or creates a new
// root on first start. It must be called once before any other method.
func (a *Authority) Load() (err error) {
	dir := caDir(a.cfg.StateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		return fmt.Errorf("%w: %s (%v)", ErrStateDirInUse, a.cfg.StateDir, err)
	}
	a.lock = lf
	defer func() {
		if err != nil {
			// A failed Load must not keep the directory locked: a retry, or another
			// rampartd with a corrected configuration, would see ErrStateDirInUse.
			a.lock = nil
			lf.Close()
		}
	}()

	a.mu.Lock()
	defer a.mu.Unlock()
	st, err := readState(a.cfg.StateDir)
	switch {
	case errors.Is(err, ErrNoState):
		st = &stateRecord{Version: stateVersion, TrustDomain: a.cfg.TrustDomain.Name(), RootNamespace: a.cfg.RootNamespace}
	case err != nil:
		return err
	case st.TrustDomain != a.cfg.TrustDomain.Name():
		return fmt.Errorf("state directory %s belongs to trust domain %q, not %q; use another --state-dir or the same --trust-domain", a.cfg.StateDir, st.TrustDomain, a.cfg.TrustDomain.Name())
	}
	a.st = st

	if a.cfg.External != nil {
		if err := a.loadExternal(); err != nil {
			return err
		}
	} else if len(st.Generations) == 0 {
		g, err := a.newGeneration(1, genActive)
		if err != nil {
			return err
		}
		st.Generations = append(st.Generations, g.rec)
		st.Sequence = 1
		st.RefreshHint = int64(a.cfg.RefreshHint / time.Second)
		if err := writeState(a.cfg.StateDir, st); err != nil {
			return fmt.Errorf("write CA state: %w", err)
		}
		a.log.Info("created root CA", "generation", 1, "key_type", a.cfg.KeyType, "not_after", g.root().NotAfter, "dir", dir)
	}
	if st.RootNamespace != "" && st.RootNamespace != a.cfg.RootNamespace {
		a.log.Warn("root namespace changed since the last start: rampartd's identity moves with it, and sidecars must be started with the new --root-namespace",
			"was", st.RootNamespace, "now", a.cfg.RootNamespace)
	}
	if hint := int64(a.cfg.RefreshHint / time.Second); st.RefreshHint != hint || st.RootNamespace != a.cfg.RootNamespace {
		// Readers beside rampartd take the hint (ReadBundle) and the root
		// namespace (rampartctl token create) from the state file: persist a
		// changed one, or they publish a stale hint until the next rotation,
		// or guard the wrong identity as rampartd's.
		st.RefreshHint = hint
		st.RootNamespace = a.cfg.RootNamespace
		if err := writeState(a.cfg.StateDir, st); err != nil {
			return fmt.Errorf("write CA state: %w", err)
		}
	}
	return a.publishLocked()
}

// Close releases the state directory's lock.
func (a *Authority) Close() error {
	if a.lock == nil {
		return nil
	}
	err := a.lock.Close()
	a.lock = nil
	return err
}

func (a *Authority) loadExternal() error {
	ext := a.cfg.External
	certPEM, err := os.ReadFile(ext.CertFile)
	if err != nil {
		return fmt.Errorf("external CA certificate: %w", err)
	}
	chain, err := ParseCertsPEM(certPEM)
	if err != nil {
		return fmt.Errorf("external CA certificate %s: %w", ext.CertFile, err)
	}
	if ext.ChainFile != "" {
		more, err := os.ReadFile(ext.ChainFile)
		if err != nil {
			return fmt.Errorf("external CA chain: %w", err)
		}
		rest, err := ParseCertsPEM(more)
		if err != nil {
			return fmt.Errorf("external CA chain %s: %w", ext.ChainFile, err)
		}
		chain = append(chain, rest...)
	}
	keyPEM, err := os.ReadFile(ext.KeyFile)
	if err != nil {
		return fmt.Errorf("external CA key: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return fmt.Errorf("external CA key %s: %w", ext.KeyFile, err)
	}
	if err := validateSigningChain(chain, key, a.clock.Now()); err != nil {
		return fmt.Errorf("external CA %s: %w", ext.CertFile, err)
	}
	fp := fingerprint(chain[0])
	// Keep the JWT key across restarts while the external CA stays the same.
	for _, rec := range a.st.Generations {
		if rec.External && rec.Fingerprint == fp {
			return nil
		}
	}
	id := 1
	if n := len(a.st.Generations); n > 0 {
		id = a.st.Generations[n-1].ID + 1
	}
	jwtKey, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		return err
	}
	rec := genRecord{ID: id, State: genActive, Fingerprint: fp, External: true, CreatedAt: a.clock.Now().UTC(),
		ChainFile: fmt.Sprintf("gen-%d.pem", id)}
	// A copy of the (public) chain lets tools read the roots; the key stays in the operator's file.
	if err := WriteFileAtomic(filepath.Join(caDir(a.cfg.StateDir), rec.ChainFile), EncodeCertsPEM(chain), 0o644); err != nil {
		return fmt.Errorf("write external CA chain copy: %w", err)
	}
	if err := a.writeJWTKey(&rec, jwtKey); err != nil {
		return err
	}
	a.st.Generations = []genRecord{rec}
	a.st.Sequence++
	a.log.Info("using operator-supplied CA", "subject", chain[0].Subject.String(), "root", chain[len(chain)-1].Subject.String(), "not_after", chain[0].NotAfter)
	return writeState(a.cfg.StateDir, a.st)
}

// validateSigningChain checks that chain[0] may sign leaf certificates with key and
// that the chain links up to a self-signed root.
func validateSigningChain(chain []*x509.Certificate, key crypto.Signer, now time.Time) error {
	leaf := chain[0]
	if !leaf.IsCA || !leaf.BasicConstraintsValid {
		return errors.New("signing certificate is not a CA (basicConstraints CA:TRUE is required)")
	}
	if leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("signing certificate lacks the keyCertSign key usage")
	}
	if !publicKeyMatches(leaf, key) {
		return errors.New("private key does not match the signing certificate")
	}
	for i, c := range chain {
		if now.After(c.NotAfter) {
			return fmt.Errorf("certificate %d (%s) expired at %s", i+1, c.Subject, c.NotAfter)
		}
		if i+1 < len(chain) {
			if err := c.CheckSignatureFrom(chain[i+1]); err != nil {
				return fmt.Errorf("certificate %d (%s) is not signed by the next one (%s): %w", i+1, c.Subject, chain[i+1].Subject, err)
			}
		}
	}
	root := chain[len(chain)-1]
	if err := root.CheckSignatureFrom(root); err != nil {
		return fmt.Errorf("the chain must end with a self-signed root; %s is not self-signed (add the rest of the chain with the chain file)", root.Subject)
	}
	return nil
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// newGeneration creates and persists a new self-signed root and JWT key.
func (a *Authority) newGeneration(id int, state string) (*generation, error) {
	key, err := GenerateKey(a.cfg.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	now := a.clock.Now()
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	td := a.cfg.TrustDomain
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{td.Name()}, CommonName: "Rampart root CA " + strconv.Itoa(id)},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(a.cfg.RootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	jwtKey, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		return nil, err
	}
	rec := genRecord{
		ID:        id,
		State:     state,
		ChainFile: fmt.Sprintf("gen-%d.pem", id),
		KeyFile:   fmt.Sprintf("gen-%d.key", id),
		CreatedAt: now.UTC(),
	}
	dir := caDir(a.cfg.StateDir)
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(filepath.Join(dir, rec.KeyFile), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write root key: %w", err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, rec.ChainFile), EncodeCertsPEM([]*x509.Certificate{root}), 0o644); err != nil {
		return nil, fmt.Errorf("write root certificate: %w", err)
	}
	if err := a.writeJWTKey(&rec, jwtKey); err != nil {
		return nil, err
	}
	return &generation{rec: rec, chain: []*x509.Certificate{root}, key: key, jwtKey: jwtKey}, nil
}

func (a *Authority) writeJWTKey(rec *genRecord, key crypto.Signer) error {
	pemBytes, err := EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	rec.JWTKeyFile = fmt.Sprintf("gen-%d-jwt.key", rec.ID)
	rec.JWTKeyID, err = keyID(key.Public())
	if err != nil {
		return err
	}
	dir := caDir(a.cfg.StateDir)
	if err := WriteFileAtomic(filepath.Join(dir, rec.JWTKeyFile), pemBytes, 0o600); err != nil {
		return fmt.Errorf("write JWT signing key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	if err := WriteFileAtomic(filepath.Join(dir, jwtPubFile(*rec)), pubPEM, 0o644); err != nil {
		return fmt.Errorf("write JWT public key: %w", err)
	}
	return nil
}

// keyID derives a stable key id from a public key: hex of the first 16 bytes of
// the SHA-256 of its PKIX DER.
func keyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:16]), nil
}

func randomSerial() (*big.Int, error) {
	// 128 bits of randomness; CAB forum asks for at least 64.
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// loadGeneration reads a generation's files from the state directory.
func loadGeneration(stateDir string, rec genRecord, ext *ExternalCA) (*generation, error) {
	dir := caDir(stateDir)
	g := &generation{rec: rec}
	var err error
	if rec.External {
		if ext == nil {
			return nil, fmt.Errorf("generation %d uses an operator-supplied CA, but none is configured", rec.ID)
		}
		certPEM, err := os.ReadFile(ext.CertFile)
		if err != nil {
			return nil, err
		}
		if g.chain, err = ParseCertsPEM(certPEM); err != nil {
			return nil, err
		}
		if ext.ChainFile != "" {
			more, err := os.ReadFile(ext.ChainFile)
			if err != nil {
				return nil, err
			}
			rest, err := ParseCertsPEM(more)
			if err != nil {
				return nil, err
			}
			g.chain = append(g.chain, rest...)
		}
		keyPEM, err := os.ReadFile(ext.KeyFile)
		if err != nil {
			return nil, err
		}
		if g.key, err = ParseKeyPEM(keyPEM); err != nil {
			return nil, err
		}
	} else {
		if g.chain, err = readChain(stateDir, rec); err != nil {
			return nil, err
		}
		keyPEM, err := os.ReadFile(filepath.Join(dir, rec.KeyFile))
		if err != nil {
			return nil, fmt.Errorf("generation %d key: %w", rec.ID, err)
		}
		if g.key, err = ParseKeyPEM(keyPEM); err != nil {
			return nil, fmt.Errorf("generation %d key: %w", rec.ID, err)
		}
		if !publicKeyMatches(g.chain[0], g.key) {
			return nil, fmt.Errorf("generation %d: key %s does not match certificate %s", rec.ID, rec.KeyFile, rec.ChainFile)
		}
	}
	jwtPEM, err := os.ReadFile(filepath.Join(dir, rec.JWTKeyFile))
	if err != nil {
		return nil, fmt.Errorf("generation %d JWT key: %w", rec.ID, err)
	}
	if g.jwtKey, err = ParseKeyPEM(jwtPEM); err != nil {
		return nil, fmt.Errorf("generation %d JWT key: %w", rec.ID, err)
	}
	return g, nil
}

func readChain(stateDir string, rec genRecord) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(filepath.Join(caDir(stateDir), rec.ChainFile))
	if err != nil {
		return nil, fmt.Errorf("generation %d certificate: %w", rec.ID, err)
	}
	chain, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("generation %d certificate %s: %w", rec.ID, rec.ChainFile, err)
	}
	return chain, nil
}

// publishLocked rebuilds the view from a.st and publishes it. a.mu must be held.
func (a *Authority) publishLocked() error {
	v := &view{}
	var roots []*x509.Certificate
	jwtKeys := map[string]crypto.PublicKey{}
	for _, rec := range a.st.Generations {
		g, err := loadGeneration(a.cfg.StateDir, rec, a.cfg.External)
		if err != nil {
			return err
		}
		v.gens = append(v.gens, g)
		roots = append(roots, g.root())
		jwtKeys[rec.JWTKeyID] = g.jwtKey.Public()
		if rec.State == genActive {
			v.signer = g
		}
	}
	if v.signer == nil {
		return errors.New("CA state has no active generation")
	}
	a.st.RefreshHint = int64(a.cfg.RefreshHint / time.Second)
	v.bundle = makeBundle(a.cfg.TrustDomain, a.st, roots, jwtKeys)
	a.cur.Store(v)
	a.metrics.setRoots(v.gens)
	return nil
}

// Bundle returns the current SPIFFE trust bundle. Callers must not modify it.
func (a *Authority) Bundle() *spiffebundle.Bundle { return a.cur.Load().bundle }

// Roots returns every root in the bundle, oldest first.
func (a *Authority) Roots() []*x509.Certificate { return a.cur.Load().bundle.X509Authorities() }

// Run drives root rotation: it performs phase transitions when they fall due.
// It blocks until ctx ends and returns nil then.
func (a *Authority) Run(ctx context.Context) error {
	for {
		next := a.step()
		wait := time.Minute
		if !next.IsZero() {
			if d := next.Sub(a.clock.Now()); d < wait {
				wait = max(d, 0)
			}
		}
		t := a.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		case <-a.wake:
			t.Stop()
		}
	}
}

func (a *Authority) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// SigningRoot returns the root of the chain that currently signs.
func (a *Authority) SigningRoot() *x509.Certificate { return a.cur.Load().signer.root() }
