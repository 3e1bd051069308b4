package ca

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestRotation walks a root rotation through its phases on a fake clock, calling
// step directly where Run would. With restart, every phase is also checked on a
// fresh Authority loaded from the same state directory.
func TestRotation(t *testing.T) {
	const (
		svidTTL = time.Hour
		jwtTTL  = 5 * time.Minute
		delay   = 10 * time.Minute
	)
	for _, restart := range []bool{false, true} {
		name := "in process"
		if restart {
			name = "restart at every phase"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			clk := newFakeClock()
			cfg := Config{StateDir: dir, TrustDomain: testTD, Clock: clk, SVIDTTL: svidTTL, JWTSVIDTTL: jwtTTL, PropagationDelay: delay}
			a := newTestAuthority(t, cfg)
			reopen := func() {
				t.Helper()
				if !restart {
					return
				}
				if err := a.Close(); err != nil {
					t.Fatal(err)
				}
				a = newTestAuthority(t, cfg)
			}
			// check asserts what every observer sees in a phase.
			check := func(phase string, roots []*x509.Certificate, seq uint64, signer *x509.Certificate) {
				t.Helper()
				st := a.Status()
				if st.Phase != phase {
					t.Errorf("phase = %s, want %s", st.Phase, phase)
				}
				if !sameCerts(a.Roots(), roots) {
					t.Errorf("bundle holds %d roots %v, want %v", len(a.Roots()), subjects(a.Roots()), subjects(roots))
				}
				if got, _ := a.Bundle().SequenceNumber(); got != seq {
					t.Errorf("bundle sequence = %d, want %d", got, seq)
				}
				if !a.SigningRoot().Equal(signer) {
					t.Errorf("signing root = %s, want %s", a.SigningRoot().Subject, signer.Subject)
				}
				if n := len(a.Bundle().JWTAuthorities()); n != len(roots) {
					t.Errorf("bundle holds %d JWT keys, want %d", n, len(roots))
				}
				// Another process reading the directory sees the same.
				other, err := ReadStatus(dir)
				if err != nil {
					t.Fatalf("ReadStatus: %v", err)
				}
				if got, want := mustJSON(t, other), mustJSON(t, st); got != want {
					t.Errorf("ReadStatus = %s\nStatus     = %s", got, want)
				}
				if disk, err := ReadBundle(dir); err != nil || !disk.Equal(a.Bundle()) {
					t.Errorf("ReadBundle = %v (%v), differs from Bundle()", disk, err)
				}
				diskRoots, err := ReadRoots(dir)
				if err != nil || !sameCerts(diskRoots, roots) {
					t.Errorf("ReadRoots = %v, %v; want %v", subjects(diskRoots), err, subjects(roots))
				}
				// A new SVID chains to the signing root and verifies against the bundle.
				chain := signTestSVID(t, a)
				if !chain[len(chain)-1].Equal(signer) {
					t.Errorf("new SVID chains to %s, want %s", chain[len(chain)-1].Subject, signer.Subject)
				}
				if _, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
					t.Errorf("new SVID does not verify against the bundle: %v", err)
				}
			}
			// issued is an SVID and the time it was issued at.
			type issued struct {
				chain []*x509.Certificate
				at    time.Time
			}
			stillTrusted := func(s issued) error {
				_, _, err := x509svid.Verify(s.chain, a.Bundle(), x509svid.WithTime(s.at))
				return err
			}

			root1 := a.SigningRoot()
			check(PhaseIdle, []*x509.Certificate{root1}, 1, root1)
			beforeRotation := issued{signTestSVID(t, a), clk.Now()}

			st, err := a.Rotate()
			if err != nil {
				t.Fatalf("Rotate: %v", err)
			}
			switchAt := clk.Now().Add(delay)
			if st.Phase != PhasePrepared || len(st.Roots) != 2 || st.Roots[1].State != genPrepared || st.NextAt == nil || !st.NextAt.Equal(switchAt) {
				t.Fatalf("Rotate() status = %s, want Prepared with the new root switching at %s", mustJSON(t, st), switchAt)
			}
			root2 := a.Roots()[1]
			if root2.Equal(root1) {
				t.Fatal("rotation published the old root again")
			}
			check(PhasePrepared, []*x509.Certificate{root1, root2}, 2, root1)
			if _, err := a.Rotate(); !errors.Is(err, ErrRotationInProgress) {
				t.Errorf("second Rotate() = %v, want ErrRotationInProgress", err)
			}
			if next := a.step(); !next.Equal(switchAt) {
				t.Errorf("step() before the switch = %s, want %s", next, switchAt)
			}
			reopen()
			check(PhasePrepared, []*x509.Certificate{root1, root2}, 2, root1)
			if stillTrusted(beforeRotation) != nil {
				t.Error("an SVID issued before the rotation no longer verifies")
			}

			clk.Step(delay - time.Second)
			a.step()
			check(PhasePrepared, []*x509.Certificate{root1, root2}, 2, root1)
			clk.Step(time.Second)
			retireAt := clk.Now().Add(svidTTL + jwtTTL + time.Minute)
			lastOld := issued{signTestSVID(t, a), clk.Now()} // signed by root1 just before the switch
			if next := a.step(); !next.Equal(retireAt) {
				t.Errorf("step() at the switch = %s, want the retirement at %s", next, retireAt)
			}
			check(PhaseSwitched, []*x509.Certificate{root1, root2}, 2, root2)
			if st := a.Status(); st.NextAt == nil || !st.NextAt.Equal(retireAt) || st.Roots[0].State != genRetiring {
				t.Errorf("status after switch = %s, want generation 1 retiring at %s", mustJSON(t, st), retireAt)
			}
			if _, err := a.Rotate(); !errors.Is(err, ErrRotationInProgress) {
				t.Errorf("Rotate() while switched = %v, want ErrRotationInProgress", err)
			}
			token, _, err := a.MintJWTSVID(testID, []string{"aud"})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := jwtKeyID(t, token), a.st.Generations[1].JWTKeyID; got != want {
				t.Errorf("JWT-SVID after the switch has kid %s, want the new generation's %s", got, want)
			}
			reopen()
			check(PhaseSwitched, []*x509.Certificate{root1, root2}, 2, root2)
			for name, s := range map[string]issued{"before the rotation": beforeRotation, "just before the switch": lastOld} {
				if err := stillTrusted(s); err != nil {
					t.Errorf("SVID issued %s no longer verifies while the old root is in the bundle: %v", name, err)
				}
			}
			afterSwitch := issued{signTestSVID(t, a), clk.Now()}

			clk.Step(retireAt.Sub(clk.Now()) - time.Second)
			a.step()
			check(PhaseSwitched, []*x509.Certificate{root1, root2}, 2, root2)
			clk.Step(time.Second)
			if next := a.step(); !next.Equal(clk.Now()) {
				t.Errorf("step() at retirement = %s, want now (re-evaluate)", next)
			}
			if next := a.step(); !next.IsZero() {
				t.Errorf("step() when idle = %s, want nothing due", next)
			}
			check(PhaseIdle, []*x509.Certificate{root2}, 3, root2)
			caDir := filepath.Join(dir, "ca")
			for _, f := range []string{"gen-1.key", "gen-1-jwt.key"} {
				if _, err := os.Stat(filepath.Join(caDir, f)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("retired key %s still on disk (stat: %v)", f, err)
				}
			}
			for _, f := range []string{"gen-2.key", "gen-2-jwt.key"} {
				if _, err := os.Stat(filepath.Join(caDir, f)); err != nil {
					t.Errorf("active key %s: %v", f, err)
				}
			}
			if stillTrusted(lastOld) == nil {
				t.Error("an SVID signed by the retired root still verifies")
			}
			reopen()
			check(PhaseIdle, []*x509.Certificate{root2}, 3, root2)
			if err := stillTrusted(afterSwitch); err != nil {
				t.Errorf("SVID signed by the new root does not verify after the rotation: %v", err)
			}

			if !restart {
				for transition, want := range map[string]float64{"prepared": 1, "switched": 1, "retired": 1} {
					if got := testutil.ToFloat64(a.metrics.rotations.WithLabelValues(transition)); got != want {
						t.Errorf("rotations{transition=%q} = %v, want %v", transition, got, want)
					}
				}
			}

			// The next rotation starts from the new root.
			st, err = a.Rotate()
			if err != nil {
				t.Fatalf("second rotation: %v", err)
			}
			if len(st.Roots) != 2 || st.Roots[0].Generation != 2 || st.Roots[1].Generation != 3 {
				t.Errorf("second rotation roots = %s, want generations 2 and 3", mustJSON(t, st.Roots))
			}
		})
	}
}

