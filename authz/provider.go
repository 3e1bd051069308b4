package authz

import (
	"context"

	"github.com/open-policy-agent/opa/v1/ast"
)

// ProviderResult is a CUSTOM provider's answer.
type ProviderResult struct {
	Allowed bool
	Status  int // for a denial; 0 means 403
	Reason  string
	Headers map[string]string
	Body    string
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
