package ca

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Rotation phases, as `rampartctl ca status` shows them.
const (
	PhaseIdle     = "Idle"     // one root, signing
	PhasePrepared = "Prepared" // a new root is in the bundle and propagating; the old one still signs
	PhaseSwitched = "Switched" // the new root signs; the old one stays in the bundle until its last SVID expires
)

// Status describes the CA for operators.
type Status struct {
	TrustDomain string       `json:"trustDomain"`
	Phase       string       `json:"phase"`
	Sequence    uint64       `json:"bundleSequence"`
	External    bool         `json:"external"`
	NextAt      *time.Time   `json:"nextTransitionAt,omitempty"`
	Next        string       `json:"nextTransition,omitempty"`
	Roots       []RootStatus `json:"roots"`
}

// RootStatus describes one root in the bundle.
type RootStatus struct {
	Generation int       `json:"generation"`
	State      string    `json:"state"`
	Subject    string    `json:"subject"`
	Serial     string    `json:"serial"`
	NotBefore  time.Time `json:"notBefore"`
	NotAfter   time.Time `json:"notAfter"`
	SwitchAt   time.Time `json:"switchAt,omitzero"`
	RetireAt   time.Time `json:"retireAt,omitzero"`
}

// Status returns the CA's rotation phase and roots.
func (a *Authority) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return statusOf(a.st, a.cur.Load().gens)
}

// ReadStatus reads the status of the CA in stateDir without taking its lock, for
// tools that run beside rampartd.
func ReadStatus(stateDir string) (Status, error) {
	st, err := readState(stateDir)
	if err != nil {
		return Status{}, err
	}
	var gens []*generation
	for _, rec := range st.Generations {
		g := &generation{rec: rec}
		if rec.External && rec.ChainFile == "" {
			// Written by a version that kept no copy of the chain.
			gens = append(gens, g)
			continue
		}
		if g.chain, err = readChain(stateDir, rec); err != nil {
			return Status{}, err
		}
		gens = append(gens, g)
	}
	return statusOf(st, gens), nil
}

// ReadRoots returns the roots in stateDir's bundle without taking its lock.
func ReadRoots(stateDir string) ([]*x509.Certificate, error) {
	st, err := readState(stateDir)
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	for _, rec := range st.Generations {
		if rec.External && rec.ChainFile == "" {
			return nil, fmt.Errorf("the CA in %s is operator-supplied; its root is in the operator's files", stateDir)
		}
		chain, err := readChain(stateDir, rec)
		if err != nil {
			return nil, err
		}
		roots = append(roots, chain[len(chain)-1])
	}
	return roots, nil
}

func statusOf(st *stateRecord, gens []*generation) Status {
	s := Status{TrustDomain: st.TrustDomain, Phase: PhaseIdle, Sequence: st.Sequence}
	for _, g := range gens {
		rs := RootStatus{Generation: g.rec.ID, State: g.rec.State, SwitchAt: g.rec.SwitchAt, RetireAt: g.rec.RetireAt}
		if len(g.chain) > 0 {
			r := g.root()
			rs.Subject, rs.Serial, rs.NotBefore, rs.NotAfter = r.Subject.String(), fmt.Sprintf("%x", r.SerialNumber), r.NotBefore, r.NotAfter
		}
		s.External = s.External || g.rec.External
		switch g.rec.State {
		case genPrepared:
			s.Phase = PhasePrepared
			t := g.rec.SwitchAt
			s.NextAt, s.Next = &t, fmt.Sprintf("generation %d starts signing", g.rec.ID)
		case genRetiring:
			s.Phase = PhaseSwitched
			t := g.rec.RetireAt
			s.NextAt, s.Next = &t, fmt.Sprintf("generation %d leaves the bundle", g.rec.ID)
		}
		s.Roots = append(s.Roots, rs)
	}
	return s
}

