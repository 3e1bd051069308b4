package compile

import (
	"fmt"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// TestDecodeDropsUnknownFields: a field the schema does not declare is dropped
// with a finding and the rest of the object decodes as if it had never been
// there, as the API server prunes it and istiod ignores it; a spec that still
// does not decode is left out.
func TestDecodeDropsUnknownFields(t *testing.T) {
	decode := func(t *testing.T, doc string) ([]proto.Message, []string) {
		t.Helper()
		objs, err := source.Parse("test.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("parse: %v\n%s", err, doc)
		}
		var specs []proto.Message
		aps, fs := DecodeAuthorizationPolicies(objs, "foo")
		for _, p := range aps {
			specs = append(specs, p.Spec)
		}
		ras, rfs := DecodeRequestAuthentications(objs, "foo")
		for _, r := range ras {
			specs = append(specs, r.Spec)
		}
		pas, pfs := DecodePeerAuthentications(objs, "foo")
		for _, p := range pas {
			specs = append(specs, p.Spec)
		}
		var got []string
		for _, f := range append(append(fs, rfs...), pfs...) {
			if f.File != "test.yaml" || f.Line == 0 || f.Message == "" {
				t.Errorf("finding %v has no file:line or message", f)
			}
			got = append(got, fmt.Sprintf("%s %s %s", f.Severity, f.Code, f.Path))
		}
		sort.Strings(got)
		return specs, got
	}
	head := func(kind string) string {
		return "apiVersion: security.istio.io/v1\nkind: " + kind + "\nmetadata: {name: p, namespace: foo}\n"
	}
	tests := []struct {
		name string
		doc  string
		// pruned is doc without its unknown fields: it must decode to the same
		// specs. Empty: nothing decodes.
		pruned string
		want   []string
	}{{
		name: "AuthorizationPolicy: a misspelt operation field",
		doc: head("AuthorizationPolicy") + `spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin], pathz: [/x]}}]`,
		pruned: head("AuthorizationPolicy") + `spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin]}}]`,
		want: []string{"error AP-UNKNOWN-FIELD spec.rules[0].to[0].operation.pathz"},
	}, {
		name: "AuthorizationPolicy: unknown fields at every level",
		doc: head("AuthorizationPolicy") + `spec:
  actions: DENY
  selector: {matchLabels: {app: a}, labels: {app: b}}
  rules:
  - from: [{source: {principals: [a]}, sources: [{}]}]
    to: [{operation: {method: [GET], methods: [POST]}}]
    when: [{key: source.ip, values: [10.0.0.1], notValue: [x]}]
    unless: []`,
		pruned: head("AuthorizationPolicy") + `spec:
  selector: {matchLabels: {app: a}}
  rules:
  - from: [{source: {principals: [a]}}]
    to: [{operation: {methods: [POST]}}]
    when: [{key: source.ip, values: [10.0.0.1]}]`,
		want: []string{
			"error AP-UNKNOWN-FIELD spec.actions",
			"error AP-UNKNOWN-FIELD spec.rules[0].from[0].sources",
			"error AP-UNKNOWN-FIELD spec.rules[0].to[0].operation.method",
			"error AP-UNKNOWN-FIELD spec.rules[0].unless",
			"error AP-UNKNOWN-FIELD spec.rules[0].when[0].notValue",
			"error AP-UNKNOWN-FIELD spec.selector.labels",
		},
	}, {
		name: "AuthorizationPolicy: an unknown field and a wrong type",
		doc: head("AuthorizationPolicy") + `spec:
  rulez: []
  rules: {to: []}`,
		want: []string{"error AP-SCHEMA spec.rules", "error AP-UNKNOWN-FIELD spec.rulez"},
	}, {
		name: "AuthorizationPolicy: an unknown enum value is no unknown field",
		doc:  head("AuthorizationPolicy") + "spec: {action: DENYY, rules: [{}]}",
		want: []string{"error AP-SCHEMA spec.action"},
	}, {
		name: "a wrong type deep in a list names its field",
		doc:  head("AuthorizationPolicy") + "spec: {rules: [{}, {to: [{operation: {paths: /admin}}]}]}",
		want: []string{"error AP-SCHEMA spec.rules[1].to[0].operation.paths"},
	}, {
		name: "RequestAuthentication",
		doc: head("RequestAuthentication") + `spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksURI: https://issuer.example/jwks
    jwks: '{"keys":[]}'
    fromHeaders: [{name: x-jwt, prefx: "Bearer "}]`,
		pruned: head("RequestAuthentication") + `spec:
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{"keys":[]}'
    fromHeaders: [{name: x-jwt}]`,
		want: []string{
			"error RA-UNKNOWN-FIELD spec.jwtRules[0].fromHeaders[0].prefx",
			"error RA-UNKNOWN-FIELD spec.jwtRules[0].jwksURI",
		},
	}, {
		name: "PeerAuthentication, in a map value too",
		doc: head("PeerAuthentication") + `spec:
  selector: {matchLabels: {app: a}}
  mtls: {mode: STRICT, strict: true}
  portLevelMtls:
    "8080": {mode: DISABLE, port: 8080}
  portLevelMTLS: {}`,
		pruned: head("PeerAuthentication") + `spec:
  selector: {matchLabels: {app: a}}
  mtls: {mode: STRICT}
  portLevelMtls:
    "8080": {mode: DISABLE}`,
		want: []string{
			"error PA-UNKNOWN-FIELD spec.mtls.strict",
			"error PA-UNKNOWN-FIELD spec.portLevelMTLS",
			"error PA-UNKNOWN-FIELD spec.portLevelMtls[8080].port",
		},
	}, {
		name: "PeerAuthentication with a bad mode is left out",
		doc:  head("PeerAuthentication") + "spec: {mtls: {mode: STRICTER}, extra: 1}",
		want: []string{"error PA-SCHEMA spec.mtls.mode", "error PA-UNKNOWN-FIELD spec.extra"},
	}, {
		name:   "proto field names are known, as protojson reads them",
		doc:    head("AuthorizationPolicy") + "spec: {rules: [{from: [{source: {not_ip_blocks: [10.0.0.0/8]}}]}]}",
		pruned: head("AuthorizationPolicy") + "spec: {rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]}",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			specs, got := decode(t, tt.doc)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
			var want []proto.Message
			if tt.pruned != "" {
				var fs []string
				want, fs = decode(t, tt.pruned)
				if len(fs) != 0 || len(want) != 1 {
					t.Fatalf("the pruned document decodes to %d specs with findings %v", len(want), fs)
				}
			}
			if diff := cmp.Diff(want, specs, protocmp.Transform()); diff != "" {
				t.Errorf("decoded specs (-pruned +got):\n%s", diff)
			}
		})
	}
}

// A schema error in a file names the field's own line and says what shape
// it wanted, without positions in JSON the user never wrote.
func TestSchemaErrorAtFieldLine(t *testing.T) {
	doc := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: /admin\n"
	objs, err := source.Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	_, fs := DecodeAuthorizationPolicies(objs, "default")
	if len(fs) != 1 || fs[0].Line != 9 || fs[0].Path != "spec.rules[0].to[0].operation.paths" ||
		fs[0].Message != `want a list, got a string "/admin"` {
		t.Fatalf("findings %+v; want one at line 9, spec.rules[0].to[0].operation.paths, wanting a list", fs)
	}
}
