// Package ca owns Rampart's certificate authority: the root (or operator-supplied
// intermediate) keys, signing CSRs into X.509-SVIDs and JWT-SVIDs, root rotation and
// the SPIFFE trust bundle.
//
// It is shared by both planes for its types and PEM helpers, but the signing
// Authority is only ever constructed by the control plane. It must not import
// anything under proxy/ or policies/.
package ca
