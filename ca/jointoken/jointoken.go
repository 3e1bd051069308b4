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

// Errors from Check. Each says why a credential was refused.
var (
	ErrUnknown   = errors.New("unknown join token")
	ErrExpired   = errors.New("join token expired")
	ErrUsed      = errors.New("join token already used")
	ErrMalformed = errors.New("malformed join token")
)

// Store is a directory of join tokens.
type Store struct {
	dir   string
	clock clock.PassiveClock
}

// New returns the Store under stateDir/tokens. It does no I/O.
func New(stateDir string, clk clock.PassiveClock) *Store {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Store{dir: filepath.Join(stateDir, "tokens"), clock: clk}
}

type record struct {
	Namespace      string    `json:"namespace"`
	ServiceAccount string    `json:"service_account"`
	CreatedAt      time.Time `json:"created_at"`
	ExpiresAt      time.Time `json:"expires_at"`
	Reusable       bool      `json:"reusable,omitempty"`
}

// Create mints a token for ident valid for ttl and returns it.
func (s *Store) Create(ident ca.Identity, ttl time.Duration, reusable bool) (string, error) {
	if err := ident.Validate(); err != nil {
		return "", err
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
	if !strings.HasPrefix(token, Prefix) || len(token) > 512 {
		return ca.Identity{}, ErrMalformed
	}
	h := hash(token)
	pending := filepath.Join(s.dir, "pending", h)
	data, err := os.ReadFile(pending)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(s.dir, "used", h)); err == nil {
			return ca.Identity{}, ErrUsed
		}
		return ca.Identity{}, ErrUnknown
	}
	if err != nil {
		return ca.Identity{}, fmt.Errorf("read join token: %w", err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return ca.Identity{}, fmt.Errorf("join token record %s: %w", pending, err)
	}
	if !s.clock.Now().Before(rec.ExpiresAt) {
		return ca.Identity{}, fmt.Errorf("%w at %s", ErrExpired, rec.ExpiresAt.Format(time.RFC3339))
	}
	if !rec.Reusable {
		if err := os.Rename(pending, filepath.Join(s.dir, "used", h)); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return ca.Identity{}, ErrUsed // another request consumed it first
			}
			return ca.Identity{}, fmt.Errorf("consume join token: %w", err)
		}
	}
	return ca.Identity{Namespace: rec.Namespace, ServiceAccount: rec.ServiceAccount}, nil
}

// Authenticate implements the CA server's credential check.
func (s *Store) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	return s.Check(token)
}

func hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
