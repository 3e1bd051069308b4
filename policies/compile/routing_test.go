package compile

import (
	"net/http/httptest"
	"testing"

	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/rampart-mesh/rampart/proxy/route"
)

// sidecarTable compiles registryYAML+extra for productpage and hands the
// routes to the sidecar's own route compiler, as a proxy would.
func sidecarTable(t *testing.T, extra string) (errs []Finding, tab *route.Table, out *Outbound, compileErr, tableErr error) {
	t.Helper()
	objs, err := source.Parse("mesh.yaml", []byte(registryYAML+"---\n"+extra))
	if err != nil {
		t.Fatal(err)
	}
	n, fs := DecodeNetworking(objs, Mesh{}, "default")
	for _, f := range fs {
		if f.Severity == SeverityError {
			errs = append(errs, f)
		}
	}
	out, compileErr = CompileOutbound(n, Mesh{}, productpage)
	if compileErr != nil {
		return errs, nil, nil, compileErr, nil
	}
	tab, tableErr = route.New(out.Routes)
	return errs, tab, out, nil, tableErr
}

func ratingsRoute(t *testing.T, tab *route.Table, target string) *route.Route {
	t.Helper()
	r := httptest.NewRequest("GET", "http://ratings:9080"+target, nil)
	r.Host = "ratings:9080"
	rt := tab.Match("9080", r)
	if rt == nil {
		t.Fatalf("%s: no route", target)
	}
	return rt
}

