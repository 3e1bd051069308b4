package compile

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/policies/source"
)

// testMesh has one gRPC and one HTTP ext_authz provider.
func testMesh(t testing.TB) Mesh {
	t.Helper()
	m, err := ParseMesh([]byte(`
extensionProviders:
- name: ext
  envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000}
- name: ext-http
  envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 8000}
`))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// policyYAML is one AuthorizationPolicy foo/p with the given metadata lines
// (indented under metadata) and spec (indented under spec).
func policyYAML(meta, spec string) string {
	var b strings.Builder
	b.WriteString("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\n")
	for _, l := range strings.Split(strings.Trim(meta, "\n"), "\n") {
		if l != "" {
			b.WriteString("  " + l + "\n")
		}
	}
	if spec != "" {
		b.WriteString("spec:\n")
		for _, l := range strings.Split(strings.Trim(spec, "\n"), "\n") {
			b.WriteString("  " + l + "\n")
		}
	}
	return b.String()
}

// findingsFor decodes, validates and compiles docs for foo/httpbin and returns
// the findings as "severity CODE path", sorted.
func findingsFor(t testing.TB, docs string) []string {
	t.Helper()
	objs, err := source.Parse("test.yaml", []byte(docs))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, docs)
	}
	policies, fs := DecodeAuthorizationPolicies(objs, "foo")
	out := CompileAuthz(testMesh(t), Workload{Namespace: "foo", Name: "httpbin", Labels: map[string]string{"app": "httpbin"}}, policies)
	fs = append(fs, out.Findings...)
	got := []string{}
	for _, f := range fs {
		if f.Object != "AuthorizationPolicy foo/p" && !strings.HasPrefix(f.Object, "AuthorizationPolicy foo/") {
			t.Errorf("finding %v names object %q", f, f.Object)
		}
		if f.File != "test.yaml" || f.Line == 0 {
			t.Errorf("finding %v has no file:line", f)
		}
		if f.Message == "" {
			t.Errorf("finding %v has no message", f)
		}
		got = append(got, fmt.Sprintf("%s %s %s", f.Severity, f.Code, f.Path))
	}
	sort.Strings(got)
	return got
}

type validateCase struct {
	name string
	meta string // metadata lines besides name and namespace
	spec string
	docs string // whole input instead of meta/spec
	want []string
}

