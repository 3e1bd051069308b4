package agent_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/agent"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// A sidecar that restarts (crash, OOM kill, rolling update) with the
// single-use join token it joined with gets its identity back from its data
// dir: the stored SVID is served at once and renews itself, no token needed.
func TestAgentRejoinsAfterRestart(t *testing.T) {
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: time.Hour})
	tok := cp.Token(t, "shop", "cart")
	tokenFile := func() (string, error) { return tok, nil } // --token-file: the same file after the restart
	dir := filepath.Join(t.TempDir(), "data")

	a1 := newAgent(t, cp, agent.Config{Token: tokenFile, DataDir: dir})
	stop := startAgent(t, a1)
	settle(t, clk, 1)
	step(t, clk, 35*time.Minute, 1) // one renewal: the files follow every rotation
	before := mustSVID(t, a1)
	checkDataDir(t, dir, before)
	stop() // the sidecar process ends
	if _, err := cp.Tokens.Check(tok); !errors.Is(err, jointoken.ErrUsed) {
		t.Fatalf("precondition: the join token is spent; Check = %v", err)
	}

	reg := prometheus.NewRegistry()
	var logs syncBuffer
	a2 := newAgent(t, cp, agent.Config{Token: tokenFile, DataDir: dir, Metrics: reg, Log: bufferLogger(&logs)})
	goRun(t, "restarted agent", a2.Run)
	select {
	case <-a2.Ready():
	case <-time.After(waitFor):
		t.Fatalf("the restarted agent never got an SVID; log:\n%s", logs.String())
	}
	settle(t, clk, 1) // its first renewal is done
	after := mustSVID(t, a2)
	if after.ID != before.ID {
		t.Errorf("after the restart the SVID is for %s, want %s", after.ID, before.ID)
	}
	if serial(after) == serial(before) {
		t.Errorf("the restarted agent did not renew (serial %s)", serial(after))
	}
	if got := renewals(t, reg, "success"); got != 1 {
		t.Errorf("successful renewals after the restart = %v, want 1; log:\n%s", got, logs.String())
	}
	if got := renewals(t, reg, "failure"); got != 0 {
		t.Errorf("failed renewals after the restart = %v, want 0; log:\n%s", got, logs.String())
	}
	checkDataDir(t, dir, after)
}

// checkDataDir checks that dir holds svid (key and chain) and a bundle it
// verifies against, and that only the owner can read or change them.
func checkDataDir(t *testing.T, dir string, svid *x509svid.SVID) {
	t.Helper()
	wantMode := map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "svid.pem"): 0o600, filepath.Join(dir, "bundle.json"): 0o600, filepath.Join(dir, "identity"): 0o600}
	for path, want := range wantMode {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("data dir: %v", err)
			continue
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
	}
	if got := recordedID(t, dir); got != svid.ID.String() {
		t.Errorf("identity records %q, want %s", got, svid.ID)
	}
	stored, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.pem"))
	if err != nil {
		t.Errorf("svid.pem: %v", err)
		return
	}
	if serial(stored) != serial(svid) {
		t.Errorf("svid.pem holds serial %s, want the current %s", serial(stored), serial(svid))
	}
	keyPEM, _ := ca.EncodeKeyPEM(stored.PrivateKey)
	wantPEM, _ := ca.EncodeKeyPEM(svid.PrivateKey)
	if string(keyPEM) != string(wantPEM) {
		t.Error("svid.pem holds another key than the current SVID's")
	}
}

// rampartd is down when the sidecar restarts: the stored SVID is served while
// the agent keeps trying to renew it.
func TestAgentServesStoredSVIDWhileCADown(t *testing.T) {
	clk := newFakeClock()
	cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: time.Hour})
	tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
	dir := t.TempDir()
	a1 := newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir})
	stop := startAgent(t, a1)
	stored := mustSVID(t, a1)
	stop()
	cp.StopServer()

	reg := prometheus.NewRegistry()
	a2 := newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir, Metrics: reg})
	goRun(t, "restarted agent", a2.Run)
	settle(t, clk, 1)
	if !closed(a2.Ready()) {
		t.Fatal("with rampartd down, the restarted agent does not serve its stored SVID")
	}
	if got := mustSVID(t, a2); serial(got) != serial(stored) {
		t.Errorf("serving serial %s, want the stored %s", serial(got), serial(stored))
	}
	if got := renewals(t, reg, "failure"); got != 1 {
		t.Errorf("failed renewals = %v, want 1 (rampartd is down)", got)
	}
}

