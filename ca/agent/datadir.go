package agent

import (
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/internal/regfile"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Config.DataDir holds, when set:
//
//	svid.pem      the private key, then the SVID's chain leaf first (mode 0600)
//	bundle.json   the trust bundle last fetched from the control plane (mode 0600)
//	identity      the SPIFFE ID the CA issued this agent, one line (mode 0600)
//	lock          held (flock) by the one agent using the directory
//
// The files are replaced by rename on every change, the bundle before the SVID,
// so a crash leaves each whole; key and certificate share one file so they never
// disagree. identity changes only with the identity the agent is issued (its
// first SVID, or a move to another identity by configuration or token), and
// then svid.pem is removed first: svid.pem never holds an SVID for another
// identity than identity records, unless something other than the agent put it
// there.
const (
	svidFileName     = "svid.pem"
	bundleFileName   = "bundle.json"
	identityFileName = "identity"
	lockFileName     = "lock"
)

// How the agent writes a file in DataDir and makes a removal there durable;
// tests replace them (export_test.go) to fail a write or watch the order.
var (
	writeFile = ca.WriteFileAtomic
	syncDir   = syncDirectory
)

// syncDirectory flushes dir's entries (a removal, a rename) to disk.
func syncDirectory(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ErrDataDirInUse means another agent holds Config.DataDir.
var ErrDataDirInUse = errors.New("data directory is in use by another agent")

// openDataDir creates DataDir if needed, checks that only its owner can change
// it, and locks it. The lock is released when the returned file is closed.
func (a *Agent) openDataDir() (*os.File, error) {
	dir := a.cfg.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("data dir %s is not a directory", dir)
	}
	// Whoever can write the directory can swap the key and the bundle the agent
	// trusts on its next start.
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("data dir %s is writable by group or others (mode %04o): it holds the workload's private key; chmod 700 it", dir, fi.Mode().Perm())
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("%w: %s (%v); give each sidecar its own data dir", ErrDataDirInUse, dir, err)
	}
	return lf, nil
}

