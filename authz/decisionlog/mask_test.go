package decisionlog

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rampart-mesh/rampart/authz"
)

// jwtMasked is testJWT with its signature redacted.
var jwtMasked = strings.TrimSuffix(testJWT, testJWTSig) + Redacted

func TestBuiltinMasking(t *testing.T) {
	h := newHarness(t, Config{})
	e := testEvent(t, 1, "/orders?access_token="+testJWT+"&page=2")
	h.start(t)
	h.logAll(t, e)
	h.stopAndWait(t)

	raw, err := os.ReadFile(h.path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{testJWTSig, "YWxpY2U6c2VjcmV0"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the log contains the secret %q", secret)
		}
	}
	r := decodeRecord(t, raw)
	in := r["input"].(map[string]any)
	http := lookup(in, "attributes", "request", "http").(map[string]any)
	headers := http["headers"].(map[string]any)
	for name, want := range map[string]string{
		"authorization":       Redacted,
		"proxy-authorization": Redacted,
		"x-forwarded-token":   jwtMasked,
		"x-secret":            "s3cr3t", // only a policy hides this one
		"user-agent":          "curl/8.0",
	} {
		if headers[name] != want {
			t.Errorf("header %s = %v, want %q", name, headers[name], want)
		}
	}
	if want := "/orders?access_token=" + jwtMasked + "&page=2"; http["path"] != want {
		t.Errorf("path = %v, want %q", http["path"], want)
	}
	if got := lookup(in, "parsed_query", "access_token"); !reflect.DeepEqual(got, []any{jwtMasked}) {
		t.Errorf("parsed_query.access_token = %v, want [%s]", got, jwtMasked)
	}
	wantMasked := []any{
		"/input/attributes/request/http/headers/authorization",
		"/input/attributes/request/http/headers/proxy-authorization",
		"/input/attributes/request/http/headers/x-forwarded-token",
		"/input/attributes/request/http/path",
		"/input/parsed_query/access_token/0",
	}
	if !reflect.DeepEqual(r["masked"], wantMasked) {
		t.Errorf("masked = %v\nwant     %v", r["masked"], wantMasked)
	}
	// The Logger masked its own copy, not the caller's input.
	orig, err := clone(e.Input)
	if err != nil {
		t.Fatal(err)
	}
	if got := lookup(orig, "attributes", "request", "http", "headers", "authorization"); got != "Bearer "+testJWT {
		t.Errorf("the caller's input was modified: authorization = %v", got)
	}
}

func TestRedactJWTString(t *testing.T) {
	h, p, _ := strings.Cut(testJWT, ".")
	p, _, _ = strings.Cut(p, ".")
	tests := []struct {
		name string
		in   string
		want string
	}{
		{name: "bare token", in: testJWT, want: jwtMasked},
		{name: "bearer", in: "Bearer " + testJWT, want: "Bearer " + jwtMasked},
		{name: "two tokens", in: "a=" + testJWT + "; b=" + testJWT, want: "a=" + jwtMasked + "; b=" + jwtMasked},
		{name: "sentence dot", in: "token " + testJWT + ".", want: "token " + jwtMasked + "."},
		{name: "host name", in: "api.example.com", want: "api.example.com"},
		{name: "header not JSON", in: "YWJj.ZGVm.Z2hp", want: "YWJj.ZGVm.Z2hp"},
		{name: "header without alg", in: "eyJ0eXAiOiJKV1QifQ." + p + ".c2ln", want: "eyJ0eXAiOiJKV1QifQ." + p + ".c2ln"},
		{name: "unsigned", in: h + "." + p + ".", want: h + "." + p + "."},
		{name: "five segments (JWE)", in: h + "." + p + ".a.b.c", want: h + "." + p + ".a.b.c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := redactJWTString(tt.in)
			if got != tt.want || changed != (tt.in != tt.want) {
				t.Errorf("redactJWTString(%q) = %q, %v; want %q", tt.in, got, changed, tt.want)
			}
		})
	}
}

