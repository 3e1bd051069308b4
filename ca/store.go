package ca

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The state directory holds, under "ca/":
//
//	state.json           the generations (roots) and their phase, the root namespace, written atomically
//	gen-<n>.pem          generation n's signing chain, signing certificate first, root last
//	gen-<n>.key          generation n's signing key (mode 0600)
//	gen-<n>-jwt.key      generation n's JWT-SVID signing key (mode 0600)
//	lock                 held (flock) by the one rampartd that owns the directory
//
// Readers (rampartctl ca bundle/root/status) read state.json and the PEM files without
// the lock: every file is written before state.json names it, and replaced by rename.
const (
	stateFileName = "state.json"
	stateVersion  = 1
)

// Generation states.
const (
	genPrepared = "prepared" // in the bundle, not yet signing
	genActive   = "active"   // signing
	genRetiring = "retiring" // in the bundle until RetireAt, no longer signing
)

type genRecord struct {
	ID          int       `json:"id"`
	State       string    `json:"state"`
	ChainFile   string    `json:"chain_file"`
	KeyFile     string    `json:"key_file,omitempty"`
	JWTKeyFile  string    `json:"jwt_key_file"`
	JWTKeyID    string    `json:"jwt_key_id"`
	External    bool      `json:"external,omitempty"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	SwitchAt    time.Time `json:"switch_at,omitzero"`
	RetireAt    time.Time `json:"retire_at,omitzero"`
}

type stateRecord struct {
	Version     int    `json:"version"`
	TrustDomain string `json:"trust_domain"`
	// RootNamespace is the one rampartd last started with, for tools beside
	// it (rampartctl token create); absent in older state directories.
	RootNamespace string      `json:"root_namespace,omitempty"`
	Sequence      uint64      `json:"sequence"`
	RefreshHint   int64       `json:"refresh_hint_seconds,omitempty"`
	Generations   []genRecord `json:"generations"`
}

// ErrNoState means the state directory has no CA yet.
var ErrNoState = errors.New("no CA state")

func caDir(stateDir string) string { return filepath.Join(stateDir, "ca") }

func readState(stateDir string) (*stateRecord, error) {
	path := filepath.Join(caDir(stateDir), stateFileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s (start rampartd with --state-dir %s first)", ErrNoState, stateDir, stateDir)
	}
	if err != nil {
		return nil, err
	}
	var st stateRecord
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("%s: unsupported state version %d (this rampart reads %d)", path, st.Version, stateVersion)
	}
	return &st, nil
}

// ReadRootNamespace returns the root namespace rampartd last started with on
// stateDir (recorded in ca/state.json), or "" if its state predates the
// record. It fails with ErrNoState when stateDir has no CA yet.
func ReadRootNamespace(stateDir string) (string, error) {
	st, err := readState(stateDir)
	if err != nil {
		return "", err
	}
	return st.RootNamespace, nil
}

func writeState(stateDir string, st *stateRecord) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(caDir(stateDir), stateFileName), append(data, '\n'), 0o644)
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, fsyncs it and renames it into place, so readers see the old or the new
// content and never a torn write.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