// A stored SVID the agent must not use is left alone and the agent joins with
// its token as on a first start.
func TestAgentIgnoresUnusableStoredSVID(t *testing.T) {
	tests := []struct {
		name    string
		advance time.Duration // between the two starts
		ns, sa  string        // the identity the second token names
		wantLog string
	}{
		{name: "expired", advance: 2 * time.Hour, ns: "shop", sa: "cart", wantLog: "certificate has expired"},
		{name: "another identity", ns: "shop", sa: "till", wantLog: "it is for shop/cart, and this agent is for shop/till"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			cp := startControlPlane(t, cpOptions{clock: clk, svidTTL: time.Hour})
			tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
			dir := t.TempDir()
			a1 := newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir})
			stop := startAgent(t, a1)
			stored := mustSVID(t, a1)
			stop()
			clk.Step(tt.advance)

			tok := cp.Token(t, tt.ns, tt.sa)
			var logs syncBuffer
			a2 := newAgent(t, cp, agent.Config{Token: func() (string, error) { return tok, nil }, DataDir: dir, Log: bufferLogger(&logs)})
			stop2 := startAgent(t, a2)
			got := mustSVID(t, a2)
			if serial(got) == serial(stored) {
				t.Fatal("the agent served the stored SVID")
			}
			if want := "spiffe://cluster.local/ns/" + tt.ns + "/sa/" + tt.sa; got.ID.String() != want {
				t.Errorf("SVID for %s, want %s", got.ID, want)
			}
			if _, err := cp.Tokens.Check(tok); !errors.Is(err, jointoken.ErrUsed) {
				t.Errorf("the new token was not used (Check = %v)", err)
			}
			if !strings.Contains(logs.String(), "the stored X.509-SVID is not used") || !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("the log does not say the stored SVID is not used because %q:\n%s", tt.wantLog, logs.String())
			}
			stop2() // the files are written once Run is done with them
			if rec := recordedID(t, dir); rec != got.ID.String() {
				t.Errorf("after joining as %s the data dir records %q", got.ID, rec)
			}
		})
	}
}

// An svid.pem the agent did not write (copied from another sidecar's data
// dir) stops it, whatever identity it is configured for: without a
// configured identity, or a token that names one, the agent would otherwise
// take on any identity of the trust domain.
func TestAgentRefusesSVIDOfAnotherIdentity(t *testing.T) {
	cp := startControlPlane(t, cpOptions{})
	cart, till := t.TempDir(), t.TempDir()
	for dir, sa := range map[string]string{cart: "cart", till: "till"} {
		tokenFn, _ := oneToken(cp.Token(t, "shop", sa))
		startAgent(t, newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir}))()
	}
	tillSVID, err := os.ReadFile(filepath.Join(till, "svid.pem"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(cart, "svid.pem"), string(tillSVID))
	noToken := func() (string, error) { return "", errors.New("the token file was removed after the join") }

	tests := []struct {
		name string
		cfg  agent.Config
	}{
		{name: "no identity configured, no token", cfg: agent.Config{Token: noToken}},
		{name: "configured for the copied SVID's identity", cfg: agent.Config{Token: noToken, Identity: ca.Identity{Namespace: "shop", ServiceAccount: "till"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DataDir = cart
			err := runRefused(t, newAgent(t, cp, tt.cfg))
			for _, want := range []string{filepath.Join(cart, "svid.pem"), "spiffe://cluster.local/ns/shop/sa/till", "was issued spiffe://cluster.local/ns/shop/sa/cart", filepath.Join(cart, "identity")} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Run() = %v; want it to name %s", err, want)
				}
			}
		})
	}
}