// TestRunDrivesRotation checks that Run performs a due transition by itself and
// returns nil when its context ends.
func TestRunDrivesRotation(t *testing.T) {
	clk := newFakeClock()
	a := newTestAuthority(t, Config{Clock: clk, PropagationDelay: 30 * time.Second})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v, want nil on cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	}()

	if _, err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	clk.Step(30 * time.Second)
	// Run may not have seen the rotation when the clock moved; nudge its timer
	// (a zero step fires timers that are due) until it switches.
	waitFor(t, func() bool {
		clk.Step(0)
		return a.Status().Phase == PhaseSwitched
	})
}

// waitFor polls cond until it holds; the deadline only guards against a hang.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func subjects(cs []*x509.Certificate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func jwtKeyID(t *testing.T, token string) string {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Headers[0].KeyID
}

// TestSignDuringRotation signs from many goroutines while the root rotates and
// switches: every SVID must verify against the bundle published afterwards, which
// still holds both roots. Run with -race it also checks the view's publication.
func TestSignDuringRotation(t *testing.T) {
	clk := newFakeClock()
	a := newTestAuthority(t, Config{Clock: clk, PropagationDelay: time.Minute})
	csr := csrFor(t, testKey(t, "p256"), testID.String())
	const workers, each = 4, 25
	chains := make(chan []*x509.Certificate, workers*each)
	errs := make(chan error, workers*each)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			<-start
			for range each {
				chain, err := a.SignCSR(csr, testIdent, 0)
				if err != nil {
					errs <- err
					continue
				}
				chains <- chain
			}
		})
	}
	close(start)
	if _, err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Minute)
	a.step()
	wg.Wait()
	close(chains)
	close(errs)
	for err := range errs {
		t.Errorf("SignCSR during rotation: %v", err)
	}
	if a.Status().Phase != PhaseSwitched {
		t.Fatalf("phase = %s, want Switched", a.Status().Phase)
	}
	n := 0
	for chain := range chains {
		n++
		if _, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
			t.Errorf("SVID signed during rotation does not verify: %v", err)
		}
	}
	if n != workers*each {
		t.Errorf("%d SVIDs signed, want %d", n, workers*each)
	}
}

