package jointoken

import (
	"context"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	clocktesting "k8s.io/utils/clock/testing"
)

var web = ca.Identity{Namespace: "default", ServiceAccount: "web"}

func newStore(t *testing.T) (*Store, *clocktesting.FakeClock, string) {
	t.Helper()
	dir := t.TempDir()
	clk := clocktesting.NewFakeClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	return New(dir, clk), clk, dir
}

func TestCreateAndCheck(t *testing.T) {
	s, _, _ := newStore(t)
	tok, err := s.Create(web, time.Hour, false)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if !strings.HasPrefix(tok, Prefix) {
		t.Errorf("token %q lacks the %q prefix", tok, Prefix)
	}
	// The clear-text hint names the identity so the agent knows what to ask for.
	hint, err := base64.RawURLEncoding.DecodeString(strings.Split(strings.TrimPrefix(tok, Prefix), ".")[0])
	if err != nil || string(hint) != "default/web" {
		t.Errorf("token hint = %q, %v; want default/web", hint, err)
	}
	got, err := s.Check(tok)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if got != web {
		t.Errorf("Check() = %v, want %v", got, web)
	}
	other, err := s.Create(web, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if other == tok {
		t.Error("two tokens for the same identity are equal")
	}
}

func TestCreateRejects(t *testing.T) {
	tests := []struct {
		name          string
		rootNamespace string
		ident         ca.Identity
		ttl           time.Duration
		wantErr       string
		wantIs        error
	}{
		{name: "invalid namespace", ident: ca.Identity{Namespace: "Default", ServiceAccount: "web"}, ttl: time.Hour, wantErr: "namespace"},
		{name: "zero TTL", ident: web, ttl: 0, wantErr: "TTL must be positive"},
		{name: "negative TTL", ident: web, ttl: -time.Minute, wantErr: "TTL must be positive"},
		{name: "control plane identity", ident: ca.ControlPlaneIdentity(ca.DefaultRootNamespace), ttl: time.Hour,
			wantErr: "rampart-system/rampartd (spiffe://<trust-domain>/ns/rampart-system/sa/rampartd) is rampartd's own identity", wantIs: ca.ErrReservedIdentity},
		{name: "control plane identity in the configured root namespace", rootNamespace: "mesh-root", ident: ca.ControlPlaneIdentity("mesh-root"), ttl: time.Hour,
			wantErr: "spiffe://<trust-domain>/ns/mesh-root/sa/rampartd", wantIs: ca.ErrReservedIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := New(dir, nil, WithRootNamespace(tt.rootNamespace))
			tok, err := s.Create(tt.ident, tt.ttl, false)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || tok != "" {
				t.Fatalf("Create() = %q, %v; want error containing %q", tok, err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Create() error = %v, want %v", err, tt.wantIs)
			}
			if files := listFiles(t, dir); len(files) != 0 {
				t.Errorf("a refused Create left files: %v", files)
			}
		})
	}
}

// Only rampartd's identity in the store's root namespace is reserved.
func TestCreateRampartdElsewhere(t *testing.T) {
	s := New(t.TempDir(), nil, WithRootNamespace("mesh-root"))
	ident := ca.ControlPlaneIdentity(ca.DefaultRootNamespace) // an ordinary identity in this mesh
	tok, err := s.Create(ident, time.Hour, false)
	if err != nil {
		t.Fatalf("Create(%s) with root namespace mesh-root: %v", ident, err)
	}
	if got, err := s.Check(tok); err != nil || got != ident {
		t.Errorf("Check() = %v, %v; want %v", got, err, ident)
	}
}

func TestCheckUse(t *testing.T) {
	tests := []struct {
		name     string
		reusable bool
		checks   int
		wantErrs []error // per check; nil = success
	}{
		{name: "single use", reusable: false, checks: 3, wantErrs: []error{nil, ErrUsed, ErrUsed}},
		{name: "reusable", reusable: true, checks: 3, wantErrs: []error{nil, nil, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _, _ := newStore(t)
			tok, err := s.Create(web, time.Hour, tt.reusable)
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tt.wantErrs {
				got, err := s.Check(tok)
				if want == nil {
					if err != nil || got != web {
						t.Fatalf("check %d = %v, %v; want %v", i+1, got, err, web)
					}
					continue
				}
				if !errors.Is(err, want) {
					t.Fatalf("check %d error = %v, want %v", i+1, err, want)
				}
				if got != (ca.Identity{}) {
					t.Errorf("check %d returned identity %v with an error", i+1, got)
				}
			}
		})
	}
}

func TestCheckExpiry(t *testing.T) {
	tests := []struct {
		name     string
		reusable bool
		advance  time.Duration
		wantErr  error
	}{
		{name: "just before expiry", advance: time.Hour - time.Second},
		{name: "at expiry", advance: time.Hour, wantErr: ErrExpired},
		{name: "long after", advance: 48 * time.Hour, wantErr: ErrExpired},
		{name: "reusable at expiry", reusable: true, advance: time.Hour, wantErr: ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, clk, _ := newStore(t)
			tok, err := s.Create(web, time.Hour, tt.reusable)
			if err != nil {
				t.Fatal(err)
			}
			clk.Step(tt.advance)
			got, err := s.Check(tok)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Check() error = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && got != web {
				t.Errorf("Check() = %v, want %v", got, web)
			}
			if tt.wantErr != nil && !strings.Contains(err.Error(), "2030-01-02T04:04:05Z") {
				t.Errorf("expiry error %q does not say when the token expired", err)
			}
		})
	}
}