var validateCases = []validateCase{
	// Valid policies produce nothing.
	{name: "valid allow", spec: `
rules:
- from:
  - source: {principals: ["cluster.local/ns/foo/sa/a"], namespaces: ["prod-*", "*"], ipBlocks: ["10.0.0.0/8", "::1"], requestPrincipals: ["iss/sub"]}
  to:
  - operation: {hosts: ["*.example.com"], ports: ["0", "65535"], methods: ["GET"], paths: ["/a/{*}/b/{**}", "/x*", "*.css"]}
  when:
  - {key: "request.headers[x-a]", values: ["*"]}
  - {key: "request.auth.claims[a][b]", values: ["c"]}
  - {key: "experimental.envoy.filters.a.b[c]", values: ["[d]"]}
  - {key: source.ip, notValues: ["1.2.3.4/32"]}
  - {key: destination.port, values: ["80"]}
  - {key: connection.sni, values: ["x"]}
  - {key: source.serviceAccount, values: ["sa"]}
  - {key: source.trustDomain, values: ["td"]}`},
	{name: "valid deny with ports", spec: `
action: DENY
rules:
- to:
  - operation: {methods: ["DELETE"], ports: ["8000"]}`},
	{name: "valid custom", spec: `
action: CUSTOM
provider: {name: ext}
rules:
- to:
  - operation: {paths: ["/admin/*"]}
  from:
  - source: {ipBlocks: ["10.0.0.0/8"]}`},
	{name: "valid empty spec", spec: "{}"},
	{name: "valid dry-run deny", meta: `annotations: {istio.io/dry-run: "true"}`, spec: `
action: DENY
rules:
- from:
  - source: {namespaces: ["bar"]}`},
	{name: "valid service accounts", spec: `
rules:
- from:
  - source: {serviceAccounts: ["sa", "ns/sa"], notServiceAccounts: ["other"]}`},

	// AP-SCHEMA / AP-UNKNOWN-FIELD
	{name: "schema wrong type", spec: `rules: {from: []}`, want: []string{"error AP-SCHEMA spec.rules"}},
	{name: "schema unknown action", spec: `action: PERMIT`, want: []string{"error AP-SCHEMA spec.action"}},
	{name: "unknown top-level field", spec: `rulez: []`, want: []string{"error AP-UNKNOWN-FIELD spec.rulez"}},
	{name: "unknown nested fields", spec: `
action: DENY
selector: {matchLabels: {app: httpbin}, matchLabel: {x: y}}
rules:
- from:
  - source: {namespaces: [bar], principal: [x]}
  to:
  - operation: {paths: [/admin], pathz: [/x]}
    op: {}
  when:
  - {key: source.ip, values: [10.0.0.1], value: [x]}`, want: []string{
		"error AP-UNKNOWN-FIELD spec.rules[0].from[0].source.principal",
		"error AP-UNKNOWN-FIELD spec.rules[0].to[0].op",
		"error AP-UNKNOWN-FIELD spec.rules[0].to[0].operation.pathz",
		"error AP-UNKNOWN-FIELD spec.rules[0].when[0].value",
		"error AP-UNKNOWN-FIELD spec.selector.matchLabel",
		// The rest of the policy is kept, and validated.
		"warning AP-DENY-HTTP-ONLY spec.rules",
	}},
	{name: "proto field names are known", spec: `
rules:
- from:
  - source: {ip_blocks: [10.0.0.0/8], not_namespaces: [bar]}`},
	{name: "unknown field and a wrong type", spec: "rulez: []\nrules: {from: []}", want: []string{
		"error AP-SCHEMA spec.rules",
		"error AP-UNKNOWN-FIELD spec.rulez",
	}},

	// AP-UNKNOWN-KEY / AP-UNSUPPORTED-KEY
	{name: "unknown key", spec: `
rules:
- when:
  - {key: request.weird, values: ["x"]}`, want: []string{"error AP-UNKNOWN-KEY spec.rules[0].when[0].key"}},
	{name: "empty key", spec: `
rules:
- when:
  - {key: "", values: ["x"]}`, want: []string{"error AP-UNKNOWN-KEY spec.rules[0].when[0].key"}},
	{name: "missing key", spec: `
rules:
- when:
  - {values: ["x"]}`, want: []string{"error AP-UNKNOWN-KEY spec.rules[0].when[0].key"}},
	{name: "unknown key with brackets", spec: `
rules:
- when:
  - {key: "foo[bar]", values: ["x"]}
  - {key: "source.ip[x]", values: ["1.2.3.4"]}
  - {key: "foo[bar", values: ["x"]}`, want: []string{
		"error AP-UNKNOWN-KEY spec.rules[0].when[0].key",
		"error AP-UNKNOWN-KEY spec.rules[0].when[1].key",
		"error AP-UNKNOWN-KEY spec.rules[0].when[2].key",
	}},
	{name: "unsupported destination keys", spec: `
rules:
- when:
  - {key: "destination.labels[app]", values: ["x"]}
  - {key: destination.namespace, values: ["x"]}
  - {key: destination.name, values: ["x"]}
  - {key: destination.user, values: ["x"]}`, want: []string{
		"error AP-UNSUPPORTED-KEY spec.rules[0].when[0].key",
		"error AP-UNSUPPORTED-KEY spec.rules[0].when[1].key",
		"error AP-UNSUPPORTED-KEY spec.rules[0].when[2].key",
		"error AP-UNSUPPORTED-KEY spec.rules[0].when[3].key",
	}},

	// AP-EMPTY-CONDITION
	{name: "condition without values", spec: `
rules:
- when:
  - {key: source.ip}
  - {key: "request.headers[a]", values: []}`, want: []string{
		"error AP-EMPTY-CONDITION spec.rules[0].when[0]",
		"error AP-EMPTY-CONDITION spec.rules[0].when[1]",
	}},

	// AP-EMPTY-VALUE
	{name: "empty values", spec: `
rules:
- from:
  - source: {principals: [""], notRequestPrincipals: ["x/y", ""]}
  to:
  - operation: {methods: [""], paths: [""], notHosts: [""]}
  when:
  - {key: "request.headers[a]", values: [""], notValues: ["ok", ""]}`, want: []string{
		"error AP-EMPTY-VALUE spec.rules[0].from[0].source.notRequestPrincipals[1]",
		"error AP-EMPTY-VALUE spec.rules[0].from[0].source.principals[0]",
		"error AP-EMPTY-VALUE spec.rules[0].to[0].operation.methods[0]",
		"error AP-EMPTY-VALUE spec.rules[0].to[0].operation.notHosts[0]",
		"error AP-EMPTY-VALUE spec.rules[0].to[0].operation.paths[0]",
		"error AP-EMPTY-VALUE spec.rules[0].when[0].notValues[1]",
		"error AP-EMPTY-VALUE spec.rules[0].when[0].values[0]",
	}},

	// AP-BAD-IP
	{name: "bad ips", spec: `
rules:
- from:
  - source: {ipBlocks: ["10.0.0.256"], notIpBlocks: ["10.0.0.0/33"], remoteIpBlocks: ["host.example.com"], notRemoteIpBlocks: ["::1/129", "1.2.3.4"]}
  when:
  - {key: source.ip, values: ["1.2.3"]}
  - {key: remote.ip, notValues: ["x"]}
  - {key: destination.ip, values: ["10.0.0.1", "10.0.0.1/"]}`, want: []string{
		"error AP-BAD-IP spec.rules[0].from[0].source.ipBlocks[0]",
		"error AP-BAD-IP spec.rules[0].from[0].source.notIpBlocks[0]",
		"error AP-BAD-IP spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
		"error AP-BAD-IP spec.rules[0].from[0].source.remoteIpBlocks[0]",
		"error AP-BAD-IP spec.rules[0].when[0].values[0]",
		"error AP-BAD-IP spec.rules[0].when[1].notValues[0]",
		"error AP-BAD-IP spec.rules[0].when[2].values[1]",
	}},

	// AP-BAD-PORT
	{name: "bad ports", spec: `
rules:
- to:
  - operation: {ports: ["http", "65536", "+8080", "08080"], notPorts: ["-1", " 80", "80", "-0"]}
  when:
  - {key: destination.port, values: ["8o", "+80"], notValues: ["99999"]}`, want: []string{
		"error AP-BAD-PORT spec.rules[0].to[0].operation.notPorts[0]",
		"error AP-BAD-PORT spec.rules[0].to[0].operation.notPorts[1]",
		"error AP-BAD-PORT spec.rules[0].to[0].operation.notPorts[3]",
		"error AP-BAD-PORT spec.rules[0].to[0].operation.ports[0]",
		"error AP-BAD-PORT spec.rules[0].to[0].operation.ports[1]",
		"error AP-BAD-PORT spec.rules[0].to[0].operation.ports[2]",
		"error AP-BAD-PORT spec.rules[0].when[0].notValues[0]",
		"error AP-BAD-PORT spec.rules[0].when[0].values[0]",
		"error AP-BAD-PORT spec.rules[0].when[0].values[1]",
	}},

	// AP-BAD-KEY-FORMAT
	{name: "bad key formats", spec: `
rules:
- when:
  - {key: request.headers, values: ["x"]}
  - {key: "request.headers[]", values: ["x"]}
  - {key: "request.headers[a", values: ["x"]}
  - {key: request.auth.claims, values: ["x"]}
  - {key: "request.auth.claims[a][]", values: ["x"]}
  - {key: experimental.envoy.filters.a, values: ["x"]}
  - {key: "experimental.envoy.filters.a[]", values: ["x"]}
  - {key: "request.headersx[a]", values: ["x"]}
  - {key: "request.headers[a]x", values: ["x"]}`, want: []string{
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[0].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[1].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[2].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[3].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[4].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[5].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[6].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[7].key",
		"error AP-BAD-KEY-FORMAT spec.rules[0].when[8].key",
	}},

	// AP-LITERAL-KEY-NAME: admission takes a[b][c] (validateMapKey), and the
	// translator names the header or metadata key "b][c".
	{name: "literal key names", spec: `
rules:
- when:
  - {key: "request.headers[a][b]", values: ["x"]}
  - {key: "request.headers[a]]", notValues: ["x"]}
  - {key: "experimental.envoy.filters.a[b][c]", values: ["x"]}
  - {key: "request.auth.claims[a][b]", values: ["x"]}
  - {key: "request.headers[x-a]", values: ["x"]}`, want: []string{
		"warning AP-LITERAL-KEY-NAME spec.rules[0].when[0].key",
		"warning AP-LITERAL-KEY-NAME spec.rules[0].when[1].key",
		"warning AP-LITERAL-KEY-NAME spec.rules[0].when[2].key",
	}},

	// AP-EMPTY-SOURCE / AP-EMPTY-OPERATION
	{name: "empty source and operation", spec: `
rules:
- from:
  - source: {}
  - {}
  to:
  - operation: {}
  - {}`, want: []string{
		"error AP-EMPTY-OPERATION spec.rules[0].to[0].operation",
		"error AP-EMPTY-OPERATION spec.rules[0].to[1].operation",
		"error AP-EMPTY-SOURCE spec.rules[0].from[0].source",
		"error AP-EMPTY-SOURCE spec.rules[0].from[1].source",
	}},

	// AP-MISSING-RULES
	{name: "deny without rules", spec: `action: DENY`, want: []string{"error AP-MISSING-RULES spec.rules"}},
	{name: "deny with empty rules", spec: "action: DENY\nrules: []", want: []string{"error AP-MISSING-RULES spec.rules"}},
	{name: "custom without rules", spec: "action: CUSTOM\nprovider: {name: ext}", want: []string{"error AP-MISSING-RULES spec.rules"}},

	// AP-PROVIDER-NOT-CUSTOM
	{name: "provider on allow", spec: "provider: {name: ext}\nrules: [{}]", want: []string{"error AP-PROVIDER-NOT-CUSTOM spec.provider"}},
	{name: "provider on deny", spec: "action: DENY\nprovider: {name: ext}\nrules: [{}]", want: []string{"error AP-PROVIDER-NOT-CUSTOM spec.provider"}},

	// AP-MISSING-PROVIDER / AP-UNKNOWN-PROVIDER
	{name: "custom without provider", spec: "action: CUSTOM\nrules: [{}]", want: []string{"error AP-MISSING-PROVIDER spec.provider.name"}},
	{name: "custom with empty provider name", spec: "action: CUSTOM\nprovider: {}\nrules: [{}]", want: []string{"error AP-MISSING-PROVIDER spec.provider.name"}},
	{name: "custom with unknown provider", spec: "action: CUSTOM\nprovider: {name: nope}\nrules: [{}]", want: []string{"error AP-UNKNOWN-PROVIDER spec.provider.name"}},

	// AP-CUSTOM-IDENTITY
	{name: "custom with identity fields", spec: `
action: CUSTOM
provider: {name: ext}
rules:
- from:
  - source: {principals: ["a"]}
  - source: {notRequestPrincipals: ["a/b"]}
  - source: {serviceAccounts: ["a"]}
  - source: {trustDomains: ["td"]}
  - source: {notNamespaces: ["a"]}
  - source: {ipBlocks: ["1.2.3.4"]}
  when:
  - {key: "request.auth.claims[iss]", values: ["x"]}
  - {key: source.namespace, values: ["x"]}
  - {key: source.principal, values: ["x"]}
  - {key: source.serviceAccount, values: ["x"]}
  - {key: source.trustDomain, values: ["x"]}
  - {key: request.auth.principal, values: ["x"]}
  - {key: source.ip, values: ["1.2.3.4"]}`, want: []string{
		"error AP-CUSTOM-IDENTITY spec.rules[0].from[0].source",
		"error AP-CUSTOM-IDENTITY spec.rules[0].from[1].source",
		"error AP-CUSTOM-IDENTITY spec.rules[0].from[2].source",
		"error AP-CUSTOM-IDENTITY spec.rules[0].from[3].source",
		"error AP-CUSTOM-IDENTITY spec.rules[0].from[4].source",
		"error AP-CUSTOM-IDENTITY spec.rules[0].when[0].key",
		"error AP-CUSTOM-IDENTITY spec.rules[0].when[1].key",
		"error AP-CUSTOM-IDENTITY spec.rules[0].when[2].key",
		"error AP-CUSTOM-IDENTITY spec.rules[0].when[3].key",
		"error AP-CUSTOM-IDENTITY spec.rules[0].when[4].key",
		"error AP-CUSTOM-IDENTITY spec.rules[0].when[5].key",
	}},

	// AP-SERVICE-ACCOUNTS
	{name: "service accounts with principals", spec: `
rules:
- from:
  - source: {serviceAccounts: ["a"], principals: ["x"]}
  - source: {notServiceAccounts: ["a"], notNamespaces: ["x"]}`, want: []string{
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[0].source.serviceAccounts",
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[1].source.serviceAccounts",
	}},
	{name: "service account values", spec: `
rules:
- from:
  - source: {serviceAccounts: ["a/b/c", "*", "ns/sa*", ""], notServiceAccounts: ["ok", "x/y/z"]}`, want: []string{
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[0].source.notServiceAccounts[1]",
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[0].source.serviceAccounts[0]",
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[0].source.serviceAccounts[1]",
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[0].source.serviceAccounts[2]",
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[0].source.serviceAccounts[3]",
	}},
	{name: "too many service accounts", spec: `
rules:
- from:
  - source: {notServiceAccounts: [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17]}`, want: []string{
		"error AP-SERVICE-ACCOUNTS spec.rules[0].from[0].source.notServiceAccounts",
	}},

	// AP-TRUST-DOMAINS
	{name: "trust domain values", spec: `
rules:
- from:
  - source: {trustDomains: ["*a*", "a*b", "a/b", "", "*.ok", "ok*", "*"], notTrustDomains: ["fine", "x/y"]}`, want: []string{
		"error AP-TRUST-DOMAINS spec.rules[0].from[0].source.notTrustDomains[1]",
		"error AP-TRUST-DOMAINS spec.rules[0].from[0].source.trustDomains[0]",
		"error AP-TRUST-DOMAINS spec.rules[0].from[0].source.trustDomains[1]",
		"error AP-TRUST-DOMAINS spec.rules[0].from[0].source.trustDomains[2]",
		"error AP-TRUST-DOMAINS spec.rules[0].from[0].source.trustDomains[3]",
	}},

	// AP-BAD-PATH-TEMPLATE
	{name: "bad path templates", spec: `
rules:
- to:
  - operation: {paths: ["/a/{**}/{*}", "/a/{x}", "a/{*}", "/a/{*}b", "/a/{**}/b"], notPaths: ["/{**}/{**}", "/{*}*", "/a}", "{"]}`, want: []string{
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.notPaths[0]",
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.notPaths[1]",
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.notPaths[2]",
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.notPaths[3]",
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.paths[0]",
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.paths[1]",
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.paths[2]",
		"error AP-BAD-PATH-TEMPLATE spec.rules[0].to[0].operation.paths[3]",
	}},

	// AP-SELECTOR-AND-TARGETREF / AP-TARGETREF-IGNORED
	{name: "selector and targetRefs", spec: `
selector: {matchLabels: {app: httpbin}}
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
rules: [{}]`, want: []string{"error AP-SELECTOR-AND-TARGETREF spec"}},
	{name: "empty selector and targetRef", spec: `
selector: {}
targetRef: {kind: Service, name: httpbin}
rules: [{}]`, want: []string{"error AP-SELECTOR-AND-TARGETREF spec"}},
	{name: "targetRefs ignored on sidecars", spec: `
targetRefs: [{kind: Service, name: httpbin}]
rules: [{}]`, want: []string{"warning AP-TARGETREF-IGNORED spec.targetRefs"}},

	// AP-DRY-RUN-VALUE
	{name: "dry-run not a bool", meta: `annotations: {istio.io/dry-run: "yes"}`, spec: "rules: [{}]",
		want: []string{`error AP-DRY-RUN-VALUE metadata.annotations["istio.io/dry-run"]`}},
	{name: "dry-run empty", meta: `annotations: {istio.io/dry-run: ""}`, spec: "rules: [{}]",
		want: []string{`error AP-DRY-RUN-VALUE metadata.annotations["istio.io/dry-run"]`}},
	{name: "dry-run on audit", meta: `annotations: {istio.io/dry-run: "true"}`, spec: "action: AUDIT\nrules: [{}]",
		want: []string{`warning AP-DRY-RUN-VALUE metadata.annotations["istio.io/dry-run"]`}},
	{name: "dry-run false on audit is fine", meta: `annotations: {istio.io/dry-run: "false"}`, spec: "action: AUDIT\nrules: [{}]"},

	// AP-INFIX-WILDCARD
	{name: "infix wildcards", spec: `
rules:
- from:
  - source: {principals: ["cluster.local/ns/*/sa/x"], namespaces: ["a*b"], notNamespaces: ["c*d"]}
  to:
  - operation: {methods: ["G*T"], paths: ["/a/*/b", "*/x*"], hosts: ["a.*.com"]}`, want: []string{
		"warning AP-INFIX-WILDCARD spec.rules[0].from[0].source.principals[0]",
		"warning AP-INFIX-WILDCARD spec.rules[0].to[0].operation.hosts[0]",
		"warning AP-INFIX-WILDCARD spec.rules[0].to[0].operation.methods[0]",
		"warning AP-INFIX-WILDCARD spec.rules[0].to[0].operation.paths[0]",
	}},

	// AP-DENY-HTTP-ONLY
	{name: "deny http-only without ports", spec: `
action: DENY
rules:
- to:
  - operation: {methods: ["GET"]}`, want: []string{"warning AP-DENY-HTTP-ONLY spec.rules"}},
	{name: "deny header condition without ports", spec: `
action: DENY
rules:
- when:
  - {key: "request.headers[x]", values: ["y"]}`, want: []string{"warning AP-DENY-HTTP-ONLY spec.rules"}},
	{name: "deny request principals without ports", spec: `
action: DENY
rules:
- from:
  - source: {notRequestPrincipals: ["*"]}`, want: []string{"warning AP-DENY-HTTP-ONLY spec.rules"}},
	{name: "allow http-only is not warned", spec: `
rules:
- to:
  - operation: {methods: ["GET"]}`},

	// AP-MULTIPLE-PROVIDERS: a workload property, reported by CompileAuthz.
	{name: "several custom providers", docs: policyYAML("", `
action: CUSTOM
provider: {name: ext}
rules: [{}]`) + "---\n" + strings.Replace(policyYAML("", `
action: CUSTOM
provider: {name: ext-http}
rules: [{}]`), "name: p", "name: q", 1), want: []string{
		"error AP-MULTIPLE-PROVIDERS spec.provider.name",
		"error AP-MULTIPLE-PROVIDERS spec.provider.name",
	}},
}

