package authz

import (
	"context"
	"strconv"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// decideWithBody runs one request through a bundle whose CUSTOM provider has cfg.
func decideWithBody(t *testing.T, cfg BodyConfig, hdrs []Header, body string) *recordingProvider {
	t.Helper()
	prov := &recordingProvider{res: ProviderResult{Allowed: true}}
	e := New(Config{})
	if err := e.Load(context.Background(), customBundle("", WithBody(prov, cfg), 1, "")); err != nil {
		t.Fatal(err)
	}
	d := e.Decide(context.Background(), &Request{Protocol: ProtocolHTTP, Method: "POST", Host: "h", Path: "/p", Headers: hdrs,
		Body: &RequestBody{Data: []byte(body), Complete: true}})
	if prov.input == nil {
		t.Fatalf("provider not asked: %+v", d)
	}
	return prov
}

// opa-envoy-plugin (envoyauth/request.go getParsedBody) parses a JSON body
// sent as raw_body (pack_as_bytes): `if body == "" { body = string(rawBody) }`.
func TestBodyParsedBodyPackAsBytes(t *testing.T) {
	body := `{"user": "admin"}`
	prov := decideWithBody(t, BodyConfig{MaxRequestBytes: 1024, PackAsBytes: true},
		[]Header{{Name: "content-type", Value: "application/json"}, {Name: "content-length", Value: strconv.Itoa(len(body))}}, body)
	if got := field(prov.input, "parsed_body", "user"); got == nil || !got.Equal(ast.StringTerm("admin")) {
		t.Errorf("packAsBytes JSON body: parsed_body = %v, opa-envoy-plugin gives {\"user\": \"admin\"}", field(prov.input, "parsed_body"))
	}
}

// opa-envoy-plugin parses application/x-www-form-urlencoded (and
// multipart/form-data) bodies into parsed_body.
func TestBodyParsedBodyForm(t *testing.T) {
	body := `role=admin`
	prov := decideWithBody(t, BodyConfig{MaxRequestBytes: 1024},
		[]Header{{Name: "content-type", Value: "application/x-www-form-urlencoded"}, {Name: "content-length", Value: strconv.Itoa(len(body))}}, body)
	if got := field(prov.input, "parsed_body", "role"); got == nil {
		t.Errorf("form body: parsed_body = %v, opa-envoy-plugin gives {\"role\": [\"admin\"]}", field(prov.input, "parsed_body"))
	}
}

// Envoy hands ext_authz repeated headers joined with ","; opa-envoy-plugin
// tests strings.Contains(headers["content-type"], "application/json") on the
// joined value. A client that sends "application/json" then "text/plain" (the
// app, r.Header.Get, reads the first) must not get parsed_body null: a
// provider's deny rule on parsed_body would not fire while the app parses the
// JSON.
func TestBodyParsedBodyRepeatedContentType(t *testing.T) {
	body := `{"user": "admin"}`
	prov := decideWithBody(t, BodyConfig{MaxRequestBytes: 1024},
		[]Header{{Name: "content-type", Value: "application/json"}, {Name: "content-type", Value: "text/plain"}}, body)
	ct := field(prov.input, "attributes", "request", "http", "headers", "content-type")
	if got := field(prov.input, "parsed_body", "user"); got == nil || !got.Equal(ast.StringTerm("admin")) {
		t.Errorf("content-type %v: parsed_body = %v; opa-envoy-plugin parses it (the joined value contains application/json)", ct, field(prov.input, "parsed_body"))
	}
}

// Envoy's CheckRequestUtils::setHttpRequest always skips a client's
// x-envoy-auth-partial-body and sets its own whenever a body is buffered,
// whatever allow_partial_message says.
func TestBodyClientPartialHeaderReplaced(t *testing.T) {
	body := `{"user": "alice"}`
	prov := decideWithBody(t, BodyConfig{MaxRequestBytes: 1024},
		[]Header{{Name: "content-type", Value: "application/json"}, {Name: "x-envoy-auth-partial-body", Value: "true"}}, body)
	if got := prov.check.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-envoy-auth-partial-body"]; got != "false" {
		t.Errorf("CheckRequest x-envoy-auth-partial-body = %q (the client's), Envoy sends \"false\" for a whole body", got)
	}
}

// multipart/form-data bodies are parsed as opa-envoy-plugin parses them: each
// named field a list of values, a part of type application/json parsed; and
// a partial body without a content-length to tell it is cut short fails to
// parse, which fails the check, rather than passing as an empty document.
func TestBodyParsedBodyMultipartAndPartial(t *testing.T) {
	body := "--XX\r\nContent-Disposition: form-data; name=\"role\"\r\n\r\nadmin\r\n" +
		"--XX\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}\r\n" +
		"--XX\r\nContent-Disposition: form-data\r\n\r\nnameless\r\n--XX--\r\n"
	prov := decideWithBody(t, BodyConfig{MaxRequestBytes: 1024}, []Header{{Name: "content-type", Value: "multipart/form-data; boundary=XX"}}, body)
	want := ast.MustParseTerm(`{"role": ["admin"], "meta": [{"a": 1}]}`)
	if got := field(prov.input, "parsed_body"); got == nil || !got.Equal(want) {
		t.Errorf("multipart parsed_body = %v, want %v", got, want)
	}

	r := &Request{Protocol: ProtocolHTTP, Method: "POST", Path: "/p", Headers: []Header{{Name: "content-type", Value: "application/json"}}}
	cb, tooLarge := bodyFor(&RequestBody{Data: []byte(`{"user": "ad`), Complete: false}, BodyConfig{MaxRequestBytes: 64, AllowPartialMessage: true})
	if tooLarge || !cb.partial {
		t.Fatalf("partial body: tooLarge %t partial %t", tooLarge, cb.partial)
	}
	if _, _, err := r.parsedBody(cb); err == nil {
		t.Error("a cut-short JSON body without content-length parsed; want an error, as opa-envoy-plugin gives")
	}
}