func TestPolicyMask(t *testing.T) {
	h := newHarness(t, Config{Policy: `package system.log

mask contains "/input/attributes/request/http/headers/x-secret"

mask contains "/input/no/such/field"

mask contains {"op": "upsert", "path": "/input/attributes/source/address/socketAddress/address", "value": "0.0.0.0"}

mask contains {"op": "upsert", "path": "/input/extra/note", "value": {"masked_by": "policy"}}

mask contains {"op": "remove", "path": "/input/parsed_path/0"}

# The policy sees the event: mask the reason of denials only.
mask contains {"op": "upsert", "path": "/result/reason", "value": "hidden"} if not input.rampart.allowed
`})
	h.start(t)
	h.logAll(t, testEvent(t, 1, "/orders"))
	h.stopAndWait(t)

	r := decodeRecord(t, readLines(t, h.path)[0])
	in := r["input"].(map[string]any)
	if _, ok := lookup(in, "attributes", "request", "http", "headers").(map[string]any)["x-secret"]; ok {
		t.Error("x-secret is still in the input")
	}
	if got := lookup(in, "attributes", "source", "address", "socketAddress", "address"); got != "0.0.0.0" {
		t.Errorf("source address = %v, want the upserted 0.0.0.0", got)
	}
	if got := lookup(in, "extra", "note"); !reflect.DeepEqual(got, map[string]any{"masked_by": "policy"}) {
		t.Errorf("extra.note = %v, want the upserted object (parents created)", got)
	}
	if got := in["parsed_path"]; !reflect.DeepEqual(got, []any{}) {
		t.Errorf("parsed_path = %v, want its only element removed", got)
	}
	if got := lookup(r["result"], "reason"); got != "hidden" {
		t.Errorf("result.reason = %v, want hidden", got)
	}
	// OPA's order: a set's strings sort before its objects; paths that do not
	// exist are skipped and not recorded.
	wantErased := []any{
		"/input/attributes/request/http/headers/x-secret",
		"/input/parsed_path/0",
	}
	if !reflect.DeepEqual(r["erased"], wantErased) {
		t.Errorf("erased = %v\nwant     %v", r["erased"], wantErased)
	}
	masked := r["masked"].([]any)
	wantTail := []any{
		"/input/attributes/source/address/socketAddress/address",
		"/input/extra/note",
		"/result/reason",
	}
	if len(masked) < len(wantTail) || !reflect.DeepEqual(masked[len(masked)-len(wantTail):], wantTail) {
		t.Errorf("masked = %v, want the built-in masks then %v", masked, wantTail)
	}
	if masked[0] != "/input/attributes/request/http/headers/authorization" {
		t.Errorf("masked[0] = %v, want the built-in authorization mask first", masked[0])
	}
}

func TestDropPolicy(t *testing.T) {
	h := newHarness(t, Config{Policy: `package system.log

drop if input.input.parsed_path == ["healthz"]
`})
	h.start(t)
	h.logAll(t,
		testEvent(t, 1, "/orders"),
		testEvent(t, 2, "/healthz"),
		testEvent(t, 3, "/orders"),
	)
	h.stopAndWait(t)

	lines := readLines(t, h.path)
	var ids []any
	for _, l := range lines {
		ids = append(ids, decodeRecord(t, l)["rampart"].(map[string]any)["request_id"])
	}
	if !reflect.DeepEqual(ids, []any{"req-1", "req-3"}) {
		t.Errorf("logged %v, want req-1 and req-3", ids)
	}
	if rep, err := Verify(h.path); err != nil || rep.LastSeq != 2 {
		t.Errorf("Verify = %+v, %v; want seq 1 and 2 (a dropped event takes no seq)", rep, err)
	}
	if got := testutil.ToFloat64(h.l.m.dropped.WithLabelValues(DropPolicy)); got != 1 {
		t.Errorf("dropped{policy} = %v, want 1 (error %v)", got, testutil.ToFloat64(h.l.m.dropped.WithLabelValues(DropError)))
	}
}

