package route

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnsupported marks configuration that is valid for Envoy but that this
// package does not implement. New refuses it rather than ignore it, so that a
// route never silently behaves differently from what the control plane sent.
var ErrUnsupported = errors.New("not supported by the rampart sidecar")

// Error is the error New returns: which route configuration, virtual host and
// route were refused, the field (a proto field path, relative to the innermost
// object named) and what is wrong with it.
type Error struct {
	Config      string // route configuration name
	VirtualHost string // virtual host name, or "#i" when unnamed; empty for configuration-level fields
	Route       string // route name and index, e.g. `"r1" (#0)` or "#3"; empty above route level
	Field       string // e.g. "match.safe_regex.regex"
	Err         error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "route configuration %q", e.Config)
	if e.VirtualHost != "" {
		fmt.Fprintf(&b, ": virtual host %s", e.VirtualHost)
	}
	if e.Route != "" {
		fmt.Fprintf(&b, ": route %s", e.Route)
	}
	if e.Field != "" {
		b.WriteString(": ")
		b.WriteString(e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// loc is where in the configuration the compiler is; it builds Errors.
type loc struct {
	config, vhost, route string
}

func (l loc) err(field string, err error) error {
	return &Error{Config: l.config, VirtualHost: l.vhost, Route: l.route, Field: field, Err: err}
}

func (l loc) errf(field, format string, args ...any) error {
	return l.err(field, fmt.Errorf(format, args...))
}

// unsupported reports a field New refuses; what says what was set.
func (l loc) unsupported(field, what string) error {
	return l.err(field, fmt.Errorf("%s: %w", what, ErrUnsupported))
}

func vhostLabel(name string, i int) string {
	if name == "" {
		return fmt.Sprintf("#%d", i)
	}
	return fmt.Sprintf("%q", name)
}

func routeLabel(name string, i int) string {
	if name == "" {
		return fmt.Sprintf("#%d", i)
	}
	return fmt.Sprintf("%q (#%d)", name, i)
}