// restore loads what DataDir holds. The stored bundle, when there is one, is
// what the agent trusts for the control plane from now on, as it would be had
// the agent not restarted. A stored SVID for another identity than the one
// the directory records is an error: the agent did not write it. Otherwise it
// is published only if it is still valid, chains to that trust and is for the
// identity the agent is configured for (or its token names); if not, the agent
// joins with its token as on a first start. Files the agent cannot read or
// parse, or that others may read, are errors (as is a directory others may
// write, see openDataDir): the operator must look at them.
func (a *Agent) restore() error {
	bundle, err := a.readBundle()
	if err != nil {
		return err
	}
	recorded, err := a.readRecordedID()
	if err != nil {
		return err
	}
	a.recorded = recorded
	svid, err := a.readSVID()
	if err != nil {
		return err
	}
	if svid != nil && !recorded.IsZero() && svid.ID != recorded {
		return fmt.Errorf("%s holds an X.509-SVID for %s, but this sidecar was issued %s (recorded in %s): the agent did not write that file (copied from another sidecar's data dir?); remove %s to join with a token, and give each sidecar its own data dir",
			filepath.Join(a.cfg.DataDir, svidFileName), svid.ID, recorded, filepath.Join(a.cfg.DataDir, identityFileName), svidFileName)
	}
	if bundle != nil {
		n, _ := bundle.SequenceNumber()
		a.log.Info("trust bundle restored; it, not the root certificates configured for first contact, authenticates the control plane (remove the file to start over from them)",
			"file", filepath.Join(a.cfg.DataDir, bundleFileName), "sequence", n, "x509_authorities", len(bundle.X509Authorities()))
	}
	if svid == nil {
		if bundle != nil {
			a.set(nil, bundle)
		}
		return nil
	}
	if reason := a.unusable(svid, bundle); reason != "" {
		a.log.Warn("the stored X.509-SVID is not used; joining with the token", "file", filepath.Join(a.cfg.DataDir, svidFileName),
			"spiffe_id", svid.ID.String(), "reason", reason)
		if bundle != nil {
			a.set(nil, bundle)
		}
		return nil
	}
	if bundle == nil {
		// No stored bundle (removed, or its write failed): trust what first
		// contact trusts, as the SVID was just checked against.
		bundle = spiffebundle.FromX509Authorities(a.cfg.TrustDomain, a.cfg.RootCerts)
	}
	if recorded.IsZero() {
		// Written by an agent that kept no record: this SVID, which the
		// directory's owner alone could have put there, is the identity from
		// now on.
		if err := a.writeRecordedID(svid.ID); err != nil {
			a.log.Error("could not record the stored X.509-SVID's identity in the data dir", "file", filepath.Join(a.cfg.DataDir, identityFileName), "err", err)
		} else {
			a.log.Info("the data dir kept no identity record; recorded the stored X.509-SVID's", "file", filepath.Join(a.cfg.DataDir, identityFileName), "spiffe_id", svid.ID.String())
		}
	}
	a.set(svid, bundle)
	leaf := svid.Certificates[0]
	a.log.Info("X.509-SVID restored; renewing with it", "file", filepath.Join(a.cfg.DataDir, svidFileName), "spiffe_id", svid.ID.String(),
		"serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// unusable says why a stored SVID must not be used, or "" if it may.
func (a *Agent) unusable(svid *x509svid.SVID, bundle *spiffebundle.Bundle) string {
	trust := a.trustForControlPlane()
	if bundle != nil {
		trust = bundle.X509Bundle()
	}
	id, _, err := x509svid.Verify(svid.Certificates, trust, x509svid.WithTime(a.clock.Now()))
	if err != nil {
		return err.Error()
	}
	if id.TrustDomain() != a.cfg.TrustDomain {
		return fmt.Sprintf("it is for trust domain %s, not %s", id.TrustDomain(), a.cfg.TrustDomain)
	}
	ident, err := ca.IdentityFromID(id)
	if err != nil {
		return err.Error()
	}
	want := a.cfg.Identity
	if want == (ca.Identity{}) && a.cfg.Token != nil {
		// The identity the token names, if it names one: a token for another
		// identity means the operator moved this sidecar to it.
		if tok, err := a.cfg.Token(); err == nil {
			if named, err := IdentityFromToken(strings.TrimSpace(tok)); err == nil {
				want = named
			}
		}
	}
	if want != (ca.Identity{}) && ident != want {
		return fmt.Sprintf("it is for %s, and this agent is for %s", ident, want)
	}
	return ""
}

func (a *Agent) readBundle() (*spiffebundle.Bundle, error) {
	path := filepath.Join(a.cfg.DataDir, bundleFileName)
	data, err := readPrivate(path)
	if data == nil || err != nil {
		return nil, err
	}
	b, err := spiffebundle.Parse(a.cfg.TrustDomain, data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (remove it to start over from the root certificates)", path, err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, fmt.Errorf("%s: the bundle has no X.509 authorities (remove it to start over from the root certificates)", path)
	}
	return b, nil
}

func (a *Agent) readSVID() (*x509svid.SVID, error) {
	path := filepath.Join(a.cfg.DataDir, svidFileName)
	data, err := readPrivate(path)
	if data == nil || err != nil {
		return nil, err
	}
	key, err := ca.ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (remove it to join with a token)", path, err)
	}
	certs, err := ca.ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (remove it to join with a token)", path, err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := key.Public().(equaler); !ok || !pub.Equal(certs[0].PublicKey) {
		return nil, fmt.Errorf("%s: the private key does not belong to the first certificate (remove it to join with a token)", path)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w (remove it to join with a token)", path, err)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// readRecordedID reads the SPIFFE ID the CA last issued this agent; zero if
// the directory records none (new, or written by an older agent).
func (a *Agent) readRecordedID() (spiffeid.ID, error) {
	path := filepath.Join(a.cfg.DataDir, identityFileName)
	data, err := readPrivate(path)
	if data == nil || err != nil {
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromString(strings.TrimSuffix(string(data), "\n"))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%s: %w (it records the SPIFFE ID this sidecar was issued; remove it and %s to join with a token)", path, err, svidFileName)
	}
	return id, nil
}

// writeRecordedID records id as the identity the CA issued this agent.
func (a *Agent) writeRecordedID(id spiffeid.ID) error {
	if err := writeFile(filepath.Join(a.cfg.DataDir, identityFileName), []byte(id.String()+"\n"), 0o600); err != nil {
		return err
	}
	a.recorded = id
	return nil
}

// maxDataFileSize bounds a file read from DataDir: the SVID with its key and
// the bundle are kilobytes.
const maxDataFileSize = 1 << 20

// readPrivate reads a file only its owner may read. A missing file is nil,
// nil. It must be a regular file of at most maxDataFileSize bytes, opened
// without blocking: a FIFO or a device planted in the directory would
// otherwise hang the agent's start, or feed it without end.
func readPrivate(path string) ([]byte, error) {
	data, err := regfile.Read(path, maxDataFileSize, func(fi fs.FileInfo) error {
		if fi.Mode().Perm()&0o077 != 0 {
			return fmt.Errorf("%s is open to group or others (mode %04o); chmod 600 it, or remove it if others may have read it", path, fi.Mode().Perm())
		}
		return nil
	})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case errors.Is(err, regfile.ErrNotRegular), errors.Is(err, regfile.ErrTooLarge):
		return nil, fmt.Errorf("%w: the agent did not write it; remove it", err)
	}
	return data, err
}

// persist writes to DataDir what changed from old to cur. A failure is logged,
// not returned: the agent goes on with the SVID in memory, and only a restart
// would need a new token.
func (a *Agent) persist(old, cur *state) {
	if a.cfg.DataDir == "" {
		return
	}
	if cur.bundle != nil && (old.bundle == nil || !old.bundle.Equal(cur.bundle)) {
		path := filepath.Join(a.cfg.DataDir, bundleFileName)
		data, err := cur.bundle.Marshal()
		if err == nil {
			err = writeFile(path, data, 0o600)
		}
		if err != nil {
			a.log.Error("could not keep the trust bundle in the data dir", "file", path, "err", err)
		}
	}
	if cur.svid != nil && cur.svid != old.svid {
		path := filepath.Join(a.cfg.DataDir, svidFileName)
		if cur.svid.ID != a.recorded {
			// A first SVID, or one for another identity: the old file goes
			// before the record changes, so that a crash in between cannot
			// leave them naming two identities. The removal is synced before
			// the record's rename: without it, the disk could keep the rename
			// and lose the removal.
			err := os.Remove(path)
			if err == nil {
				err = syncDir(a.cfg.DataDir)
			} else if errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
			if err == nil {
				err = a.writeRecordedID(cur.svid.ID)
			}
			if err != nil {
				a.log.Error("could not record this sidecar's identity in the data dir; after a restart it will need a new join token", "file", filepath.Join(a.cfg.DataDir, identityFileName), "spiffe_id", cur.svid.ID.String(), "err", err)
				return
			}
		}
		data, err := ca.EncodeKeyPEM(cur.svid.PrivateKey)
		if err == nil {
			err = writeFile(path, append(data, ca.EncodeCertsPEM(cur.svid.Certificates)...), 0o600)
		}
		if err != nil {
			a.log.Error("could not keep the X.509-SVID in the data dir; after a restart this sidecar will need a new join token", "file", path, "err", err)
		}
	}
}
