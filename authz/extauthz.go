package authz

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// ExtAuthzConfig configures an external Envoy ext_authz gRPC CUSTOM provider
// (Istio's envoyExtAuthzGrpc).
type ExtAuthzConfig struct {
	// Conn is the connection to the authorization server.
	Conn grpc.ClientConnInterface
	// Timeout of one check; default 600 s (Istio's envoyExtAuthzGrpc.timeout).
	Timeout time.Duration
	// FailOpen allows requests when the server cannot be reached or errs.
	FailOpen bool
	// StatusOnError is the HTTP status of a request denied because the server
	// failed; default 403, and 403 too when it is not a valid status
	// (ValidStatus).
	StatusOnError int
}

// ExtAuthzProvider asks an Envoy ext_authz v3 gRPC server.
type ExtAuthzProvider struct {
	cfg    ExtAuthzConfig
	client authv3.AuthorizationClient
}

// NewExtAuthzProvider validates cfg.
func NewExtAuthzProvider(cfg ExtAuthzConfig) (*ExtAuthzProvider, error) {
	if cfg.Conn == nil {
		return nil, fmt.Errorf("ext_authz provider: Conn is required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 600 * time.Second
	}
	if cfg.StatusOnError == 0 {
		cfg.StatusOnError = 403
	}
	return &ExtAuthzProvider{cfg: cfg, client: authv3.NewAuthorizationClient(cfg.Conn)}, nil
}

// ParseStatusOnError reads Istio's statusOnError string ("" means 403).
func ParseStatusOnError(s string) (int, error) {
	if s == "" {
		return 403, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || !ValidStatus(n) {
		return 0, fmt.Errorf("statusOnError %q is not an HTTP status Envoy supports (a value of envoy.type.v3.StatusCode)", s)
	}
	return n, nil
}

// CheckRequest is the ext_authz request for r, the same attributes opa-envoy-plugin
// receives from Envoy.
func (r *Request) CheckRequest() *authv3.CheckRequest {
	addr := func(ip string, port int) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
		}}}
	}
	attrs := &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: addr(r.SourceIP, r.SourcePort), Principal: r.SourcePrincipal},
		Destination: &authv3.AttributeContext_Peer{Address: addr(r.DestinationIP, r.DestinationPort)},
	}
	if r.SNI != "" {
		attrs.TlsSession = &authv3.AttributeContext_TLSSession{Sni: r.SNI}
	}
	if r.Protocol != ProtocolTCP {
		path := r.providerPath
		if path == "" {
			// Not from the engine (which sets it with the mesh's
			// normalization): the default normalization.
			if p, q, err := NormalizePath(r.Path, ""); err == nil {
				path = r.pathWithQuery(p, q)
			} else {
				path = r.Path
			}
		}
		headers := map[string]string{}
		for _, h := range r.checkBody.withPartialHeader(r.withPseudo(strings.SplitN(path, "?", 2)[0])) {
			n := lower(h.Name)
			if prev, ok := headers[n]; ok {
				headers[n] = prev + "," + h.Value
			} else {
				headers[n] = h.Value
			}
		}
		hr := &authv3.AttributeContext_HttpRequest{
			Id: r.ID, Method: r.Method, Headers: headers, Path: path, Host: r.Host, Scheme: r.Scheme, Protocol: "HTTP/1.1",
		}
		if cb := r.checkBody; cb != nil {
			if cb.cfg.PackAsBytes {
				hr.RawBody = cb.data
			} else {
				hr.Body = string(cb.data)
			}
		}
		attrs.Request = &authv3.AttributeContext_Request{Http: hr}
	}
	return &authv3.CheckRequest{Attributes: attrs}
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// Check implements Provider. Errors and timeouts deny with StatusOnError unless
// FailOpen; so does a denial with a status Envoy does not support.
func (p *ExtAuthzProvider) Check(ctx context.Context, req *Request, _ ast.Value) ProviderResult {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	resp, err := p.client.Check(ctx, req.CheckRequest())
	if err != nil {
		if p.cfg.FailOpen {
			return ProviderResult{Allowed: true, Reason: "ext_authz failed, fail-open: " + err.Error()}
		}
		return p.failed("ext_authz failed: " + err.Error())
	}
	if codes.Code(resp.GetStatus().GetCode()) == codes.OK {
		res := ProviderResult{Allowed: true, Reason: "allowed by ext_authz", Headers: map[string]string{}}
		ok := resp.GetOkResponse()
		// A header with the append flag (deprecated, but what ext_authz
		// servers such as opa-envoy-plugin send) is appended when it is
		// true and replaces the request's header when false. Without the
		// flag, append_action says: ADD_IF_ABSENT and OVERWRITE_IF_EXISTS
		// act on the request as the provider saw it, OVERWRITE_IF_EXISTS_OR_ADD
		// replaces. APPEND_IF_EXISTS_OR_ADD, the proto's zero and so also
		// what a server that sets neither sends, replaces too, as Envoy did
		// before append_action: appending would let a client's own value of
		// the header ride in front of the provider's.
		present := map[string]bool{}
		for _, h := range req.Headers {
			present[lower(h.Name)] = true
		}
		for _, h := range ok.GetHeaders() {
			k, v := lower(h.GetHeader().GetKey()), h.GetHeader().GetValue()
			//lint:ignore SA1019 ext_authz servers (opa-envoy-plugin's included) still send append
			if a := h.GetAppend(); a != nil {
				if a.GetValue() {
					res.AppendHeaders = append(res.AppendHeaders, Header{Name: k, Value: v})
				} else {
					res.Headers[k] = v
				}
				continue
			}
			switch h.GetAppendAction() {
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				if !present[k] {
					if _, set := res.Headers[k]; !set {
						res.Headers[k] = v
					}
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				if present[k] {
					res.Headers[k] = v
				}
			default:
				res.Headers[k] = v
			}
		}
		for _, n := range ok.GetHeadersToRemove() {
			res.RemoveHeaders = append(res.RemoveHeaders, lower(n))
		}
		for _, h := range ok.GetResponseHeadersToAdd() {
			rh := ResponseHeader{Name: lower(h.GetHeader().GetKey()), Value: h.GetHeader().GetValue()}
			//lint:ignore SA1019 as above: the append flag ext_authz servers send
			if a := h.GetAppend(); a != nil {
				rh.Append = a.GetValue()
			} else {
				switch h.GetAppendAction() {
				case corev3.HeaderValueOption_ADD_IF_ABSENT:
					rh.IfAbsent = true
				case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
					rh.IfExists = true
				}
			}
			res.ResponseHeaders = append(res.ResponseHeaders, rh)
		}
		return res
	}
	res := ProviderResult{Status: 403, Reason: "denied by ext_authz: " + resp.GetStatus().GetMessage(), Headers: map[string]string{}}
	if d := resp.GetDeniedResponse(); d != nil {
		if c := int(d.GetStatus().GetCode()); c != 0 {
			if !ValidStatus(c) {
				return p.failed(fmt.Sprintf("ext_authz denied with invalid HTTP status %d", c))
			}
			res.Status = c
		}
		res.Body = d.GetBody()
		for _, h := range d.GetHeaders() {
			res.Headers[lower(h.GetHeader().GetKey())] = h.GetHeader().GetValue()
		}
	}
	return res
}

// failed is the denial of a request the server could not decide.
func (p *ExtAuthzProvider) failed(reason string) ProviderResult {
	status := p.cfg.StatusOnError
	if !ValidStatus(status) {
		status = 403
		reason += fmt.Sprintf(" (statusOnError %d is not a valid HTTP status; 403)", p.cfg.StatusOnError)
	}
	return ProviderResult{Status: status, Reason: reason}
}