func TestValidateAuthorizationPolicy(t *testing.T) {
	for _, tt := range validateCases {
		t.Run(tt.name, func(t *testing.T) {
			docs := tt.docs
			if docs == "" {
				docs = policyYAML(tt.meta, tt.spec)
			}
			got := findingsFor(t, docs)
			want := append([]string{}, tt.want...)
			sort.Strings(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("findings (-want +got):\n%s\ninput:\n%s", diff, docs)
			}
		})
	}
}

// TestEveryFindingCodeTested: each Code* constant in finding.go is expected by
// at least one case above, so a new code cannot go untested.
func TestEveryFindingCodeTested(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "finding.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]string{} // value → constant name
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, s := range gd.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, "Code") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					continue
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				codes[v] = n.Name
			}
		}
	}
	if len(codes) < 20 {
		t.Fatalf("found %d Code constants in finding.go; the parser is not finding them", len(codes))
	}
	tested := map[string]bool{}
	for _, c := range validateCases {
		for _, w := range c.want {
			if fields := strings.Fields(w); len(fields) >= 2 {
				tested[fields[1]] = true
			}
		}
	}
	for v, name := range codes {
		if !tested[v] {
			t.Errorf("%s (%q) has no case in validateCases", name, v)
		}
	}
}

// TestDecodeAuthorizationPolicies covers decoding itself: other kinds are
// skipped, the default namespace filled in, dry-run parsed as a bool.
func TestDecodeAuthorizationPolicies(t *testing.T) {
	docs := policyYAML(`annotations: {istio.io/dry-run: "TRUE"}`, "action: DENY\nrules: [{}]") + `---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: nons}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pa, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: example.com/v1
kind: AuthorizationPolicy
metadata: {name: other-group, namespace: foo}
spec: {whatever: true}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: foo}
spec: {action: 7.5}
`
	objs, err := source.Parse("test.yaml", []byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	ps, fs := DecodeAuthorizationPolicies(objs, "dflt")
	var got []string
	for _, p := range ps {
		got = append(got, fmt.Sprintf("%s %s dry=%t rules=%d", p.Name(), p.Spec.GetAction(), p.DryRun, len(p.Spec.GetRules())))
	}
	want := []string{"foo/p DENY dry=true rules=1", "dflt/nons ALLOW dry=false rules=0"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decoded policies (-want +got):\n%s", diff)
	}
	if len(fs) != 1 || fs[0].Code != CodeSchema || fs[0].Object != "AuthorizationPolicy foo/bad" || fs[0].Line == 0 {
		t.Errorf("findings = %v, want one %s for foo/bad with its line", fs, CodeSchema)
	}
}