// A policy that fails leaves the event unlogged rather than unmasked.
func TestPolicyFailureDropsEvent(t *testing.T) {
	tests := []struct {
		name   string
		policy string
	}{
		{name: "path outside input and result", policy: `package system.log
mask contains "/decision_id"`},
		{name: "unknown op", policy: `package system.log
mask contains {"op": "hash", "path": "/input/x"}`},
		{name: "bad pointer escape", policy: `package system.log
mask contains "/input/a~2b"`},
		{name: "mask is not a set", policy: `package system.log
mask := "/input/x"`},
		{name: "evaluation error", policy: `package system.log
drop := true if input.path
drop := false if input.path`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{Policy: tt.policy})
			h.start(t)
			h.logAll(t, testEvent(t, 1, "/orders"))
			h.stopAndWait(t)
			if lines := readLines(t, h.path); len(lines) != 0 {
				t.Errorf("%d records written, want none", len(lines))
			}
			if got := testutil.ToFloat64(h.l.m.dropped.WithLabelValues(DropError)); got != 1 {
				t.Errorf("dropped{error} = %v, want 1", got)
			}
		})
	}
}

func TestMaskRuleApply(t *testing.T) {
	doc := func() any {
		return map[string]any{
			"a":   map[string]any{"b": "c", "k/ey": 1, "t~": 2},
			"arr": []any{"x", map[string]any{"y": "z"}, "w"},
		}
	}
	tests := []struct {
		name       string
		rule       any
		want       any
		wantErased []string
		wantMasked []string
	}{
		{name: "erase member", rule: "/input/a/b",
			want:       map[string]any{"a": map[string]any{"k/ey": 1, "t~": 2}, "arr": []any{"x", map[string]any{"y": "z"}, "w"}},
			wantErased: []string{"/input/a/b"}},
		{name: "erase escaped keys", rule: "/input/a/k~1ey",
			want:       map[string]any{"a": map[string]any{"b": "c", "t~": 2}, "arr": []any{"x", map[string]any{"y": "z"}, "w"}},
			wantErased: []string{"/input/a/k~1ey"}},
		{name: "erase array element", rule: "/input/arr/0",
			want:       map[string]any{"a": map[string]any{"b": "c", "k/ey": 1, "t~": 2}, "arr": []any{map[string]any{"y": "z"}, "w"}},
			wantErased: []string{"/input/arr/0"}},
		{name: "erase inside array", rule: "/input/arr/1/y",
			want:       map[string]any{"a": map[string]any{"b": "c", "k/ey": 1, "t~": 2}, "arr": []any{"x", map[string]any{}, "w"}},
			wantErased: []string{"/input/arr/1/y"}},
		{name: "erase whole input", rule: "/input", want: nil, wantErased: []string{"/input"}},
		{name: "erase missing", rule: "/input/a/nope", want: doc()},
		{name: "erase past a string", rule: "/input/a/b/c", want: doc()},
		{name: "array index out of range", rule: "/input/arr/3", want: doc()},
		{name: "array index not canonical", rule: "/input/arr/01", want: doc()},
		{name: "upsert creates parents", rule: map[string]any{"op": "upsert", "path": "/input/n/m", "value": "v"},
			want:       map[string]any{"a": map[string]any{"b": "c", "k/ey": 1, "t~": 2}, "arr": []any{"x", map[string]any{"y": "z"}, "w"}, "n": map[string]any{"m": "v"}},
			wantMasked: []string{"/input/n/m"}},
		{name: "upsert array element", rule: map[string]any{"op": "upsert", "path": "/input/arr/2", "value": "v"},
			want:       map[string]any{"a": map[string]any{"b": "c", "k/ey": 1, "t~": 2}, "arr": []any{"x", map[string]any{"y": "z"}, "v"}},
			wantMasked: []string{"/input/arr/2"}},
		{name: "upsert past the end of an array", rule: map[string]any{"op": "upsert", "path": "/input/arr/3", "value": "v"}, want: doc()},
		{name: "upsert whole input", rule: map[string]any{"op": "upsert", "path": "/input", "value": "gone"}, want: "gone", wantMasked: []string{"/input"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := parseMaskRules([]any{tt.rule})
			if err != nil {
				t.Fatal(err)
			}
			e := Event{Input: doc()}
			rules[0].apply(&e)
			if !reflect.DeepEqual(e.Input, tt.want) {
				t.Errorf("input = %#v\nwant    %#v", e.Input, tt.want)
			}
			if !reflect.DeepEqual(e.Erased, tt.wantErased) || !reflect.DeepEqual(e.Masked, tt.wantMasked) {
				t.Errorf("erased %v masked %v, want %v %v", e.Erased, e.Masked, tt.wantErased, tt.wantMasked)
			}
		})
	}
}