// Rotate starts a root rotation: a new root is created and published beside the
// current one. Signing switches to it after the propagation delay, and the old root
// leaves the bundle once the last SVID it signed has expired.
func (a *Authority) Rotate() (Status, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg.External != nil {
		return Status{}, fmt.Errorf("%w: rotate it by replacing its files and restarting rampartd", ErrExternalCA)
	}
	if len(a.st.Generations) != 1 {
		return Status{}, fmt.Errorf("%w (phase %s)", ErrRotationInProgress, statusOf(a.st, a.cur.Load().gens).Phase)
	}
	id := a.st.Generations[0].ID + 1
	g, err := a.newGeneration(id, genPrepared)
	if err != nil {
		return Status{}, err
	}
	g.rec.SwitchAt = a.clock.Now().Add(a.cfg.PropagationDelay).UTC()
	next := cloneState(a.st)
	next.Generations = append(next.Generations, g.rec)
	next.Sequence++
	if err := a.commitLocked(next); err != nil {
		return Status{}, err
	}
	a.log.Info("root rotation started: new root published", "generation", id, "switch_at", g.rec.SwitchAt, "bundle_sequence", next.Sequence)
	a.metrics.rotations.WithLabelValues("prepared").Inc()
	a.poke()
	return statusOf(a.st, a.cur.Load().gens), nil
}

// step performs the transitions that are due and returns when the next one is.
func (a *Authority) step() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	var next time.Time
	for i, rec := range a.st.Generations {
		switch rec.State {
		case genPrepared:
			if now.Before(rec.SwitchAt) {
				next = earliest(next, rec.SwitchAt)
				continue
			}
			st := cloneState(a.st)
			// No SVID signed by the old root outlives this moment plus the longest TTL.
			retireAt := now.Add(a.cfg.SVIDTTL + a.cfg.JWTSVIDTTL + a.cfg.RetireMargin).UTC()
			for j := range st.Generations {
				if st.Generations[j].State == genActive {
					st.Generations[j].State = genRetiring
					st.Generations[j].RetireAt = retireAt
				}
			}
			st.Generations[i].State = genActive
			st.Generations[i].SwitchAt = time.Time{}
			if err := a.commitLocked(st); err != nil {
				a.log.Error("root rotation: switch signing failed; will retry", "generation", rec.ID, "err", err)
				return now.Add(10 * time.Second)
			}
			a.log.Info("root rotation: new root now signing", "generation", rec.ID, "old_root_retires_at", retireAt)
			a.metrics.rotations.WithLabelValues("switched").Inc()
			next = earliest(next, retireAt)
		case genRetiring:
			if now.Before(rec.RetireAt) {
				next = earliest(next, rec.RetireAt)
				continue
			}
			st := cloneState(a.st)
			st.Generations = append(st.Generations[:i:i], st.Generations[i+1:]...)
			st.Sequence++
			if err := a.commitLocked(st); err != nil {
				a.log.Error("root rotation: retiring old root failed; will retry", "generation", rec.ID, "err", err)
				return now.Add(10 * time.Second)
			}
			a.removeGenerationFiles(rec)
			a.log.Info("root rotation complete: old root removed from the bundle", "generation", rec.ID, "bundle_sequence", st.Sequence)
			a.metrics.rotations.WithLabelValues("retired").Inc()
			return now // re-evaluate with the new state
		}
	}
	return next
}

func (a *Authority) removeGenerationFiles(rec genRecord) {
	dir := caDir(a.cfg.StateDir)
	for _, f := range []string{rec.KeyFile, rec.JWTKeyFile} {
		if f == "" {
			continue
		}
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !os.IsNotExist(err) {
			a.log.Warn("remove retired key", "file", f, "err", err)
		}
	}
}

// commitLocked persists st and publishes it; on failure the old state stays.
func (a *Authority) commitLocked(st *stateRecord) error {
	if err := writeState(a.cfg.StateDir, st); err != nil {
		return fmt.Errorf("write CA state: %w", err)
	}
	old := a.st
	a.st = st
	if err := a.publishLocked(); err != nil {
		a.st = old
		_ = writeState(a.cfg.StateDir, old)
		return err
	}
	return nil
}

func cloneState(st *stateRecord) *stateRecord {
	c := *st
	c.Generations = append([]genRecord(nil), st.Generations...)
	return &c
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
