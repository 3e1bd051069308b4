package authz

import (
	"strconv"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// FuzzParsedBody feeds hostile bodies and headers to the body a provider's
// check carries: no panic; a body shorter than its content-length is never
// parsed; a body over the limit is refused unless partial messages are
// allowed.
func FuzzParsedBody(f *testing.F) {
	f.Add([]byte(`{"user": "alice"}`), "application/json", "17", 64, false, false)
	f.Add([]byte(`{"a": [1, 2, {"b": null}]}`), "application/json; charset=utf-8", "", 8, true, false)
	f.Add([]byte("\xff\xfe{"), "application/json", "-1", 4, true, true)
	f.Add([]byte(`[1e999999]`), "application/json", "x", 1024, false, false)
	f.Add([]byte("a=1&b=%zz"), "application/x-www-form-urlencoded", "9", 64, false, false)
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n"), "multipart/form-data; boundary=b", "", 128, false, true)
	f.Fuzz(func(t *testing.T, data []byte, ct, cl string, max int, partial, asBytes bool) {
		cfg := BodyConfig{MaxRequestBytes: max, AllowPartialMessage: partial, PackAsBytes: asBytes}
		if cfg.Check() != nil {
			return
		}
		r := &Request{Protocol: ProtocolHTTP, Method: "POST", Path: "/p",
			Headers: []Header{{Name: "content-type", Value: ct}, {Name: "content-length", Value: cl}},
			Body:    &RequestBody{Data: data, Complete: true}}
		cb, tooLarge := bodyFor(r.Body, cfg)
		if tooLarge != (len(data) > max && !partial) {
			t.Fatalf("tooLarge %t for %d bytes, limit %d, partial %t", tooLarge, len(data), max, partial)
		}
		if len(cb.data) > max {
			t.Fatalf("the check carries %d bytes, over the limit %d", len(cb.data), max)
		}
		pb, truncated, err := r.parsedBody(cb)
		if err != nil {
			return
		}
		if pb == nil {
			t.Fatal("no parsed_body term and no error")
		}
		if !pb.Equal(ast.NullTerm()) {
			if truncated {
				t.Fatal("a truncated body was parsed")
			}
			if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n > int64(len(data)) {
				t.Fatal("a body shorter than its content-length was parsed")
			}
		}
		r.checkBody = cb
		_ = r.input("/p", "")
		_ = r.CheckRequest()
	})
}