// A data dir written before the agent recorded its identity: the stored SVID
// is restored and its identity recorded, so an SVID copied there later is
// refused.
func TestAgentRecordsIdentityOfOlderDataDir(t *testing.T) {
	cp := startControlPlane(t, cpOptions{})
	cart, till := t.TempDir(), t.TempDir()
	for dir, sa := range map[string]string{cart: "cart", till: "till"} {
		tokenFn, _ := oneToken(cp.Token(t, "shop", sa))
		startAgent(t, newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir}))()
	}
	if err := os.Remove(filepath.Join(cart, "identity")); err != nil {
		t.Fatal(err)
	}
	noToken := func() (string, error) { return "", errors.New("the token file was removed after the join") }

	a := newAgent(t, cp, agent.Config{Token: noToken, DataDir: cart})
	startAgent(t, a)()
	if got := mustSVID(t, a).ID.String(); got != "spiffe://cluster.local/ns/shop/sa/cart" {
		t.Fatalf("restored SVID for %s, want shop/cart's", got)
	}
	if got := recordedID(t, cart); got != "spiffe://cluster.local/ns/shop/sa/cart" {
		t.Fatalf("identity records %q after the restore, want shop/cart's", got)
	}

	tillSVID, err := os.ReadFile(filepath.Join(till, "svid.pem"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(cart, "svid.pem"), string(tillSVID))
	if err := runRefused(t, newAgent(t, cp, agent.Config{Token: noToken, DataDir: cart})); !strings.Contains(err.Error(), "was issued spiffe://cluster.local/ns/shop/sa/cart") {
		t.Errorf("Run() = %v; want the copied SVID refused", err)
	}
}

// An agent moved to another identity removes svid.pem, and makes the removal
// durable, before its record names the new identity: when the new SVID then
// cannot be written (disk full), the directory holds no SVID, and a restart
// joins with its token. Had the old svid.pem stayed, it would name another
// identity than the record, and the restart would refuse it.
func TestAgentRemovesSVIDBeforeRecordingNewIdentity(t *testing.T) {
	cp := startControlPlane(t, cpOptions{})
	dir := t.TempDir()
	cartToken, _ := oneToken(cp.Token(t, "shop", "cart"))
	startAgent(t, newAgent(t, cp, agent.Config{Token: cartToken, DataDir: dir}))()

	svidPath, identityPath := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "identity")
	var (
		mu      sync.Mutex
		ops     []string // what the agent did to the data dir, in order
		orderOK = true   // when the record changed: svid.pem was gone, and the directory synced since
	)
	errDiskFull := errors.New("no space left on device (test)")
	agent.SetDataDirHooks(t, func(path string, data []byte, perm os.FileMode) error {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, "write "+filepath.Base(path))
		switch path {
		case identityPath:
			if _, err := os.Stat(svidPath); !errors.Is(err, fs.ErrNotExist) || len(ops) < 2 || ops[len(ops)-2] != "sync "+dir {
				orderOK = false
			}
		case svidPath:
			return errDiskFull
		}
		return ca.WriteFileAtomic(path, data, perm)
	}, func(d string) error {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, "sync "+d)
		return agent.SyncDir(d)
	})

	var logs syncBuffer
	tillToken := cp.Token(t, "shop", "till") // read twice: for the identity it names, then to join
	a := newAgent(t, cp, agent.Config{Token: func() (string, error) { return tillToken, nil }, DataDir: dir, Log: bufferLogger(&logs)})
	startAgent(t, a)()
	if got := mustSVID(t, a).ID.String(); got != "spiffe://cluster.local/ns/shop/sa/till" {
		t.Fatalf("moved agent has an SVID for %s, want shop/till's", got)
	}
	mu.Lock()
	if !orderOK {
		t.Errorf("the identity record changed before svid.pem was removed and the directory synced; operations: %q", ops)
	}
	mu.Unlock()
	if got := recordedID(t, dir); got != "spiffe://cluster.local/ns/shop/sa/till" {
		t.Fatalf("identity records %q, want shop/till's", got)
	}
	if !strings.Contains(logs.String(), errDiskFull.Error()) {
		t.Fatalf("precondition: the write of svid.pem failed; log:\n%s", logs.String())
	}

	restartToken := cp.Token(t, "shop", "till")
	a2 := newAgent(t, cp, agent.Config{Token: func() (string, error) { return restartToken, nil }, DataDir: dir})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a2.Run(ctx) }()
	select {
	case <-a2.Ready():
	case err := <-done:
		t.Fatalf("the restart refused its data dir: %v", err)
	case <-time.After(waitFor):
		cancel()
		<-done
		t.Fatal("the restarted agent never got an SVID")
	}
	if got := mustSVID(t, a2).ID.String(); got != "spiffe://cluster.local/ns/shop/sa/till" {
		t.Errorf("restarted agent has an SVID for %s, want shop/till's", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v after cancel, want nil", err)
	}
}

