package authz_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/authn"
	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/source"
)

// Policies that read every kind of request attribute the verdict cache keys on.
const cachePolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tenants, namespace: foo}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/client"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"], ports: ["8000"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["t1", "t2"]}]
  - from: [{source: {namespaces: ["b"], ipBlocks: ["10.0.0.0/24"]}}]
    to: [{operation: {hosts: ["api.foo*"], notPaths: ["/private/*"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer/alice"]}}]
    when: [{key: "request.auth.claims[groups]", values: ["admin"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: foo}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-evil]", values: ["*"]}]
  - when: [{key: "request.headers[:path]", values: ["*debug=1"]}]
  - from: [{source: {remoteIpBlocks: ["192.168.0.0/16"]}}]
    to: [{operation: {methods: ["DELETE"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: foo
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/2"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: ["POST"]}}]
`

func compiledBundle(t *testing.T, yaml string) authz.Bundle {
	t.Helper()
	objs, err := source.Parse("policies.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	mesh, _ := compile.Mesh{}.WithDefaults()
	out, fs := offline.Compile(objs, mesh, compile.Workload{Namespace: "foo", Name: "api", Labels: map[string]string{"app": "api"}})
	for _, f := range fs {
		if f.Severity == compile.SeverityError {
			t.Fatalf("test policies are invalid: %s", f)
		}
	}
	return offline.Bundle(out, mesh, nil)
}

func load(t *testing.T, b authz.Bundle, cacheSize int) *authz.Engine {
	t.Helper()
	e := authz.New(authz.Config{CacheSize: cacheSize})
	if err := e.Load(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return e
}

// outcome is what a decision says, without its per-request identifiers.
func outcome(d authz.Decision) string {
	return fmt.Sprintf("allowed=%t status=%d policy=%s rule=%d reason=%q dry=%+v audit=%+v path=%s",
		d.Allowed, d.Status, d.Policy, d.Rule, d.Reason, d.DryRun, d.Audit, d.NormalizedPath)
}

// A cached verdict is exactly what evaluating the request would give: many
// random requests drawn from small pools (so they repeat, and differ in one
// attribute at a time) decided by a caching engine and by one with the cache
// off.
func TestVerdictCacheAgreesWithEvaluation(t *testing.T) {
	b := compiledBundle(t, cachePolicies)
	cached, plain := load(t, b, 0), load(t, b, -1)
	alice := &authn.RequestAuth{Principal: "https://issuer/alice", Issuer: "https://issuer", Subject: "alice", Claims: map[string]any{"groups": []any{"admin"}}}
	aliceDev := &authn.RequestAuth{Principal: "https://issuer/alice", Issuer: "https://issuer", Subject: "alice", Claims: map[string]any{"groups": []any{"dev"}}}
	pick := func(r *rand.Rand, xs ...string) string { return xs[r.IntN(len(xs))] }
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := context.Background()
	allowed, denied := 0, 0
	for i := range 4000 {
		req := &authz.Request{
			ID: fmt.Sprint(i), Protocol: pick(rng, "http", "http", "http", "grpc", "tcp"),
			SourcePrincipal: pick(rng, "", "spiffe://cluster.local/ns/a/sa/client", "spiffe://cluster.local/ns/b/sa/x"),
			SourceIP:        pick(rng, "10.0.0.7", "10.0.1.7"),
			RemoteIP:        pick(rng, "", "192.168.3.4"),
			DestinationIP:   "10.0.0.1", DestinationPort: []int{8000, 9000}[rng.IntN(2)],
			Method: pick(rng, "GET", "POST", "DELETE"), Host: pick(rng, "api.foo", "API.FOO.svc", "other"),
			Path:     pick(rng, "/api/1", "/api/2", "/private/x", "/api/../private/x", "/", "/api/1?debug=1", "/api/1?debug=0"),
			Workload: authz.Workload{Namespace: "foo", Name: "api", Labels: map[string]string{"app": "api"}},
			Headers:  []authz.Header{{Name: "x-request-id", Value: fmt.Sprint(i)}},
		}
		if tenant := pick(rng, "", "t1", "t3"); tenant != "" {
			req.Headers = append(req.Headers, authz.Header{Name: "X-Tenant", Value: tenant})
		}
		if rng.IntN(10) == 0 {
			req.Headers = append(req.Headers, authz.Header{Name: "x-evil", Value: "1"})
		}
		req.Auth = []*authn.RequestAuth{nil, alice, aliceDev}[rng.IntN(3)]
		got, want := cached.Decide(ctx, req), plain.Decide(ctx, req)
		if outcome(got) != outcome(want) {
			t.Fatalf("request %d %+v:\ncached:    %s\nevaluated: %s", i, req, outcome(got), outcome(want))
		}
		if want.Allowed {
			allowed++
		} else {
			denied++
		}
	}
	hits, misses := cached.CacheStats()
	if hits == 0 || misses == 0 {
		t.Fatalf("cache hits %d, misses %d: the requests should both repeat and vary", hits, misses)
	}
	if h, m := plain.CacheStats(); h+m != 0 {
		t.Fatalf("a disabled cache counted %d hits, %d misses", h, m)
	}
	if allowed < 100 || denied < 100 {
		t.Fatalf("allowed %d, denied %d: the policies should split the requests", allowed, denied)
	}
	t.Logf("%d allowed, %d denied; cache %d hits, %d misses", allowed, denied, hits, misses)
}

// Headers the policies do not read (x-request-id, trace headers) do not split
// the cache; a header they do read does.
func TestVerdictCacheKeysOnReadHeadersOnly(t *testing.T) {
	e := load(t, compiledBundle(t, cachePolicies), 0)
	ctx := context.Background()
	req := func(id, tenant string) *authz.Request {
		return &authz.Request{Protocol: "http", SourcePrincipal: "spiffe://cluster.local/ns/a/sa/client", SourceIP: "10.0.0.7",
			DestinationIP: "10.0.0.1", DestinationPort: 8000, Method: "GET", Host: "api.foo", Path: "/api/1",
			Headers: []authz.Header{{Name: "x-request-id", Value: id}, {Name: "traceparent", Value: "00-" + id}, {Name: "x-tenant", Value: tenant}}}
	}
	for i := range 10 {
		if d := e.Decide(ctx, req(fmt.Sprint(i), "t1")); !d.Allowed {
			t.Fatalf("request %d denied: %s", i, d.Reason)
		}
	}
	if hits, misses := e.CacheStats(); hits != 9 || misses != 1 {
		t.Fatalf("hits %d, misses %d; want 9 and 1: unread headers must not split the cache", hits, misses)
	}
	if d := e.Decide(ctx, req("11", "t3")); d.Allowed {
		t.Fatalf("x-tenant t3 allowed (%s): the cache ignored a header the policy reads", d.Reason)
	}
}

// A bundle the analysis cannot see through still decides correctly: a rule
// that reads any header by a variable key makes every header part of the key,
// and one that calls a non-deterministic built-in turns the cache off.
func TestVerdictCacheOpaqueBundles(t *testing.T) {
	ctx := context.Background()
	mod := func(body string) authz.Bundle {
		return authz.Bundle{Revision: "r", Modules: map[string]string{"p.rego": `package rampart.policy

import rego.v1

hits contains {"action": "deny", "policy": "foo/any-header", "rule": 0, "dry_run": false} if {
	` + body + `
}

allow_policies := set()

dry_run_allow_policies := set()
`}}
	}
	req := func(h authz.Header) *authz.Request {
		return &authz.Request{Protocol: "http", Method: "GET", Path: "/", SourceIP: "10.0.0.1", Headers: []authz.Header{h}}
	}
	e := load(t, mod(`some v in input.attributes.request.http.headers
	v == "evil"`), 0)
	if d := e.Decide(ctx, req(authz.Header{Name: "x-a", Value: "good"})); !d.Allowed {
		t.Fatalf("harmless header denied: %s", d.Reason)
	}
	if d := e.Decide(ctx, req(authz.Header{Name: "x-a", Value: "evil"})); d.Allowed {
		t.Fatal("a header read by a variable key was left out of the cache key: evil allowed")
	}
	e = load(t, mod(`time.now_ns() < 0`), 0)
	for range 3 {
		e.Decide(ctx, req(authz.Header{Name: "x-a", Value: "good"}))
	}
	if h, m := e.CacheStats(); h+m != 0 {
		t.Fatalf("a bundle calling time.now_ns was cached (%d hits, %d misses)", h, m)
	}
}

// The fast path builds only what compiled policies read; the document CUSTOM
// providers and the decision log get is still the whole request.
func TestDecisionDocumentCarriesReadHeaders(t *testing.T) {
	e := load(t, compiledBundle(t, cachePolicies), -1)
	d := e.Decide(context.Background(), &authz.Request{Protocol: "http", SourcePrincipal: "spiffe://cluster.local/ns/a/sa/client",
		SourceIP: "10.0.0.7", DestinationIP: "10.0.0.1", DestinationPort: 8000, Method: "GET", Host: "api.foo", Path: "/api/1",
		Headers: []authz.Header{{Name: "x-tenant", Value: "t2"}, {Name: "user-agent", Value: "ua"}}})
	if !d.Allowed {
		t.Fatalf("denied: %s", d.Reason)
	}
	doc := d.Document().String()
	for _, want := range []string{`"x-tenant": "t2"`, `"user-agent": "ua"`, `"workload"`} {
		if !strings.Contains(doc, want) {
			t.Fatalf("full document lacks %s: %s", want, doc)
		}
	}
}