func TestCheckRejects(t *testing.T) {
	s, _, _ := newStore(t)
	valid, err := s.Create(web, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		token   string
		wantErr error
	}{
		{name: "empty", token: "", wantErr: ErrMalformed},
		{name: "no prefix", token: strings.TrimPrefix(valid, Prefix), wantErr: ErrMalformed},
		{name: "bearer scheme left in", token: "Bearer " + valid, wantErr: ErrMalformed},
		{name: "too long", token: Prefix + strings.Repeat("a", 600), wantErr: ErrMalformed},
		{name: "unknown", token: Prefix + "ZGVmYXVsdC93ZWI.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", wantErr: ErrUnknown},
		{name: "one character off", token: valid[:len(valid)-1] + flipChar(valid[len(valid)-1]), wantErr: ErrUnknown},
		{name: "trailing space", token: valid + " ", wantErr: ErrUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Check(tt.token)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Check(%q) error = %v, want %v", tt.token, err, tt.wantErr)
			}
			if got != (ca.Identity{}) {
				t.Errorf("Check() returned identity %v with an error", got)
			}
		})
	}
	// None of the rejections consumed the real token.
	if got, err := s.Check(valid); err != nil || got != web {
		t.Errorf("valid token after the rejections = %v, %v", got, err)
	}

	t.Run("no tokens directory", func(t *testing.T) {
		empty := New(t.TempDir(), nil)
		if _, err := empty.Check(valid); !errors.Is(err, ErrUnknown) {
			t.Errorf("Check() on an empty state dir = %v, want ErrUnknown", err)
		}
	})
}

