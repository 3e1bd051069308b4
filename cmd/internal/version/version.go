// Package version holds the build's version, stamped by the Makefile with
// -ldflags "-X github.com/rampart-mesh/rampart/cmd/internal/version.Version=...".
package version

import "runtime"

// Version is the release or git description of this build.
var Version = "dev"

// String is the one-line version every binary prints for --version.
func String() string { return Version + " (" + runtime.Version() + ")" }
