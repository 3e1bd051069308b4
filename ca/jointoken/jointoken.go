// Package jointoken stores and checks local-mode join tokens: bearer credentials
// bound to one workload identity, with a TTL, single use by default.
//
// Tokens live in the state directory so `rampartctl token create` can mint them
// while rampartd runs. Only a SHA-256 of each token is stored, so reading the state
// directory does not reveal usable tokens. Single use is enforced by an atomic rename
// from pending/ to used/: of two concurrent uses, exactly one wins.
//
// It belongs to the control plane; the data plane must not import it.
package jointoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"k8s.io/utils/clock"
)

// Prefix starts every join token, so a leaked one is recognisable.
const Prefix = "rampart-join."

// Errors from Check, Authenticate and Consume. Each says why a credential was refused.
var (
	ErrUnknown   = errors.New("unknown join token")
	ErrExpired   = errors.New("join token expired")
	ErrUsed      = errors.New("join token already used")
	ErrMalformed = errors.New("malformed join token")
)

// Store is a directory of join tokens.
type Store struct {
	dir           string
	clock         clock.PassiveClock
	rootNamespace string
}

// Option configures a Store.
type Option func(*Store)

// WithRootNamespace names the mesh root namespace (rampartd's --root-namespace),
// where the control plane's identity lives. Default ca.DefaultRootNamespace.
func WithRootNamespace(ns string) Option {
	return func(s *Store) {
		if ns != "" {
			s.rootNamespace = ns
		}
	}
}

// New returns the Store under stateDir/tokens. It does no I/O.
func New(stateDir string, clk clock.PassiveClock, opts ...Option) *Store {
	if clk == nil {
		clk = clock.RealClock{}
	}
	s := &Store{dir: filepath.Join(stateDir, "tokens"), clock: clk, rootNamespace: ca.DefaultRootNamespace}
	for _, o := range opts {
		o(s)
	}
	return s
}

type record struct {
	Namespace      string    `json:"namespace"`
	ServiceAccount string    `json:"service_account"`
	CreatedAt      time.Time `json:"created_at"`
	ExpiresAt      time.Time `json:"expires_at"`
	Reusable       bool      `json:"reusable,omitempty"`
}

// Create mints a token for ident valid for ttl and returns it. It refuses the
// control plane's identity (ca.ErrReservedIdentity): agents trust whoever holds
// it as rampartd, and the CA would refuse to sign for it anyway.
func (s *Store) Create(ident ca.Identity, ttl time.Duration, reusable bool) (string, error) {
	if err := ident.Validate(); err != nil {
		return "", err
	}
	if ident == ca.ControlPlaneIdentity(s.rootNamespace) {
		return "", fmt.Errorf("%s (spiffe://<trust-domain>/ns/%s/sa/%s) is rampartd's own identity, %w: sidecars trust whoever holds it as rampartd, so no join token is made for it; choose another service account",
			ident, ident.Namespace, ident.ServiceAccount, ca.ErrReservedIdentity)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("token TTL must be positive, got %s", ttl)
	}
	for _, d := range []string{"pending", "used"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return "", err
		}
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	// The identity rides in the token in clear so the agent knows what to ask for;
	// the binding that counts is the stored record, checked by the CA.
	hint := base64.RawURLEncoding.EncodeToString([]byte(ident.Namespace + "/" + ident.ServiceAccount))
	token := Prefix + hint + "." + base64.RawURLEncoding.EncodeToString(raw[:])
	now := s.clock.Now().UTC()
	data, err := json.Marshal(record{Namespace: ident.Namespace, ServiceAccount: ident.ServiceAccount, CreatedAt: now, ExpiresAt: now.Add(ttl), Reusable: reusable})
	if err != nil {
		return "", err
	}
	if err := ca.WriteFileAtomic(filepath.Join(s.dir, "pending", hash(token)), data, 0o600); err != nil {
		return "", fmt.Errorf("store join token: %w", err)
	}
	return token, nil
}

// Check verifies token and, unless it is reusable, consumes it. It returns the
// identity the token is bound to.
func (s *Store) Check(token string) (ca.Identity, error) {
	rec, h, err := s.lookup(token)
	if err != nil {
		return ca.Identity{}, err
	}
	if err := s.consume(rec, h); err != nil {
		return ca.Identity{}, err
	}
	return rec.identity(), nil
}

// Authenticate implements the CA server's credential check: it verifies token
// and returns the identity it is bound to, without spending it. The server calls
// Consume once it has accepted the request the token came with, so a refused
// request leaves a single-use token usable.
func (s *Store) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	rec, _, err := s.lookup(token)
	if err != nil {
		return ca.Identity{}, err
	}
	return rec.identity(), nil
}

// Consume spends token unless it is reusable. Of concurrent calls for one
// single-use token exactly one succeeds; the others get ErrUsed.
func (s *Store) Consume(_ context.Context, token string) error {
	rec, h, err := s.lookup(token)
	if err != nil {
		return err
	}
	return s.consume(rec, h)
}

// lookup finds token's unexpired record and returns it with the token's hash.
func (s *Store) lookup(token string) (record, string, error) {
	if !strings.HasPrefix(token, Prefix) || len(token) > 512 {
		return record{}, "", ErrMalformed
	}
	h := hash(token)
	pending := filepath.Join(s.dir, "pending", h)
	data, err := os.ReadFile(pending)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(s.dir, "used", h)); err == nil {
			return record{}, "", ErrUsed
		}
		return record{}, "", ErrUnknown
	}
	if err != nil {
		return record{}, "", fmt.Errorf("read join token: %w", err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return record{}, "", fmt.Errorf("join token record %s: %w", pending, err)
	}
	if !s.clock.Now().Before(rec.ExpiresAt) {
		return record{}, "", fmt.Errorf("%w at %s", ErrExpired, rec.ExpiresAt.Format(time.RFC3339))
	}
	return rec, h, nil
}

// consume moves a single-use token's record from pending/ to used/. The rename
// is atomic: of two concurrent calls, exactly one finds the record to move.
func (s *Store) consume(rec record, h string) error {
	if rec.Reusable {
		return nil
	}
	if err := os.Rename(filepath.Join(s.dir, "pending", h), filepath.Join(s.dir, "used", h)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ErrUsed // another request consumed it first
		}
		return fmt.Errorf("consume join token: %w", err)
	}
	return nil
}

func (r record) identity() ca.Identity {
	return ca.Identity{Namespace: r.Namespace, ServiceAccount: r.ServiceAccount}
}

func hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
