package authz

import (
	"strings"
	"testing"

	xdstype "github.com/cncf/xds/go/xds/type/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// A bundle with a field this sidecar does not know (a newer control plane's,
// which may carry policy) is refused, naming the field, and not applied
// without it; a bundle of known fields round-trips.
func TestWireBundleRefusesUnknownFields(t *testing.T) {
	wb := WireBundle{Revision: "r1", Modules: map[string]string{"p.rego": "package p"},
		Providers: map[string]WireProvider{"opa": {Query: "data.x", Body: &BodyConfig{MaxRequestBytes: 10}}}}
	encode := func(edit func(map[string]any)) *anypb.Any {
		t.Helper()
		ext, err := wb.Extension()
		if err != nil {
			t.Fatal(err)
		}
		var ts xdstype.TypedStruct
		if err := ext.GetTypedConfig().UnmarshalTo(&ts); err != nil {
			t.Fatal(err)
		}
		m := ts.GetValue().AsMap()
		edit(m)
		st, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		inner, _ := anypb.New(&xdstype.TypedStruct{TypeUrl: BundleTypeURL, Value: st})
		a, _ := anypb.New(&corev3.TypedExtensionConfig{Name: ExtensionName, TypedConfig: inner})
		return a
	}
	got, err := WireBundleFrom(encode(func(map[string]any) {}))
	if err != nil || got.Providers["opa"].Body == nil || got.Providers["opa"].Body.MaxRequestBytes != 10 {
		t.Fatalf("known fields: %+v, %v", got, err)
	}
	for name, edit := range map[string]func(map[string]any){
		"top level": func(m map[string]any) { m["requestFilters"] = []any{"x"} },
		"in a provider": func(m map[string]any) {
			m["providers"].(map[string]any)["opa"].(map[string]any)["bodyLimits"] = 5.0
		},
	} {
		if _, err := WireBundleFrom(encode(edit)); err == nil || !strings.Contains(err.Error(), "does not know") {
			t.Errorf("%s: %v; want the bundle refused, naming the unknown field", name, err)
		}
	}
}