func flipChar(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

// Of concurrent uses of one single-use token exactly one wins, whether they
// check it in one step or, as the CA server does, authenticate and then consume.
func TestConcurrentCheck(t *testing.T) {
	check := func(_ context.Context, s *Store, tok string) error { _, err := s.Check(tok); return err }
	authThenConsume := func(ctx context.Context, s *Store, tok string) error {
		if _, err := s.Authenticate(ctx, tok); err != nil {
			return err
		}
		return s.Consume(ctx, tok)
	}
	tests := []struct {
		name        string
		use         func(ctx context.Context, s *Store, tok string) error
		reusable    bool
		wantSuccess int
	}{
		{name: "single use", use: check, reusable: false, wantSuccess: 1},
		{name: "reusable", use: check, reusable: true, wantSuccess: 20},
		{name: "single use, authenticate then consume", use: authThenConsume, reusable: false, wantSuccess: 1},
		{name: "reusable, authenticate then consume", use: authThenConsume, reusable: true, wantSuccess: 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _, _ := newStore(t)
			tok, err := s.Create(web, time.Hour, tt.reusable)
			if err != nil {
				t.Fatal(err)
			}
			const n = 20
			errs := make([]error, n)
			var (
				wg    sync.WaitGroup
				start = make(chan struct{})
			)
			for i := range n {
				wg.Go(func() {
					<-start
					errs[i] = tt.use(t.Context(), s, tok)
				})
			}
			close(start)
			wg.Wait()
			success := 0
			for _, err := range errs {
				switch {
				case err == nil:
					success++
				case !errors.Is(err, ErrUsed):
					t.Errorf("concurrent Check error = %v, want ErrUsed", err)
				}
			}
			if success != tt.wantSuccess {
				t.Errorf("%d of %d concurrent checks succeeded, want %d", success, n, tt.wantSuccess)
			}
		})
	}
}

// TestStoreHoldsNoTokens checks that reading the state directory does not
// reveal a usable token: neither file names nor contents carry it.
func TestStoreHoldsNoTokens(t *testing.T) {
	s, _, dir := newStore(t)
	var secrets []string
	for i, reusable := range []bool{false, true, false} {
		tok, err := s.Create(web, time.Hour, reusable)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, tok, tok[strings.LastIndex(tok, ".")+1:])
		if i == 0 {
			if _, err := s.Check(tok); err != nil { // moves it to used/
				t.Fatal(err)
			}
		}
	}
	files := listFiles(t, dir)
	if len(files) != 3 {
		t.Fatalf("tokens dir holds %v, want 3 records", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range secrets {
			if strings.Contains(f, secret) || strings.Contains(string(data), secret) {
				t.Errorf("%s reveals token material %q", f, secret)
			}
		}
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v (%v), want 0600", f, fi.Mode().Perm(), err)
		}
	}
}

// The CA server authenticates a token without spending it, and consumes it
// only for a request it grants: a refused request leaves the token usable.
func TestAuthenticateThenConsume(t *testing.T) {
	tests := []struct {
		name         string
		reusable     bool
		wantAfterUse error // Authenticate and Consume once the token is consumed
	}{
		{name: "single use", wantAfterUse: ErrUsed},
		{name: "reusable", reusable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _, _ := newStore(t)
			tok, err := s.Create(web, time.Hour, tt.reusable)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if got, err := s.Authenticate(t.Context(), tok); err != nil || got != web {
					t.Fatalf("Authenticate() #%d before Consume = %v, %v; want %v (it must not spend the token)", i+1, got, err, web)
				}
			}
			if err := s.Consume(t.Context(), tok); err != nil {
				t.Fatalf("Consume() = %v", err)
			}
			if _, err := s.Authenticate(t.Context(), tok); !errors.Is(err, tt.wantAfterUse) {
				t.Errorf("Authenticate() after Consume = %v, want %v", err, tt.wantAfterUse)
			}
			if err := s.Consume(t.Context(), tok); !errors.Is(err, tt.wantAfterUse) {
				t.Errorf("second Consume() = %v, want %v", err, tt.wantAfterUse)
			}
		})
	}
	t.Run("refused tokens", func(t *testing.T) {
		s, clk, _ := newStore(t)
		tok, err := s.Create(web, time.Minute, false)
		if err != nil {
			t.Fatal(err)
		}
		clk.Step(time.Minute)
		if err := s.Consume(t.Context(), tok); !errors.Is(err, ErrExpired) {
			t.Errorf("Consume() of an expired token = %v, want %v", err, ErrExpired)
		}
		if err := s.Consume(t.Context(), Prefix+"ZGVmYXVsdC93ZWI.AAAA"); !errors.Is(err, ErrUnknown) {
			t.Errorf("Consume() of an unknown token = %v, want %v", err, ErrUnknown)
		}
	})
}

func listFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
