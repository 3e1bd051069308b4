package proxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/proxy/inbound"
)

// jwtAuthn runs request authentication for the inbound path from the bundle's
// authn.json (the workload's merged RequestAuthentication rules) and swaps the
// authenticator when the rules change. With no rules, tokens are ignored.
type jwtAuthn struct {
	log *slog.Logger

	mu      sync.RWMutex
	cur     *jwt.Authenticator
	cancel  context.CancelFunc
	done    chan struct{}
	metricR *prometheus.Registry
}

var _ inbound.Authenticator = (*jwtAuthn)(nil)

// jwtRules is a request authentication rule set that has been parsed and
// validated, with its authenticator built but not in force: install
// publishes it. Building does no I/O and starts nothing, so a bundle whose
// other parts are refused can drop it.
type jwtRules struct {
	n   int
	a   *jwt.Authenticator // nil: no rules, tokens are ignored
	reg *prometheus.Registry
}

// buildDir builds the rules in dir/authn.json; a missing file means no rules.
func (j *jwtAuthn) buildDir(dir string) (*jwtRules, error) {
	data, err := os.ReadFile(filepath.Join(dir, "authn.json"))
	if errors.Is(err, fs.ErrNotExist) {
		data = nil
	} else if err != nil {
		return nil, err
	}
	r, err := j.build(data)
	if err != nil {
		return nil, fmt.Errorf("%s/authn.json: %w", dir, err)
	}
	return r, nil
}

// build parses data (a JSON list of jwt.Rule) and builds its authenticator
// without installing it. jwt.New validates every rule (and parses inline JWKS)
// and does no I/O; remote key sets are fetched once install runs it.
func (j *jwtAuthn) build(data []byte) (*jwtRules, error) {
	if len(data) == 0 {
		data = []byte("[]")
	}
	var rules []jwt.Rule
	if err := authz.DecodeWire(data, &rules); err != nil {
		return nil, err
	}
	r := &jwtRules{n: len(rules)}
	if len(rules) == 0 {
		return r, nil
	}
	// Each authenticator gets its own registry: metrics cannot be registered twice.
	r.reg = prometheus.NewRegistry()
	a, err := jwt.New(jwt.Config{Rules: rules, Log: j.log, Metrics: r.reg})
	if err != nil {
		return nil, err
	}
	r.a = a
	return r, nil
}

// install makes r the rules in force, starts its JWKS refresh and stops the
// previous authenticator's. It cannot fail: everything that can was done by
// build.
func (j *jwtAuthn) install(ctx context.Context, r *jwtRules) {
	var runCtx context.Context
	var cancel context.CancelFunc
	done := make(chan struct{})
	if a := r.a; a != nil {
		runCtx, cancel = context.WithCancel(context.WithoutCancel(ctx))
		go func() {
			defer close(done)
			if err := a.Run(runCtx); err != nil {
				j.log.Error("JWKS refresh stopped", "err", err)
			}
		}()
	} else {
		close(done)
	}
	j.mu.Lock()
	if r.reg != nil {
		j.metricR = r.reg
	}
	oldCancel, oldDone := j.cancel, j.done
	j.cur, j.cancel, j.done = r.a, cancel, done
	j.mu.Unlock()
	if oldCancel != nil {
		oldCancel()
		<-oldDone
	}
	j.log.Info("request authentication rules loaded", "rules", r.n)
}

// Describe implements prometheus.Collector. It describes nothing: the metrics
// come from whichever authenticator is current (an unchecked collector).
func (j *jwtAuthn) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector with the current authenticator's metrics.
func (j *jwtAuthn) Collect(ch chan<- prometheus.Metric) {
	j.mu.RLock()
	r := j.metricR
	j.mu.RUnlock()
	if r != nil {
		r.Collect(ch)
	}
}

func (j *jwtAuthn) stop() {
	j.mu.Lock()
	cancel, done := j.cancel, j.done
	j.cancel = nil
	j.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// Authenticate implements inbound.Authenticator.
func (j *jwtAuthn) Authenticate(ctx context.Context, r *http.Request) inbound.AuthnResult {
	j.mu.RLock()
	a := j.cur
	j.mu.RUnlock()
	if a == nil {
		return inbound.AuthnResult{}
	}
	req := jwt.Request{Method: r.Method, Path: r.URL.RequestURI(), Headers: make([]jwt.Header, 0, len(r.Header)+2)}
	for name, vals := range r.Header {
		for _, v := range vals {
			req.Headers = append(req.Headers, jwt.Header{Name: name, Value: v})
		}
	}
	res := a.Authenticate(ctx, req)
	out := inbound.AuthnResult{Status: res.Status, Reason: res.Reason, WWWAuthenticate: res.WWWAuthenticate, Auth: res.Auth, RemoveHeaders: res.RemoveHeaders}
	for _, h := range res.SetHeaders {
		out.SetHeaders = append(out.SetHeaders, [2]string{h.Name, h.Value})
	}
	return out
}
