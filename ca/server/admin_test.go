package server

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestAdminHandler(t *testing.T) {
	a, err := ca.New(ca.Config{StateDir: t.TempDir(), TrustDomain: td, Clock: clocktesting.NewFakeClock(testNow())})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	srv := httptest.NewServer(AdminHandler(a))
	defer srv.Close()

	do := func(t *testing.T, method, path string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusMethodNotAllowed && ct != "application/json" {
			t.Errorf("%s %s Content-Type = %q, want application/json", method, path, ct)
		}
		return resp.StatusCode, body
	}
	status := func(t *testing.T, body []byte) ca.Status {
		t.Helper()
		var st ca.Status
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("not a ca.Status: %v\n%s", err, body)
		}
		return st
	}

	// Steps run in order: each sees the state the previous one left.
	steps := []struct {
		name       string
		method     string
		path       string
		wantCode   int
		wantPhase  string // for status bodies
		wantRoots  int    // for status and bundle bodies
		wantErrMsg string // for error bodies
	}{
		{name: "status", method: "GET", path: "/ca/status", wantCode: 200, wantPhase: ca.PhaseIdle, wantRoots: 1},
		{name: "bundle", method: "GET", path: "/ca/bundle", wantCode: 200, wantRoots: 1},
		{name: "rotate is POST only", method: "GET", path: "/ca/rotate", wantCode: http.StatusMethodNotAllowed},
		{name: "rotate", method: "POST", path: "/ca/rotate", wantCode: 200, wantPhase: ca.PhasePrepared, wantRoots: 2},
		{name: "status after rotate", method: "GET", path: "/ca/status", wantCode: 200, wantPhase: ca.PhasePrepared, wantRoots: 2},
		{name: "bundle after rotate", method: "GET", path: "/ca/bundle", wantCode: 200, wantRoots: 2},
		{name: "rotate again", method: "POST", path: "/ca/rotate", wantCode: http.StatusConflict, wantErrMsg: "already in progress"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			code, body := do(t, s.method, s.path)
			if code != s.wantCode {
				t.Fatalf("%s %s = %d, want %d\n%s", s.method, s.path, code, s.wantCode, body)
			}
			switch {
			case s.wantErrMsg != "":
				var e struct{ Error string }
				if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, s.wantErrMsg) {
					t.Errorf("error body = %s, want an error mentioning %q", body, s.wantErrMsg)
				}
			case s.wantPhase != "":
				if st := status(t, body); st.Phase != s.wantPhase || len(st.Roots) != s.wantRoots {
					t.Errorf("status = phase %s with %d roots, want %s with %d", st.Phase, len(st.Roots), s.wantPhase, s.wantRoots)
				}
			case strings.HasSuffix(s.path, "/bundle"):
				b, err := spiffebundle.Parse(td, body)
				if err != nil {
					t.Fatalf("bundle: %v", err)
				}
				if len(b.X509Authorities()) != s.wantRoots || !b.Equal(a.Bundle()) {
					t.Errorf("bundle has %d roots, want %d and equal to the Authority's", len(b.X509Authorities()), s.wantRoots)
				}
			}
		})
	}
}

func TestAdminRotateExternal(t *testing.T) {
	// An operator-supplied CA cannot be rotated from the admin API: 409 says why.
	dir := t.TempDir()
	self, err := ca.New(ca.Config{StateDir: dir, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if err := self.Load(); err != nil {
		t.Fatal(err)
	}
	// Reuse the generated root as the operator's CA.
	caDir := filepath.Join(dir, "ca")
	ext := &ca.ExternalCA{CertFile: filepath.Join(caDir, "gen-1.pem"), KeyFile: filepath.Join(caDir, "gen-1.key")}
	if _, err := os.Stat(ext.KeyFile); err != nil {
		t.Fatal(err)
	}
	self.Close()
	a, err := ca.New(ca.Config{StateDir: t.TempDir(), TrustDomain: td, External: ext})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Load(); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rec := httptest.NewRecorder()
	AdminHandler(a).ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), "POST", "/ca/rotate", nil))
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), "operator-supplied") {
		t.Errorf("POST /ca/rotate = %d %s, want 409 naming the operator-supplied CA", rec.Code, rec.Body)
	}
}

func testNow() time.Time { return time.Now().Truncate(time.Second) }