// Credentials reach a record outside the request headers too: in member names,
// in a CUSTOM provider's result (its headers, reason and body) and in the mesh
// reason, which can quote the request's path.
func TestBuiltinMaskingOutsideInputValues(t *testing.T) {
	const basic = "Basic YWxpY2U6c2VjcmV0"
	tests := []struct {
		name   string
		edit   func(e *Event)
		secret string
		// want maps a JSON pointer into the record to its expected value.
		want       map[string]any
		wantMasked []string
	}{
		{
			name: "JWT as a query parameter name",
			edit: func(e *Event) {
				lookup(e.Input, "parsed_query").(map[string]any)[testJWT] = []any{""}
			},
			secret:     testJWTSig,
			want:       map[string]any{"/input/parsed_query/" + jwtMasked: []any{""}},
			wantMasked: []string{"/input/parsed_query/" + jwtMasked},
		},
		{
			name: "provider headers in the result",
			edit: func(e *Event) {
				d := e.Result.(authz.Decision)
				d.Headers = map[string]string{"Authorization": "Bearer " + testJWT, "proxy-authorization": basic, "x-user": "alice"}
				e.Result = d
			},
			secret: "YWxpY2U6c2VjcmV0",
			want: map[string]any{
				"/result/headers/Authorization":       Redacted,
				"/result/headers/proxy-authorization": Redacted,
				"/result/headers/x-user":              "alice",
			},
			wantMasked: []string{"/result/headers/Authorization", "/result/headers/proxy-authorization"},
		},
		{
			name: "provider reason and body quote tokens",
			edit: func(e *Event) {
				d := e.Result.(authz.Decision)
				d.Reason = "token " + testJWT + " expired"
				d.Body = "bad credentials: " + basic
				e.Result = d
				e.Rampart.Reason = d.Reason
			},
			secret: testJWTSig,
			want: map[string]any{
				"/result/reason":  "token " + jwtMasked + " expired",
				"/result/body":    "bad credentials: " + Redacted,
				"/rampart/reason": "token " + jwtMasked + " expired",
			},
			wantMasked: []string{"/rampart/reason", "/result/body", "/result/reason"},
		},
		{
			name: "bad-request reason quotes the path",
			edit: func(e *Event) {
				e.Rampart.Reason = `bad request: path "/a#b?access_token=` + testJWT + `"`
			},
			secret:     testJWTSig,
			want:       map[string]any{"/rampart/reason": `bad request: path "/a#b?access_token=` + jwtMasked + `"`},
			wantMasked: []string{"/rampart/reason"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			e := testEvent(t, 1, "/orders")
			in, err := clone(e.Input)
			if err != nil {
				t.Fatal(err)
			}
			e.Input = in
			tt.edit(&e)
			h.start(t)
			h.logAll(t, e)
			h.stopAndWait(t)
			raw, err := os.ReadFile(h.path)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{tt.secret, testJWTSig, "YWxpY2U6c2VjcmV0"} {
				if bytes.Contains(raw, []byte(s)) {
					t.Errorf("the record contains the secret %q:\n%s", s, raw)
				}
			}
			r := decodeRecord(t, raw)
			for ptr, want := range tt.want {
				var parts []string
				for _, p := range strings.Split(ptr[1:], "/") {
					p, _ = unescapePointer(p)
					parts = append(parts, p)
				}
				if got := lookup(r, parts...); !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %#v, want %#v", ptr, got, want)
				}
			}
			masked := map[string]bool{}
			for _, m := range r["masked"].([]any) {
				masked[m.(string)] = true
			}
			for _, m := range tt.wantMasked {
				if !masked[m] {
					t.Errorf("masked %v lacks %s", r["masked"], m)
				}
			}
		})
	}
}