// runRefused runs a, which must stop with an error before it is ready.
func runRefused(t *testing.T, a *agent.Agent) error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run() = nil, want an error")
		}
		return err
	case <-a.Ready():
		cancel()
		<-done
		svid, _ := a.GetX509SVID()
		t.Fatalf("the agent became ready with an X.509-SVID for %s", svid.ID)
	case <-time.After(waitFor):
		cancel()
		<-done
		t.Fatal("Run() neither failed nor became ready")
	}
	return nil
}

func recordedID(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "identity"))
	if err != nil {
		t.Errorf("data dir: %v", err)
	}
	return strings.TrimSuffix(string(data), "\n")
}

// A data dir the agent cannot trust or read stops it with an error naming the
// directory or file; it does not fall back to the token silently.
func TestAgentRefusesBadDataDir(t *testing.T) {
	cp := startControlPlane(t, cpOptions{})
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		wantErr string
	}{
		{name: "directory writable by others", setup: func(t *testing.T, dir string) { chmod(t, dir, 0o777) }, wantErr: "is writable by group or others (mode 0777)"},
		{name: "key readable by others", setup: func(t *testing.T, dir string) { chmod(t, filepath.Join(dir, "svid.pem"), 0o644) }, wantErr: "svid.pem is open to group or others (mode 0644)"},
		{name: "corrupt SVID file", setup: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "svid.pem"), "garbage") }, wantErr: "svid.pem: no PEM private key found"},
		{name: "corrupt bundle", setup: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "bundle.json"), "{") }, wantErr: "bundle.json:"},
		{name: "key of another certificate", setup: func(t *testing.T, dir string) {
			data, err := os.ReadFile(filepath.Join(dir, "svid.pem"))
			if err != nil {
				t.Fatal(err)
			}
			key, err := ca.GenerateKey(ca.KeyECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			other, err := ca.EncodeKeyPEM(key)
			if err != nil {
				t.Fatal(err)
			}
			certs := data[strings.Index(string(data), "-----BEGIN CERTIFICATE-----"):]
			write(t, filepath.Join(dir, "svid.pem"), string(other)+string(certs))
		}, wantErr: "the private key does not belong to the first certificate"},
		// A FIFO would hang the start (opening it waits for a writer), a
		// device or a huge file would feed it without end.
		{name: "FIFO for the SVID", setup: func(t *testing.T, dir string) { mkfifo(t, filepath.Join(dir, "svid.pem")) },
			wantErr: "svid.pem is not a regular file (a named pipe)"},
		{name: "FIFO for the bundle", setup: func(t *testing.T, dir string) { mkfifo(t, filepath.Join(dir, "bundle.json")) },
			wantErr: "bundle.json is not a regular file (a named pipe)"},
		{name: "FIFO for the identity record", setup: func(t *testing.T, dir string) { mkfifo(t, filepath.Join(dir, "identity")) },
			wantErr: "identity is not a regular file (a named pipe)"},
		{name: "oversized SVID file", setup: func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "svid.pem"), strings.Repeat("x", 1<<20+1))
		}, wantErr: "svid.pem is larger than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
			stop := startAgent(t, newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir}))
			stop()
			tt.setup(t, dir)

			a := newAgent(t, cp, agent.Config{Token: func() (string, error) { return cp.Token(t, "shop", "cart"), nil }, DataDir: dir})
			ctx, cancel := context.WithTimeout(t.Context(), waitFor)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(2 * waitFor): // the context cannot end a blocked open
				releaseFIFOs(dir)
				<-done
				t.Fatal("Run() blocked opening a file in the data dir")
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Run() = %v, want an error containing %q", err, tt.wantErr)
			}
			if closed(a.Ready()) {
				t.Error("the agent became ready from a data dir it refused")
			}
		})
	}

	t.Run("in use by another agent", func(t *testing.T) {
		dir := t.TempDir()
		tokenFn, _ := oneToken(cp.Token(t, "shop", "cart"))
		startAgent(t, newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir}))
		a := newAgent(t, cp, agent.Config{Token: tokenFn, DataDir: dir})
		ctx, cancel := context.WithTimeout(t.Context(), waitFor)
		defer cancel()
		if err := a.Run(ctx); !errors.Is(err, agent.ErrDataDirInUse) || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Run() = %v, want %v naming %s", err, agent.ErrDataDirInUse, dir)
		}
	})
}

// mkfifo replaces path with a FIFO.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skip(err)
	}
}

// releaseFIFOs lets an open of a FIFO in dir that waits for a writer go.
func releaseFIFOs(dir string) {
	for _, name := range []string{"svid.pem", "bundle.json", "identity"} {
		if w, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