// A VirtualService that validation accepts must compile, for every proxy,
// into routes the sidecar accepts: the sidecar refuses a route set whole, so
// one bad rule would stop every service's routing updates.
func TestValidationAgreesWithSidecar(t *testing.T) {
	for _, tc := range []struct {
		name, http string
		valid      bool
	}{
		{"two destinations, no weights", `[{route: [{destination: {host: ratings}}, {destination: {host: reviews}}]}]`, false},
		{"negative weight", `[{route: [{destination: {host: ratings}, weight: -50}, {destination: {host: reviews}, weight: 150}]}]`, false},
		{"weights 1 and 3", `[{route: [{destination: {host: ratings}, weight: 1}, {destination: {host: reviews}, weight: 3}]}]`, true},
		{"one weight of 0", `[{route: [{destination: {host: ratings}, weight: 100}, {destination: {host: reviews}, weight: 0}]}]`, true},
		{"retryOn typo", `[{retries: {attempts: 2, retryOn: "5xx,gateway-eror"}, route: [{destination: {host: ratings}}]}]`, false},
		{"retryOn status out of range", `[{retries: {attempts: 2, retryOn: "5xx,999"}, route: [{destination: {host: ratings}}]}]`, false},
		{"retryOn grpc and codes", `[{retries: {attempts: 2, retryOn: "unavailable,cancelled,503"}, route: [{destination: {host: ratings}}]}]`, true},
		{"negative timeout", `[{timeout: -1s, route: [{destination: {host: ratings}}]}]`, false},
		{"negative perTryTimeout", `[{retries: {attempts: 1, perTryTimeout: -2s}, route: [{destination: {host: ratings}}]}]`, false},
		{"negative fixedDelay", `[{fault: {delay: {fixedDelay: -1s, percentage: {value: 5}}}, route: [{destination: {host: ratings}}]}]`, false},
		{"directResponse status 0", `[{directResponse: {status: 0}}]`, false},
		{"directResponse status 204", `[{directResponse: {status: 204}}]`, true},
		{"abort status 999", `[{fault: {abort: {httpStatus: 999, percentage: {value: 1}}}, route: [{destination: {host: ratings}}]}]`, false},
		{"abort status 503", `[{fault: {abort: {httpStatus: 503, percentage: {value: 1}}}, route: [{destination: {host: ratings}}]}]`, true},
		{"regex escaping anchor", `[{match: [{uri: {regex: "a)|(b"}}], route: [{destination: {host: ratings}}]}]`, false},
		{"header regex escaping anchor", `[{match: [{headers: {x: {regex: "a)|(b"}}}], route: [{destination: {host: ratings}}]}]`, false},
		{"rewrite regex", `[{rewrite: {uriRegexRewrite: {match: "a)|(b", rewrite: "/"}}, route: [{destination: {host: ratings}}]}]`, false},
		{"good regex", `[{match: [{uri: {regex: "/api/v[0-9]+"}}], route: [{destination: {host: ratings}}]}]`, true},
		{"redirect 300", `[{redirect: {uri: /x, redirectCode: 300}}]`, false},
		{"redirect 307", `[{redirect: {uri: /x, redirectCode: 307}}]`, true},
		{"negative cors maxAge", `[{corsPolicy: {allowOrigins: [{exact: "https://a"}], maxAge: -5s}, route: [{destination: {host: ratings}}]}]`, false},
		{"cors empty prefix", `[{corsPolicy: {allowOrigins: [{prefix: ""}]}, route: [{destination: {host: ratings}}]}]`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs, _, _, cerr, terr := sidecarTable(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: other}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http: `+tc.http+"\n")
			if cerr != nil {
				t.Fatalf("CompileOutbound fails (findings %v): %v", errs, cerr)
			}
			if terr != nil {
				t.Fatalf("validation accepted it (findings %v), but the sidecar refuses the route set: %v", errs, terr)
			}
			if tc.valid && len(errs) > 0 {
				t.Errorf("valid rule refused: %v", errs)
			}
			if !tc.valid && len(errs) == 0 {
				t.Errorf("invalid rule accepted")
			}
		})
	}
}

// The retry conditions validation accepts are exactly the sidecar's.
func TestRetryOnTokensAreTheSidecars(t *testing.T) {
	for _, tok := range retryOnTokens {
		if _, err := route.ParseRetryOn(tok); err != nil {
			t.Errorf("validation accepts %q, the sidecar does not: %v", tok, err)
		}
	}
	n := 0
	for i := range 64 {
		s := route.RetryOn(1 << i).String()
		if s == "" {
			continue
		}
		n++
		if err := checkRetryOn(s); err != nil {
			t.Errorf("the sidecar implements %q, validation refuses it: %v", s, err)
		}
	}
	if n != len(retryOnTokens) {
		t.Errorf("the sidecar knows %d retry conditions, validation %d", n, len(retryOnTokens))
	}
}

// checkRegex accepts what the sidecar's route compiler accepts.
func TestCheckRegexIsTheSidecars(t *testing.T) {
	long := make([]byte, maxRegexLen+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, p := range []string{"a)|(b", "a(", `\Qa`, "(?i)x", "[a-z]+", "x{1000}{1000}", string(long), "", `\pL`, "(?P<n>a)"} {
		_, sidecar := route.NewStringMatcher(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: p}}})
		if ours := checkRegex(p); (ours == nil) != (sidecar == nil) {
			t.Errorf("%.40q: validation says %v, the sidecar %v", p, ours, sidecar)
		}
	}
}

// Istio: a fault without percentage faults no request; mirrors default to
// 100%, and the deprecated mirrorPercent: 0 mirrors none.
func TestRoutePercentDefaults(t *testing.T) {
	for _, tc := range []struct {
		name, rule             string
		abort, delay, mirrored int // of 1000
	}{
		{"fault without percentage", `fault: {abort: {httpStatus: 503}, delay: {fixedDelay: 7s}}`, 0, 0, 0},
		{"fault with percentage", `fault: {abort: {httpStatus: 503, percentage: {value: 100}}, delay: {fixedDelay: 7s, percentage: {value: 100}}}`, 1000, 1000, 0},
		{"delay with deprecated percent", `fault: {delay: {fixedDelay: 7s, percent: 100}}`, 0, 1000, 0},
		{"mirror default", `mirror: {host: reviews}`, 0, 0, 1000},
		{"mirrorPercent 0", `mirror: {host: reviews}
    mirrorPercent: 0`, 0, 0, 0},
		{"mirrorPercent 100", `mirror: {host: reviews}
    mirrorPercent: 100`, 0, 0, 1000},
		{"mirrors default", `mirrors: [{destination: {host: reviews}}]`, 0, 0, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs, tab, _, cerr, terr := sidecarTable(t, `apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    `+tc.rule+"\n")
			if cerr != nil || terr != nil || len(errs) > 0 {
				t.Fatalf("compile: %v %v %v", cerr, terr, errs)
			}
			rt := ratingsRoute(t, tab, "/")
			abort, delay, mirrored := 0, 0, 0
			for i := uint64(0); i < 1000; i++ {
				rnd := i * 0x9E3779B97F4A7C15
				if rt.Fault.ShouldAbort(rnd) {
					abort++
				}
				if rt.Fault.ShouldDelay(rnd) {
					delay++
				}
				for _, m := range rt.Mirrors {
					if m.ShouldMirror(rnd) {
						mirrored++
					}
				}
			}
			if abort != tc.abort || delay != tc.delay || mirrored != tc.mirrored {
				t.Errorf("of 1000 requests: %d aborted, %d delayed, %d mirrored; want %d, %d, %d", abort, delay, mirrored, tc.abort, tc.delay, tc.mirrored)
			}
		})
	}
}

// Istio: ignoreUriCase applies to exact and prefix URI matches only; a
// StringMatch `exact: ""` matches the empty value, not any value.
func TestMatchTranslation(t *testing.T) {
	errs, tab, _, cerr, terr := sidecarTable(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - name: regex
    match: [{uri: {regex: "/api/v[0-9]+"}, ignoreUriCase: true}]
    route: [{destination: {host: ratings}}]
  - name: prefix
    match: [{uri: {prefix: "/Static"}, ignoreUriCase: true}]
    route: [{destination: {host: ratings}}]
  - name: query
    match: [{queryParams: {debug: {exact: ""}}}]
    route: [{destination: {host: ratings}}]
  - name: header
    match: [{headers: {x-empty: {exact: ""}}}]
    route: [{destination: {host: ratings}}]
  - name: rest
    route: [{destination: {host: reviews}}]
`)
	if cerr != nil || terr != nil || len(errs) > 0 {
		t.Fatalf("compile: %v %v %v", cerr, terr, errs)
	}
	for target, want := range map[string]string{
		"/api/v1": "regex", "/API/V1": "rest", "/static/x": "prefix",
		"/x?debug=secret": "rest", "/x?debug": "query", "/x?debug=": "query",
	} {
		if got := ratingsRoute(t, tab, target).Name; got != want {
			t.Errorf("%s: matched route %q, want %q", target, got, want)
		}
	}
	for value, want := range map[string]string{"": "header", "x": "rest"} {
		r := httptest.NewRequest("GET", "http://ratings:9080/y", nil)
		r.Host = "ratings:9080"
		r.Header.Set("x-empty", value)
		if got := tab.Match("9080", r); got == nil || got.Name != want {
			t.Errorf("x-empty: %q: matched %v, want %q", value, got, want)
		}
	}
}

// Istio's outlier detection: consecutive5xxErrors defaults to 5 and only an
// explicit 0 turns it off; minHealthPercent defaults to 0 (no panic mode).
func TestOutlierDetectionDefaults(t *testing.T) {
	for _, tc := range []struct {
		name, od         string
		consecutive5xx   uint32 // 0: ejection on 5xx off
		panicThreshold   float64
		gatewayEnforcing uint32
	}{
		{"unset", `{interval: 1s, baseEjectionTime: 60s}`, 5, 0, 0},
		{"explicit 0", `{consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}`, 0, 0, 100},
		{"explicit 7", `{consecutive5xxErrors: 7, minHealthPercent: 30}`, 7, 30, 0},
		{"deprecated consecutiveErrors", `{consecutiveErrors: 4}`, 0, 0, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs, _, out, cerr, _ := sidecarTable(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    outlierDetection: `+tc.od+"\n")
			if cerr != nil || len(errs) > 0 {
				t.Fatal(cerr, errs)
			}
			c := clusterByName(out, "outbound|9080||ratings.default.svc.cluster.local")
			od := c.GetOutlierDetection()
			got := uint32(0)
			if od.GetEnforcingConsecutive_5Xx().GetValue() > 0 {
				got = od.GetConsecutive_5Xx().GetValue()
			}
			if got != tc.consecutive5xx {
				t.Errorf("ejection after %d consecutive 5xx (0: off), want %d", got, tc.consecutive5xx)
			}
			if g := od.GetEnforcingConsecutiveGatewayFailure().GetValue(); g != tc.gatewayEnforcing {
				t.Errorf("gateway failure enforcing %d, want %d", g, tc.gatewayEnforcing)
			}
			pt := c.GetCommonLbConfig().GetHealthyPanicThreshold()
			if pt == nil || pt.GetValue() != tc.panicThreshold {
				t.Errorf("healthy_panic_threshold = %v, want %v", pt, tc.panicThreshold)
			}
		})
	}
}

// Istio's corsPolicy.unmatchedPreflights: FORWARD (the default) or IGNORE.
func TestCorsUnmatchedPreflights(t *testing.T) {
	for mode, want := range map[string]bool{"": true, "FORWARD": true, "IGNORE": false} {
		extra := ""
		if mode != "" {
			extra = ", unmatchedPreflights: " + mode
		}
		errs, tab, _, cerr, terr := sidecarTable(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - corsPolicy: {allowOrigins: [{exact: "https://a.example"}]`+extra+`}
    route: [{destination: {host: ratings}}]
`)
		if cerr != nil || terr != nil || len(errs) > 0 {
			t.Fatalf("compile: %v %v %v", cerr, terr, errs)
		}
		if c := ratingsRoute(t, tab, "/").Cors; c == nil || c.ForwardNotMatchingPreflights != want {
			t.Errorf("unmatchedPreflights %q: cors %+v, want forwarding %v", mode, c, want)
		}
	}
}