func TestEscapeKey(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{name: "valid", in: `role\x`, want: `role\x`},
		{name: "invalid byte", in: "role\xff", want: `role\xff`},
		{name: "invalid byte and backslash", in: "a\\\xfe", want: `a\\\xfe`},
		{name: "valid multibyte kept", in: "é\xff", want: `é\xff`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := escapeKey(tt.in); got != tt.want {
				t.Errorf("escapeKey(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// Member names that are not valid UTF-8 would all encode as U+FFFD: they are
// escaped instead, and a name that is taken gets a suffix, so a record never
// holds two members of the same name.
func TestInvalidUTF8KeysStayDistinct(t *testing.T) {
	h := newHarness(t, Config{})
	e := testEvent(t, 1, "/orders")
	in, err := clone(e.Input)
	if err != nil {
		t.Fatal(err)
	}
	e.Input = in
	q := lookup(e.Input, "parsed_query").(map[string]any)
	q["role\xff"] = []any{"admin"}
	q["role\xfe"] = []any{"guest"}
	q[`role\xfe`] = []any{"literal"} // what "role\xfe" escapes to
	d := e.Result.(authz.Decision)
	d.Headers = map[string]string{"x-a\xff": "1", "x-a\xfe": "2"}
	e.Result = d
	h.start(t)
	h.logAll(t, e)
	h.stopAndWait(t)

	line := readLines(t, h.path)[0]
	if bytes.Contains(line, []byte(`\ufffd`)) {
		t.Errorf("the record has names encoded as U+FFFD: %s", line)
	}
	r := decodeRecord(t, line)
	wantQuery := map[string]any{
		`role\xff`:   []any{"admin"},
		`role\xfe`:   []any{"literal"},
		`role\xfe#2`: []any{"guest"},
	}
	for k, want := range wantQuery {
		if got := lookup(r, "input", "parsed_query", k); !reflect.DeepEqual(got, want) {
			t.Errorf("parsed_query[%q] = %v, want %v", k, got, want)
		}
	}
	wantHeaders := map[string]any{`x-a\xff`: "1", `x-a\xfe`: "2"}
	if got := lookup(r, "result", "headers"); !reflect.DeepEqual(got, wantHeaders) {
		t.Errorf("result.headers = %v, want %v", got, wantHeaders)
	}
	// No duplicate member names anywhere: decoding into a map loses none.
	if n := bytes.Count(line, []byte(`"role`)); n != 3 {
		t.Errorf("%d parsed_query members named role…, want 3: %s", n, line)
	}
}

// Header lists in the result (a provider's header changes) are masked like
// header maps; the list's shape is generic JSON, whatever type produced it.
func TestBuiltinMaskingHeaderLists(t *testing.T) {
	e := Event{
		Result: map[string]any{
			"append_headers": []any{
				map[string]any{"Name": "Authorization", "Value": "Basic YWxpY2U6c2VjcmV0"},
				map[string]any{"Name": "x-user", "Value": "alice"},
			},
			"response_headers": []any{map[string]any{"name": "proxy-authorization", "value": "Negotiate b3BhcXVlLXRva2Vu", "append": true}},
			"body":             "echo: Negotiate b3BhcXVlLXRva2Vu",
		},
	}
	maskBuiltin(&e)
	want := map[string]any{
		"append_headers": []any{
			map[string]any{"Name": "Authorization", "Value": Redacted},
			map[string]any{"Name": "x-user", "Value": "alice"},
		},
		"response_headers": []any{map[string]any{"name": "proxy-authorization", "value": Redacted, "append": true}},
		"body":             "echo: " + Redacted,
	}
	if !reflect.DeepEqual(e.Result, want) {
		t.Errorf("result = %v\nwant     %v", e.Result, want)
	}
	wantMasked := []string{"/result/append_headers/0/Value", "/result/body", "/result/response_headers/0/value"}
	if !reflect.DeepEqual(e.Masked, wantMasked) {
		t.Errorf("masked = %v, want %v", e.Masked, wantMasked)
	}
}
