// Package jwt validates end-user JWTs the way Istio's RequestAuthentication does
// on a sidecar (Envoy's jwt_authn filter as istiod configures it): it finds
// tokens in the configured headers, query parameters and cookies, verifies them
// against each rule's issuer, keys and audiences, and says which upstream headers
// change. It owns JWKS fetching, OpenID discovery, key caching and refresh, and a
// cache of verified tokens.
//
// Signature checks and JWK decoding are go-jose's and OpenID discovery is
// go-oidc's; this package adds Istio's location, issuer, audience, clock-skew
// and header semantics around them. The registered claims (iss, sub, aud, exp,
// nbf, iat) are read from the payload's exact keys, as jwt_verify_lib reads
// them, never through go-oidc's IDToken: its struct decode matches keys
// case-insensitively, so "SUB" or "ſub" could stand in for sub. It produces
// authn.RequestAuth and must not import the proxy, authz or any control-plane
// package.
//
// Where Istio's documentation and Envoy disagree, Envoy wins:
//   - a fromHeaders prefix missing from the header value means no token there
//     (Envoy skips the header; the API text says invalid); the prefix is
//     searched anywhere in the value and "Bearer " is case-sensitive;
//   - empty audiences means aud is not checked at all.
//
// Deliberate differences from Envoy, all stricter or equal for access:
//   - two tokens in one header location (two Authorization headers) are 401;
//   - every token in the request must be valid, across all locations (Envoy
//     checks this per provider);
//   - the signature is checked before the audience, so a forged token is 401
//     whatever its aud (Envoy checks aud first and answers 403);
//   - a key rotation that changes the key set re-verifies cached tokens;
//   - output headers are stripped from every request, CORS preflights too.
//
// Claims keep JSON numbers as json.Number. Tokens without exp are accepted, as
// in Envoy; exp and nbf are checked in whole seconds with ClockSkew.
package jwt
