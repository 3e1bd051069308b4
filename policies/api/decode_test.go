package api

import (
	"errors"
	"testing"
)

func TestDecodeRateLimitPolicySpec(t *testing.T) {
	tests := []struct {
		name, in      string
		path, reasonP string // "" path: no error
	}{
		{"valid", `{"limits":[{"name":"a","rate":{"requests":5,"per":"1m"},"key":{"by":"SourceIP"}}]}`, "", ""},
		{"unknown field", `{"limits":[{"name":"a","rat":{}}]}`, "spec.limits[0].rat", "unknown field"},
		{"duplicate field", `{"limits":[],"limits":[]}`, "spec.limits", "duplicate field"},
		{"wrong type", `{"limits":[{"rate":{"requests":"5"}}]}`, "spec.limits.rate.requests", "cannot unmarshal string: want an integer"},
		{"not an object", `[1]`, "spec", "cannot unmarshal array: want an object"},
		{"missing", ``, "spec", "required: a RateLimitPolicy needs a spec with limits"},
		{"null", `null`, "spec", "required: a RateLimitPolicy needs a spec with limits"},
		{"case matters", `{"Limits":[]}`, "spec.Limits", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := DecodeRateLimitPolicySpec([]byte(tt.in))
			if tt.path == "" {
				if err != nil || spec == nil || len(spec.Limits) != 1 || spec.Limits[0].Key.By != KeySourceIP {
					t.Fatalf("spec %+v, err %v", spec, err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Path != tt.path || fe.Reason != tt.reasonP {
				t.Fatalf("err = %v; want %s: %s", err, tt.path, tt.reasonP)
			}
		})
	}
}

// FuzzDecodeRateLimitPolicy: any input decodes or fails with a FieldError
// naming a spec path; nothing panics.
func FuzzDecodeRateLimitPolicy(f *testing.F) {
	for _, s := range []string{
		`{"limits":[{"name":"a","rate":{"requests":5,"per":"1m"},"burst":2,"key":{"by":"Header","header":"x"}}]}`,
		`{"selector":{"matchLabels":{"a":"b"}},"targetRefs":[{"kind":"ServiceEntry","name":"x"}],"limits":[{"match":{"operation":{"paths":["/a*"]},"source":{"principals":["*"]},"headers":[{"name":"h","values":["v"]}]}}]}`,
		`{"limits":[{"rat":1}]}`, `[]`, `"x"`, `{"limits":{"a":1}}`, `{"limits":[{"rate":{"requests":1e400}}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := DecodeRateLimitPolicySpec(data)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Reason == "" || (fe.Path != "spec" && len(fe.Path) < 6) {
				t.Fatalf("error %v (%T) is not a FieldError with a spec path", err, err)
			}
			return
		}
		if spec == nil {
			t.Fatal("nil spec without an error")
		}
		for _, l := range spec.Limits {
			_, _ = l.Rate.Period()
			_ = l.BurstOrDefault()
		}
	})
}
