package authz

import (
	"context"
	"fmt"
	"sort"
	"strings"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
)

// ProviderResult is a CUSTOM provider's answer.
type ProviderResult struct {
	Allowed bool
	Status  int // for a denial; 0 means 403
	Reason  string
	// Headers, on an allowed request, replace the request's headers of the
	// same name before it goes to the app (ext_authz OkHttpResponse headers
	// without append, opa-envoy-plugin's headers); on a denial they go on the
	// response the client gets. Names are lower case.
	Headers map[string]string
	// AppendHeaders, on an allowed request, are added to the request's values
	// of the header (ext_authz headers with append set).
	AppendHeaders []Header
	// RemoveHeaders, on an allowed request, are removed from the request
	// (ext_authz headers_to_remove, opa-envoy-plugin's
	// request_headers_to_remove). The host header and pseudo-headers are
	// never removed, as in Envoy.
	RemoveHeaders []string
	// ResponseHeaders, on an allowed request, go on the response the client
	// gets (ext_authz and opa-envoy-plugin's response_headers_to_add).
	ResponseHeaders []ResponseHeader
	Body            string
}

// ResponseHeader is a header a provider adds to the response of an allowed
// request: it replaces the response's header of that name, or with Append is
// added to it. IfAbsent (ext_authz append_action ADD_IF_ABSENT) adds it only
// when the response has no header of that name; IfExists
// (OVERWRITE_IF_EXISTS) replaces it only when the response has one.
type ResponseHeader struct {
	Name, Value        string
	Append             bool
	IfAbsent, IfExists bool
}

// Provider is a CUSTOM authorization provider: an in-process Rego bundle or an
// external ext_authz server. It must fail closed unless configured otherwise.
type Provider interface {
	Check(ctx context.Context, req *Request, input ast.Value) ProviderResult
}

// StaticProvider always gives the same answer. rampartctl authz check uses it for
// external providers it does not call.
type StaticProvider struct{ Allow bool }

// Check implements Provider.
func (s StaticProvider) Check(context.Context, *Request, ast.Value) ProviderResult {
	if s.Allow {
		return ProviderResult{Allowed: true, Reason: "allowed (offline answer)"}
	}
	return ProviderResult{Allowed: false, Reason: "denied (offline answer)"}
}

// ValidStatus reports whether code is an HTTP status Envoy accepts from an
// authorization provider or as statusOnError: a value of its StatusCode enum
// (envoy.type.v3.StatusCode), as Istio and opa-envoy-plugin require.
func ValidStatus(code int) bool {
	if code < 100 || code > 599 {
		return false
	}
	_, ok := typev3.StatusCode_name[int32(code)]
	return ok
}

// check validates what a provider asks the sidecar to do: every header name
// and value must be one an HTTP message can carry, no provider may set a
// pseudo-header or x-forwarded-client-cert (the sidecar's own statement of
// the peer's identity), and a denial's status must be valid. An error makes
// the provider's answer a provider error, which denies.
func (res ProviderResult) check() error {
	if !res.Allowed && res.Status != 0 && !ValidStatus(res.Status) {
		return fmt.Errorf("invalid HTTP status %d", res.Status)
	}
	for n, v := range res.Headers {
		if err := checkProviderHeader(n, v); err != nil {
			return err
		}
	}
	for _, h := range res.AppendHeaders {
		if err := checkProviderHeader(h.Name, h.Value); err != nil {
			return err
		}
	}
	for _, h := range res.ResponseHeaders {
		if err := checkProviderHeader(h.Name, h.Value); err != nil {
			return err
		}
	}
	for _, n := range res.RemoveHeaders {
		if !validHeaderName(n) {
			return fmt.Errorf("header to remove %q is not a valid header name", n)
		}
	}
	return nil
}

// CheckProviderHeader checks a header a provider's configuration adds
// (includeAdditionalHeadersInCheck) as a provider's answers are checked.
func CheckProviderHeader(name, value string) error { return checkProviderHeader(name, value) }

func checkProviderHeader(name, value string) error {
	if !validHeaderName(name) || strings.HasPrefix(name, ":") {
		return fmt.Errorf("header name %q is not one a provider may set", name)
	}
	if strings.EqualFold(name, "x-forwarded-client-cert") {
		return fmt.Errorf("header %q is set by the sidecar only", name)
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c == '\r' || c == '\n' || c == 0 {
			return fmt.Errorf("header %s: value has a CR, LF or NUL byte", name)
		}
	}
	return nil
}

// removable reports whether a provider's removal of header name applies:
// Envoy never removes the host header or a pseudo-header.
func removable(name string) bool {
	return !strings.HasPrefix(name, ":") && !strings.EqualFold(name, "host")
}

// changesRequest reports whether res changes the request's headers.
func (res ProviderResult) changesRequest() bool {
	return len(res.Headers) > 0 || len(res.AppendHeaders) > 0 || len(res.RemoveHeaders) > 0
}

// touches reports whether res sets, appends or removes any header in names.
func (res ProviderResult) touches(names []string) bool {
	for _, n := range names {
		if _, ok := res.Headers[lower(n)]; ok || namedIn(n, res.RemoveHeaders) {
			return true
		}
		for _, h := range res.AppendHeaders {
			if strings.EqualFold(h.Name, n) {
				return true
			}
		}
	}
	return false
}

// applyTo returns r with res's request header changes applied, as Envoy's
// ext_authz filter applies them: headers set (replacing), then appended, then
// removed.
func (res ProviderResult) applyTo(r *Request) *Request {
	if !res.changesRequest() {
		return r
	}
	out := *r
	out.Headers = make([]Header, 0, len(r.Headers)+len(res.Headers)+len(res.AppendHeaders))
	for _, h := range r.Headers {
		if _, ok := res.Headers[lower(h.Name)]; ok {
			continue
		}
		if namedIn(h.Name, res.RemoveHeaders) && removable(h.Name) {
			continue
		}
		out.Headers = append(out.Headers, h)
	}
	for _, n := range sortedKeys(res.Headers) {
		if !namedIn(n, res.RemoveHeaders) {
			out.Headers = append(out.Headers, Header{Name: n, Value: res.Headers[n]})
		}
	}
	for _, h := range res.AppendHeaders {
		if !namedIn(h.Name, res.RemoveHeaders) {
			out.Headers = append(out.Headers, h)
		}
	}
	return &out
}

// normalized is res with its Headers' names in lower case, as Envoy's header
// map holds them.
func (res ProviderResult) normalized() ProviderResult {
	if len(res.Headers) == 0 {
		return res
	}
	hs := make(map[string]string, len(res.Headers))
	for _, n := range sortedKeys(res.Headers) {
		hs[lower(n)] = res.Headers[n]
	}
	res.Headers = hs
	return res
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// merge adds next's changes (an allowed answer) to res's, next's winning
// where both set a header.
func (res ProviderResult) merge(next ProviderResult) ProviderResult {
	if len(next.Headers) > 0 {
		hs := make(map[string]string, len(res.Headers)+len(next.Headers))
		for k, v := range res.Headers {
			hs[k] = v
		}
		for k, v := range next.Headers {
			hs[k] = v
		}
		res.Headers = hs
	}
	res.AppendHeaders = append(res.AppendHeaders, next.AppendHeaders...)
	res.RemoveHeaders = append(res.RemoveHeaders, next.RemoveHeaders...)
	res.ResponseHeaders = append(res.ResponseHeaders, next.ResponseHeaders...)
	return res
}
