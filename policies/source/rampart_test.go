package source

import (
	"strings"
	"testing"
)

func TestRampartKindsDecodeStrictly(t *testing.T) {
	const head = "apiVersion: policy.rampart.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: p\n  namespace: foo\n"
	tests := []struct {
		name, doc, wantErr string
	}{
		{"valid", head + "spec:\n  limits:\n  - name: a\n    rate: {requests: 1}\n", ""},
		{"unknown field at its line", head + "spec:\n  limits:\n  - name: a\n    rate:\n      requests: 1\n      pre: 1m\n",
			"rl.yaml:11: RateLimitPolicy foo/p: spec.limits[0].rate.pre: unknown field"},
		{"wrong type: the deepest line the path names (no index)", head + "spec:\n  limits:\n  - name: a\n    rate: {requests: many}\n",
			"rl.yaml:7: RateLimitPolicy foo/p: spec.limits.rate.requests: cannot unmarshal string: want an integer"},
		{"unknown version", strings.Replace(head, "v1alpha1", "v1", 1) + "spec: {limits: [{name: a, rate: {requests: 1}}]}\n",
			`rl.yaml:1: RateLimitPolicy foo/p: apiVersion "policy.rampart.dev/v1": want policy.rampart.dev/v1alpha1`},
		{"unknown kind", strings.Replace(head, "RateLimitPolicy", "RateLimitPolicie", 1) + "spec: {}\n",
			`rl.yaml:1: RateLimitPolicie foo/p: policy.rampart.dev has no kind "RateLimitPolicie" (known: RateLimitPolicy)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Parse("rl.yaml", []byte(tt.doc))
			if tt.wantErr == "" {
				if err != nil || len(objs) != 1 {
					t.Fatalf("Parse: %d objects, %v", len(objs), err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Parse error %v; want %s", err, tt.wantErr)
			}
			if objs != nil {
				t.Errorf("Parse returned objects from a bad file")
			}
		})
	}
}
