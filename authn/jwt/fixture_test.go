package jwt

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the fake clock's start.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// signingKey is a private key with the kid and alg it signs with.
type signingKey struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

func (k *signingKey) jwk() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"}
}

func rsaKey(bits int) func() crypto.Signer {
	return sync.OnceValue(func() crypto.Signer {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			panic(err)
		}
		return k
	})
}

func ecKey() func() crypto.Signer {
	return sync.OnceValue(func() crypto.Signer {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
}

// Keys are generated once per test binary; RSA generation is slow.
var (
	rsa1, rsa2, rsaAttacker = rsaKey(2048), rsaKey(2048), rsaKey(2048)
	rsaWeak                 = rsaKey(1024)
	ec1, ecAttacker         = ecKey(), ecKey()
)

func keyRS(kid string, k func() crypto.Signer) *signingKey {
	return &signingKey{kid: kid, alg: jose.RS256, priv: k()}
}

func keyES(kid string, k func() crypto.Signer) *signingKey {
	return &signingKey{kid: kid, alg: jose.ES256, priv: k()}
}

// sign makes a compact JWS of claims with k; kid "" leaves the header without one.
func sign(t testing.TB, k *signingKey, kid string, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return signRaw(t, k.alg, k.priv, kid, payload, nil)
}

func signRaw(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, payload []byte, extra map[jose.HeaderKey]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	for k, v := range extra {
		opts = opts.WithHeader(k, v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func jwksJSON(t testing.TB, keys ...jose.JSONWebKey) string {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// issuer is an in-process OpenID provider: discovery document, a JWKS of the
// keys it currently publishes and extra static documents.
type issuer struct {
	srv  *httptest.Server
	URL  string
	mu   sync.Mutex
	keys []*signingKey
	docs map[string]string // path → body

	discoveryHits, jwksHits atomic.Int32
}

func newIssuer(t *testing.T, keys ...*signingKey) *issuer {
	t.Helper()
	is := &issuer{keys: keys, docs: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		is.discoveryHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                is.URL,
			"jwks_uri":                              is.URL + "/jwks",
			"authorization_endpoint":                is.URL + "/authorize",
			"token_endpoint":                        is.URL + "/token",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		is.jwksHits.Add(1)
		is.mu.Lock()
		var ks []jose.JSONWebKey
		for _, k := range is.keys {
			ks = append(ks, k.jwk())
		}
		is.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(jwksJSON(t, ks...)))
	})
	mux.HandleFunc("GET /doc/{name}", func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		body, ok := is.docs[r.PathValue("name")]
		is.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	})
	is.srv = httptest.NewServer(mux)
	is.URL = is.srv.URL
	t.Cleanup(is.srv.Close)
	return is
}

// publish replaces the keys in the JWKS, as a rotation at the issuer does.
func (is *issuer) publish(keys ...*signingKey) {
	is.mu.Lock()
	is.keys = keys
	is.mu.Unlock()
}

func (is *issuer) setDoc(name, body string) {
	is.mu.Lock()
	is.docs[name] = body
	is.mu.Unlock()
}

// claims are a valid payload for iss at the fake clock's start, changed by kv pairs
// (a nil value deletes the claim).
func claims(iss string, kv ...any) map[string]any {
	c := map[string]any{
		"iss": iss, "sub": "alice", "aud": "rampart",
		"iat": t0.Unix(), "exp": t0.Add(time.Hour).Unix(),
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

// env is an Authenticator under test with its fake clock and registry.
type env struct {
	a     *Authenticator
	clock *clocktesting.FakeClock
	reg   *prometheus.Registry
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{clock: clocktesting.NewFakeClock(t0), reg: prometheus.NewRegistry()}
	cfg.Clock, cfg.Metrics = e.clock, e.reg
	if cfg.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		t.Cleanup(tr.CloseIdleConnections)
		cfg.HTTPClient = &http.Client{Transport: tr}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.a = a
	return e
}

// run starts Run until the test ends and checks that it returns nil.
func (e *env) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	})
}

func (e *env) up(label string) float64 { return testutil.ToFloat64(e.a.m.up.WithLabelValues(label)) }

func (e *env) fetches(label, result string) float64 {
	return testutil.ToFloat64(e.a.m.fetches.WithLabelValues(label, result))
}

func (e *env) auth(t *testing.T, r Request) Result {
	t.Helper()
	return e.a.Authenticate(t.Context(), r)
}

func bearer(tok string) Request {
	return Request{Method: "GET", Path: "/api", Headers: []Header{{"Host", "svc.example"}, {"Authorization", "Bearer " + tok}}}
}

// eventually polls cond (real time) for what a Run goroutine does asynchronously.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