func TestReadWithoutState(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadStatus(dir); !errors.Is(err, ErrNoState) || !strings.Contains(err.Error(), "--state-dir "+dir) {
		t.Errorf("ReadStatus(empty dir) = %v, want ErrNoState naming the directory", err)
	}
	if _, err := ReadRoots(dir); !errors.Is(err, ErrNoState) {
		t.Errorf("ReadRoots(empty dir) = %v, want ErrNoState", err)
	}
}

// TestReadBundle checks that tools reading the state directory see the bundle
// rampartd serves, also after a restart with another refresh hint.
func TestReadBundle(t *testing.T) {
	tests := []struct {
		name          string
		firstHint     time.Duration
		secondHint    time.Duration
		wantHintAfter time.Duration
	}{
		{name: "same configuration", firstHint: 5 * time.Minute, secondHint: 5 * time.Minute, wantHintAfter: 5 * time.Minute},
		{name: "refresh hint changed", firstHint: 5 * time.Minute, secondHint: 90 * time.Second, wantHintAfter: 90 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			a := newTestAuthority(t, Config{StateDir: dir, RefreshHint: tt.firstHint})
			a.Close()
			b := newTestAuthority(t, Config{StateDir: dir, RefreshHint: tt.secondHint})
			if hint, _ := b.Bundle().RefreshHint(); hint != tt.wantHintAfter {
				t.Errorf("Bundle() refresh hint = %s, want %s", hint, tt.wantHintAfter)
			}
			disk, err := ReadBundle(dir)
			if err != nil {
				t.Fatalf("ReadBundle: %v", err)
			}
			if hint, _ := disk.RefreshHint(); hint != tt.wantHintAfter {
				t.Errorf("ReadBundle() refresh hint = %s, want %s", hint, tt.wantHintAfter)
			}
			if !disk.Equal(b.Bundle()) {
				t.Error("ReadBundle() differs from Bundle()")
			}
		})
	}
}

func TestRetireMargin(t *testing.T) {
	tests := []struct {
		name   string
		margin time.Duration
		want   time.Duration // retirement after the switch
	}{
		{name: "default", want: time.Hour + 5*time.Minute + time.Minute},
		{name: "configured", margin: 10 * time.Minute, want: time.Hour + 5*time.Minute + 10*time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			a := newTestAuthority(t, Config{Clock: clk, SVIDTTL: time.Hour, JWTSVIDTTL: 5 * time.Minute, PropagationDelay: time.Minute, RetireMargin: tt.margin})
			if _, err := a.Rotate(); err != nil {
				t.Fatal(err)
			}
			clk.Step(time.Minute)
			if got, want := a.step(), clk.Now().Add(tt.want); !got.Equal(want) {
				t.Errorf("retirement at %s, want %s", got, want)
			}
		})
	}
}
