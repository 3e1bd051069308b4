package ratelimit

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rampart-mesh/rampart/authn"
	"github.com/rampart-mesh/rampart/authz"
	clocktesting "k8s.io/utils/clock/testing"
)

func req(mod ...func(*authz.Request)) *authz.Request {
	r := &authz.Request{
		Method: "GET", Host: "httpbin.foo:8000", Path: "/get?x=1", DestinationPort: 8000,
		SourcePrincipal: "spiffe://cluster.local/ns/bar/sa/sleep", SourceIP: "10.0.0.1",
		Headers: []authz.Header{{Name: "X-User", Value: "alice"}},
	}
	for _, m := range mod {
		m(r)
	}
	return r
}

func TestMatches(t *testing.T) {
	tests := []struct {
		name string
		m    authz.RateLimitMatch
		r    *authz.Request
		want bool
	}{
		{"empty matches all", authz.RateLimitMatch{}, req(), true},
		{"path exact, query ignored", authz.RateLimitMatch{Paths: []string{"/get"}}, req(), true},
		{"path prefix", authz.RateLimitMatch{Paths: []string{"/ge*"}}, req(), true},
		{"path suffix", authz.RateLimitMatch{Paths: []string{"*et"}}, req(), true},
		{"path other", authz.RateLimitMatch{Paths: []string{"/headers"}}, req(), false},
		{"path normalized", authz.RateLimitMatch{Paths: []string{"/get"}}, req(func(r *authz.Request) { r.Path = "/a/../get" }), true},
		{"notPaths", authz.RateLimitMatch{NotPaths: []string{"/get"}}, req(), false},
		{"method", authz.RateLimitMatch{Methods: []string{"POST"}}, req(), false},
		{"notMethods other", authz.RateLimitMatch{NotMethods: []string{"POST"}}, req(), true},
		{"host without port, case-insensitive", authz.RateLimitMatch{Hosts: []string{"HTTPBIN.foo"}}, req(), true},
		{"host with port", authz.RateLimitMatch{Hosts: []string{"httpbin.foo:8000"}}, req(), true},
		{"notHosts", authz.RateLimitMatch{NotHosts: []string{"httpbin.*"}}, req(), false},
		{"notHosts without port excludes host with port", authz.RateLimitMatch{NotHosts: []string{"httpbin.foo"}}, req(), false},
		{"notHosts with port excludes it", authz.RateLimitMatch{NotHosts: []string{"httpbin.foo:8000"}}, req(), false},
		{"notHosts other host", authz.RateLimitMatch{NotHosts: []string{"other.foo"}}, req(), true},
		{"hosts and notHosts on the port", authz.RateLimitMatch{Hosts: []string{"httpbin.foo"}, NotHosts: []string{"*:8000"}}, req(), false},
		{"header host is the Host", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: "host", Values: []string{"httpbin.foo*"}}}}, req(), true},
		{"header host other", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: "host", Values: []string{"other.foo"}}}}, req(), false},
		{"header host notValues", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: "host", NotValues: []string{"httpbin.foo:8000"}}}}, req(), false},
		{"header :authority", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: ":authority", Values: []string{"httpbin.foo:8000"}}}}, req(), true},
		{"header :method", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: ":method", Values: []string{"GET"}}}}, req(), true},
		{"header :path normalized with query", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: ":path", Values: []string{"/get?x=1"}}}},
			req(func(r *authz.Request) { r.Path = "/a/../get?x=1" }), true},
		{"port", authz.RateLimitMatch{Ports: []string{"8000"}}, req(), true},
		{"port other", authz.RateLimitMatch{Ports: []string{"9000"}}, req(), false},
		{"principal Istio form", authz.RateLimitMatch{Principals: []string{"cluster.local/ns/bar/sa/sleep"}}, req(), true},
		{"principal other", authz.RateLimitMatch{Principals: []string{"cluster.local/ns/bar/sa/other"}}, req(), false},
		{"principal * needs mTLS", authz.RateLimitMatch{Principals: []string{"*"}}, req(func(r *authz.Request) { r.SourcePrincipal = "" }), false},
		{"notPrincipals * matches plaintext", authz.RateLimitMatch{NotPrincipals: []string{"*"}}, req(func(r *authz.Request) { r.SourcePrincipal = "" }), true},
		{"namespace", authz.RateLimitMatch{Namespaces: []string{"bar"}}, req(), true},
		{"notNamespaces", authz.RateLimitMatch{NotNamespaces: []string{"bar"}}, req(), false},
		{"request principal", authz.RateLimitMatch{RequestPrincipals: []string{"https://issuer/*"}},
			req(func(r *authz.Request) { r.Auth = &authn.RequestAuth{Principal: "https://issuer/alice"} }), true},
		{"request principal absent", authz.RateLimitMatch{RequestPrincipals: []string{"*"}}, req(), false},
		{"header value", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: "x-user", Values: []string{"ali*"}}}}, req(), true},
		{"header absent", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: "x-tier", Values: []string{"*"}}}}, req(), false},
		{"header notValues absent matches", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: "x-tier", NotValues: []string{"gold"}}}}, req(), true},
		{"header notValues", authz.RateLimitMatch{Headers: []authz.RateLimitHeader{{Name: "x-user", NotValues: []string{"alice"}}}}, req(), false},
		{"all fields AND", authz.RateLimitMatch{Paths: []string{"/get"}, Methods: []string{"POST"}}, req(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := matches(&tt.m, newRequest(tt.r, "")); got != tt.want {
				t.Errorf("matches = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	long := strings.Repeat("k", 1000)
	tests := []struct {
		name string
		rl   authz.RateLimit
		r    *authz.Request
		want string
	}{
		{"shared", authz.RateLimit{Key: keyShared}, req(), ""},
		{"source principal", authz.RateLimit{Key: keySourcePrincipal}, req(), "cluster.local/ns/bar/sa/sleep"},
		{"source principal plaintext", authz.RateLimit{Key: keySourcePrincipal}, req(func(r *authz.Request) { r.SourcePrincipal = "" }), ""},
		{"request principal", authz.RateLimit{Key: keyRequestPrincipal}, req(func(r *authz.Request) { r.Auth = &authn.RequestAuth{Principal: "iss/sub"} }), "iss/sub"},
		{"source ip", authz.RateLimit{Key: keySourceIP}, req(), "10.0.0.1"},
		{"header", authz.RateLimit{Key: keyHeader, KeyHeader: "x-user"}, req(), "alice"},
		{"header repeated", authz.RateLimit{Key: keyHeader, KeyHeader: "x-user"},
			req(func(r *authz.Request) { r.Headers = append(r.Headers, authz.Header{Name: "x-user", Value: "bob"}) }), "alice,bob"},
		{"header host", authz.RateLimit{Key: keyHeader, KeyHeader: "host"}, req(), "httpbin.foo:8000"},
		{"header :authority", authz.RateLimit{Key: keyHeader, KeyHeader: ":authority"}, req(func(r *authz.Request) { r.Host = "other.foo" }), "other.foo"},
		{"header long is hashed", authz.RateLimit{Key: keyHeader, KeyHeader: "x-user"},
			req(func(r *authz.Request) { r.Headers = []authz.Header{{Name: "x-user", Value: long}} }), hashKey(long)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := keyOf(&tt.rl, newRequest(tt.r, "")); got != tt.want {
				t.Errorf("key = %q; want %q", got, tt.want)
			}
		})
	}
}

func newLimiter(t *testing.T, clk *clocktesting.FakePassiveClock, maxKeys int) (*Limiter, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := New(Config{Clock: clk, MaxKeys: maxKeys, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	return l, reg
}

func install(t *testing.T, l *Limiter, rls ...authz.RateLimit) {
	t.Helper()
	s, err := l.Build(rls)
	if err != nil {
		t.Fatal(err)
	}
	l.Swap(s)
}

// outcomes sends n requests and counts the limited ones.
func outcomes(l *Limiter, r *authz.Request, n int) (limited int) {
	for range n {
		if l.Check(r, "").Limited {
			limited++
		}
	}
	return limited
}

func TestLimitPerKeyRefillAndDryRun(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	l, reg := newLimiter(t, clk, 0)
	install(t, l,
		authz.RateLimit{ID: "foo/p/get", Key: keySourcePrincipal, Match: authz.RateLimitMatch{Paths: []string{"/get"}}, Requests: 2, Period: "1m0s", Burst: 2},
		authz.RateLimit{ID: "foo/p/dry", Key: keyShared, Requests: 1, Period: "1h0m0s", Burst: 1, DryRun: true},
	)
	sleep, other := req(), req(func(r *authz.Request) { r.SourcePrincipal = "spiffe://cluster.local/ns/bar/sa/other" })
	if got := outcomes(l, sleep, 5); got != 3 {
		t.Fatalf("sleep: %d of 5 limited; want 3", got)
	}
	if res := l.Check(sleep, ""); !res.Limited || res.Limit != "foo/p/get" {
		t.Fatalf("Check = %+v; want limited by foo/p/get", res)
	}
	if got := outcomes(l, other, 2); got != 0 {
		t.Fatalf("other: %d of 2 limited; want 0 (its own bucket)", got)
	}
	if got := outcomes(l, req(func(r *authz.Request) { r.Path = "/headers" }), 3); got != 0 {
		t.Fatalf("/headers: %d limited; want 0", got)
	}
	// 2 per minute: 30 s gives one token back.
	clk.SetTime(clk.Now().Add(30 * time.Second))
	if got := outcomes(l, sleep, 2); got != 1 {
		t.Fatalf("after 30s: %d of 2 limited; want 1", got)
	}
	// The dry-run limit (1 per hour, shared) was exceeded by every request after
	// the first that reached it (8; those limited by foo/p/get stop there), and
	// refused none.
	want := `
# HELP rampart_ratelimit_requests_total Requests checked against a local rate limit, by limit (NAMESPACE/POLICY/LIMIT) and result: ok, limited (answered 429), dry_run_limited (would have been).
# TYPE rampart_ratelimit_requests_total counter
rampart_ratelimit_requests_total{limit="foo/p/dry",result="dry_run_limited"} 7
rampart_ratelimit_requests_total{limit="foo/p/dry",result="ok"} 1
rampart_ratelimit_requests_total{limit="foo/p/get",result="limited"} 5
rampart_ratelimit_requests_total{limit="foo/p/get",result="ok"} 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "rampart_ratelimit_requests_total"); err != nil {
		t.Error(err)
	}
}

// An unchanged limit keeps its buckets across updates; a changed one starts fresh.
func TestBucketsSurviveUnchangedLimit(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	l, _ := newLimiter(t, clk, 0)
	a := authz.RateLimit{ID: "foo/p/a", Key: keyShared, Requests: 2, Period: "1h0m0s", Burst: 2}
	b := authz.RateLimit{ID: "foo/p/b", Key: keyShared, Match: authz.RateLimitMatch{Paths: []string{"/other"}}, Requests: 1, Period: "1h0m0s", Burst: 1}
	install(t, l, a)
	if got := outcomes(l, req(), 3); got != 1 {
		t.Fatalf("%d of 3 limited; want 1", got)
	}
	install(t, l, a, b) // another limit added: a is unchanged
	if got := outcomes(l, req(), 1); got != 1 {
		t.Fatal("an unrelated update refilled an unchanged limit's bucket")
	}
	a.Requests, a.Burst = 3, 3
	install(t, l, a, b)
	if got := outcomes(l, req(), 4); got != 1 {
		t.Fatalf("after raising the limit to 3: %d of 4 limited; want 1", got)
	}
}

func TestBuildRefusesBadLimits(t *testing.T) {
	l, _ := newLimiter(t, clocktesting.NewFakePassiveClock(time.Unix(0, 0)), 0)
	good := authz.RateLimit{ID: "a", Key: keyShared, Requests: 1, Period: "1s", Burst: 1}
	install(t, l, good)
	for name, rl := range map[string]authz.RateLimit{
		"no id":        {Key: keyShared, Requests: 1, Period: "1s", Burst: 1},
		"bad key":      {ID: "b", Key: "Cookie", Requests: 1, Period: "1s", Burst: 1},
		"header empty": {ID: "b", Key: keyHeader, Requests: 1, Period: "1s", Burst: 1},
		"bad period":   {ID: "b", Key: keyShared, Requests: 1, Period: "soon", Burst: 1},
		"zero period":  {ID: "b", Key: keyShared, Requests: 1, Period: "0s", Burst: 1},
		"zero burst":   {ID: "b", Key: keyShared, Requests: 1, Period: "1s"},
		"zero rate":    {ID: "b", Key: keyShared, Period: "1s", Burst: 1},
	} {
		if _, err := l.Build([]authz.RateLimit{good, rl}); err == nil {
			t.Errorf("%s: Build accepted %+v", name, rl)
		}
	}
	if _, err := l.Build([]authz.RateLimit{good, good}); err == nil {
		t.Error("Build accepted a repeated id")
	}
	if l.Limits() != 1 {
		t.Errorf("a refused Build changed the limits in force: %d", l.Limits())
	}
}

// The key space is bounded: refilled buckets make room; while every bucket is
// busy, new keys share the overflow bucket, which is limited too.
func TestBucketEviction(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	l, _ := newLimiter(t, clk, 3)
	install(t, l, authz.RateLimit{ID: "foo/p/ip", Key: keySourceIP, Requests: 2, Period: "1m0s", Burst: 2})
	from := func(i int) *authz.Request {
		return req(func(r *authz.Request) { r.SourceIP = fmt.Sprintf("10.0.0.%d", i) })
	}
	b := l.cur.Load().limits[0].b
	for i := range 3 { // fill every slot with a busy bucket
		outcomes(l, from(i), 1)
	}
	// 100 hostile keys: no new buckets, one shared overflow bucket of 2.
	limited := 0
	for i := 10; i < 110; i++ {
		limited += outcomes(l, from(i), 1)
	}
	if n := b.len(); n != 3 {
		t.Fatalf("%d buckets after 100 new keys; want the bound, 3", n)
	}
	if limited != 98 {
		t.Fatalf("%d of 100 new keys limited; want 98 (they share one overflow bucket of 2)", limited)
	}
	if got := testutil.ToFloat64(l.overflow.WithLabelValues("foo/p/ip")); got != 100 {
		t.Errorf("overflow counter %v; want 100", got)
	}
	// Existing keys kept their state through the flood.
	if got := outcomes(l, from(0), 2); got != 1 {
		t.Fatalf("10.0.0.0 after the flood: %d of 2 limited; want 1 (one token left)", got)
	}
	// A minute later every bucket has refilled: a new key evicts the oldest.
	clk.SetTime(clk.Now().Add(time.Minute))
	if got := outcomes(l, from(200), 2); got != 0 {
		t.Fatalf("new key after refill: %d limited; want 0", got)
	}
	if _, found := b.byKey["10.0.0.1"]; found {
		t.Error("the least recently used, refilled bucket (10.0.0.1) was not evicted")
	}
	if n := b.len(); n != 3 {
		t.Fatalf("%d buckets; want 3", n)
	}
	// Sweep drops refilled buckets and reports what is left.
	clk.SetTime(clk.Now().Add(time.Minute))
	outcomes(l, from(0), 1)
	l.Sweep()
	if n := b.len(); n != 1 {
		t.Fatalf("%d buckets after Sweep; want 1 (only 10.0.0.0 is not full)", n)
	}
	if got := testutil.ToFloat64(l.keys.WithLabelValues("foo/p/ip")); got != 1 {
		t.Errorf("rampart_ratelimit_buckets %v; want 1", got)
	}
}

// Any refilled bucket makes room for a new key, not only the least recently
// used one: a key drained long ago (busy for a while yet) must not send new
// keys to the overflow bucket while a bucket used since has refilled.
func TestBucketEvictionAnyRefilledBucket(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	l, _ := newLimiter(t, clk, 3)
	// One token back every 10s, a bucket of 10.
	install(t, l, authz.RateLimit{ID: "foo/p/ip", Key: keySourceIP, Requests: 10, Period: "1m40s", Burst: 10})
	from := func(ip string) *authz.Request {
		return req(func(r *authz.Request) { r.SourceIP = ip })
	}
	overflow := func() float64 { return testutil.ToFloat64(l.overflow.WithLabelValues("foo/p/ip")) }
	outcomes(l, from("10.0.0.1"), 10) // least recently used: full again in 100s
	outcomes(l, from("10.0.0.2"), 3)  // full again in 30s
	outcomes(l, from("10.0.0.3"), 1)  // most recently used: full again in 10s
	if outcomes(l, from("10.9.0.1"), 1) != 0 || overflow() != 1 {
		t.Fatalf("setup: a new key while every bucket is busy: overflow %v; want 1", overflow())
	}
	clk.SetTime(clk.Now().Add(10 * time.Second)) // only 10.0.0.3 has refilled
	if got := outcomes(l, from("10.0.0.4"), 10); got != 0 || overflow() != 1 {
		t.Fatalf("new key with 10.0.0.3 refilled: %d of 10 limited, overflow %v; want 0 limited in a bucket of its own, overflow still 1", got, overflow())
	}
	// 10.0.0.3 made room; the busy ones kept their state.
	if got := outcomes(l, from("10.0.0.1"), 2); got != 1 {
		t.Errorf("10.0.0.1 after the eviction: %d of 2 limited; want 1 (one token refilled)", got)
	}
	if got := outcomes(l, from("10.0.0.2"), 9); got != 1 {
		t.Errorf("10.0.0.2 after the eviction: %d of 9 limited; want 1 (8 tokens)", got)
	}
	if got := outcomes(l, from("10.0.0.5"), 1); got != 0 || overflow() != 2 {
		t.Errorf("a new key with every bucket busy again: overflow %v; want 2", overflow())
	}
}

func BenchmarkCheck(b *testing.B) {
	l, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	s, err := l.Build([]authz.RateLimit{{ID: "foo/p/get", Key: keySourcePrincipal, Match: authz.RateLimitMatch{Paths: []string{"/get*"}}, Requests: 1 << 30, Period: "1s", Burst: 1 << 30}})
	if err != nil {
		b.Fatal(err)
	}
	l.Swap(s)
	r := req()
	b.ReportAllocs()
	for b.Loop() {
		l.Check(r, "")
	}
}

// The path a limit matches is the one authorization normalized with the
// mesh's mode: with MERGE_SLASHES, "//api/x" is "/api/x" to policies, so it
// must be to limits too, or doubling a slash would escape the limit.
func TestLimitMatchesTheNormalizedPath(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	l, _ := newLimiter(t, clk, 0)
	install(t, l, authz.RateLimit{ID: "foo/p/api", Key: keyShared, Match: authz.RateLimitMatch{Paths: []string{"/api/*"}}, Requests: 1, Period: "1h0m0s", Burst: 1})
	r := req(func(r *authz.Request) { r.Path = "//api/x" })
	if l.Check(r, "/api/x").Limited {
		t.Fatal("the first request was limited")
	}
	if !l.Check(r, "/api/x").Limited {
		t.Fatal("//api/x, normalized to /api/x by authorization, escaped the /api/* limit")
	}
	if l.Check(r, "").Limited {
		t.Fatal(`without authorization's path, "//api/x" stays as sent (BASE) and is not /api/*`)
	}
}
