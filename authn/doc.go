// Package authn holds who is calling, proven two ways: the peer by its SPIFFE
// certificate (authn/peer) and, in a later issue, the end user by a JWT
// (authn/jwt). It is shared by both planes and imports neither.
package authn
