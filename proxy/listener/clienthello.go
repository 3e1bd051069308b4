package listener

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// Limits of ReadClientHello, as Envoy's tls_inspector has them: 16 KiB by
// default, never more than 64 KiB.
const (
	DefaultMaxClientHello = 16 << 10
	MaxClientHelloLimit   = 64 << 10
)

// Errors of ReadClientHello. Whatever the error, the returned Conn replays
// the bytes read, so a caller may still treat the connection as opaque TCP.
var (
	ErrNotTLS              = errors.New("not a TLS ClientHello")
	ErrClientHelloTooLarge = errors.New("TLS ClientHello larger than the limit")
	ErrClientHelloTimeout  = errors.New("no complete TLS ClientHello before the deadline")
)

// errHelloRead stops the handshake once the ClientHello has been parsed.
var errHelloRead = errors.New("client hello read")

// ReadClientHello reads a connection's TLS ClientHello without answering it
// and returns the server name (SNI) the client asked for, lower case ("" if
// none). It runs crypto/tls's server handshake over a recording reader and
// stops it as soon as the ClientHello is parsed, so the parsing is the
// standard library's, nothing is written to the client, and the returned
// Conn replays every byte read. It reads at most max bytes (0: the default;
// capped at MaxClientHelloLimit) and waits at most timeout (0: no deadline
// of its own) for them.
func ReadClientHello(c net.Conn, max int, timeout time.Duration) (*Conn, string, error) {
	rc, h, err := ReadHello(c, max, timeout)
	return rc, h.ServerName, err
}

// Hello is what a ClientHello asked for.
type Hello struct {
	ServerName string   // SNI, lower case; "" if none
	ALPN       []string // the application protocols offered, in the client's order
}

// ReadHello is ReadClientHello returning the offered ALPN names too.
func ReadHello(c net.Conn, max int, timeout time.Duration) (*Conn, Hello, error) {
	if max <= 0 {
		max = DefaultMaxClientHello
	}
	max = min(max, MaxClientHelloLimit)
	if timeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	}
	rec := &recorder{Conn: c, max: max}
	var hello Hello
	srv := tls.Server(rec, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = Hello{ServerName: lower(h.ServerName), ALPN: h.SupportedProtos}
			return nil, errHelloRead
		},
	})
	err := srv.Handshake()
	replay := &Conn{Conn: c, r: bufio.NewReader(io.MultiReader(bytes.NewReader(rec.buf.Bytes()), c))}
	switch {
	case errors.Is(err, errHelloRead):
		return replay, hello, nil
	case rec.full:
		return replay, Hello{}, ErrClientHelloTooLarge
	case isTimeout(rec.err):
		return replay, Hello{}, ErrClientHelloTimeout
	}
	return replay, Hello{}, ErrNotTLS
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// recorder is the connection the aborted handshake sees: reads come from the
// client and are recorded (at most max bytes), writes (the alert crypto/tls
// sends when the handshake stops) go nowhere, and Close does not close.
type recorder struct {
	net.Conn
	buf  bytes.Buffer
	max  int
	full bool
	err  error
}

func (r *recorder) Read(p []byte) (int, error) {
	room := r.max - r.buf.Len()
	if room <= 0 {
		r.full = true
		return 0, ErrClientHelloTooLarge
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := r.Conn.Read(p)
	r.buf.Write(p[:n])
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *recorder) Write(p []byte) (int, error) { return len(p), nil }

func (r *recorder) Close() error { return nil }
