// Package jwt validates end-user JWTs the way Istio's RequestAuthentication does
// on a sidecar (Envoy's jwt_authn filter as istiod configures it): it finds
// tokens in the configured headers, query parameters and cookies, verifies them
// against each rule's issuer, keys and audiences, and says which upstream headers
// change. It owns JWKS fetching, OpenID discovery, key caching and refresh, and a
// cache of verified tokens.
//
// Signature checks, JWKS key decoding and discovery are go-oidc's and go-jose's;
// this package adds Istio's location, issuer, audience, clock-skew and header
// semantics around them. It produces authn.RequestAuth and must not import the
// proxy, authz or any control-plane package.
package jwt
