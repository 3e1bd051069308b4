package compile

import (
	"strings"
	"testing"
)

// An envoyExtAuthzGrpc provider's fields the sidecar could not honour are
// refused when the mesh config is parsed, naming the provider and field.
func TestParseMeshExtAuthzFields(t *testing.T) {
	// The body settings parsed are the ones the sidecar gets.
	m, err := ParseMesh([]byte("extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: ext, port: 9000, includeRequestBodyInCheck: {maxRequestBytes: 1024, packAsBytes: true}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if b := m.ExtensionProviders[0].EnvoyExtAuthzGrpc.IncludeRequestBodyInCheck; b == nil || b.MaxRequestBytes != 1024 || !b.PackAsBytes || b.AllowPartialMessage {
		t.Errorf("includeRequestBodyInCheck = %+v, want maxRequestBytes 1024, packAsBytes", b)
	}
	for _, tc := range []struct {
		name, provider string
		wantErr        []string // substrings; none means it parses
	}{
		{"statusOnError valid", `envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, statusOnError: "503"}`, nil},
		{"statusOnError not a number", `envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, statusOnError: "abc"}`, []string{"(ext)", "envoyExtAuthzGrpc.statusOnError", `"abc"`}},
		{"statusOnError below 100", `envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, statusOnError: "99"}`, []string{"(ext)", "statusOnError", `"99"`}},
		{"statusOnError above 999", `envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, statusOnError: "1000"}`, []string{"(ext)", "statusOnError"}},
		{"statusOnError not in Envoy's StatusCode", `envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, statusOnError: "299"}`, []string{"(ext)", "statusOnError"}},
		{"http statusOnError", `envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 9000, statusOnError: "1"}`, []string{"(ext)", "envoyExtAuthzHttp.statusOnError"}},
		{"includeRequestBodyInCheck", `envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, includeRequestBodyInCheck: {maxRequestBytes: 1024, allowPartialMessage: true, packAsBytes: true}}`, nil},
		{"includeRequestBodyInCheck without maxRequestBytes", `envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, includeRequestBodyInCheck: {allowPartialMessage: true}}`, []string{"(ext)", "envoyExtAuthzGrpc.includeRequestBodyInCheck.maxRequestBytes 0"}},
		{"rampartRego includeRequestBodyInCheck", `rampartRego: {bundle: /b, includeRequestBodyInCheck: {maxRequestBytes: 8192}}`, nil},
		{"rampartRego includeRequestBodyInCheck without maxRequestBytes", `rampartRego: {bundle: /b, includeRequestBodyInCheck: {}}`, []string{"(ext)", "rampartRego.includeRequestBodyInCheck.maxRequestBytes 0"}},
		{"rampartRego includeRequestBodyInCheck unknown field", `rampartRego: {bundle: /b, includeRequestBodyInCheck: {maxRequestByte: 1}}`, []string{"rampartRego", "maxRequestByte"}},
		{"http includeRequestBodyInCheck", `envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 9000, includeRequestBodyInCheck: {}}`, []string{"(ext)", "envoyExtAuthzHttp.includeRequestBodyInCheck"}},
		{"namespaced service", `envoyExtAuthzGrpc: {service: foo/ext.foo.svc.cluster.local, port: 9000}`, nil},
		{"service with two namespaces", `envoyExtAuthzGrpc: {service: a/b/ext, port: 9000}`, []string{"(ext)", "envoyExtAuthzGrpc.service"}},
		{"service with an empty namespace", `envoyExtAuthzGrpc: {service: /ext, port: 9000}`, []string{"(ext)", "envoyExtAuthzGrpc.service"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMesh([]byte("extensionProviders:\n- name: ext\n  " + tc.provider + "\n"))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("ParseMesh: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseMesh accepted it; want an error with %q", tc.wantErr)
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

// Istio's envoyExtAuthzGrpc.service is [<Namespace>/]<Hostname>: the server
// to dial is the hostname.
func TestExtAuthzGRPCHost(t *testing.T) {
	for _, tc := range []struct{ service, want string }{
		{"ext.foo.svc.cluster.local", "ext.foo.svc.cluster.local"},
		{"foo/ext.foo.svc.cluster.local", "ext.foo.svc.cluster.local"},
		{"foo/ext", "ext"},
	} {
		if got := (ExtAuthzGRPC{Service: tc.service}).Host(); got != tc.want {
			t.Errorf("Host() of %q = %q, want %q", tc.service, got, tc.want)
		}
	}
}
