package listener

import (
	"bufio"
	"errors"
	"io"
	"net"
	"time"
)

// Kinds of first bytes.
const (
	KindTLS       = "tls"       // a TLS ClientHello record
	KindPlaintext = "plaintext" // anything else
)

// MaxSniff is how many bytes Sniff may look at.
const MaxSniff = 5

// ErrSniffTimeout means the client sent nothing within the sniffing deadline.
var ErrSniffTimeout = errors.New("no bytes from the client before the sniffing deadline")

// ClassifyPrefix decides from the first bytes of a connection whether the client
// speaks TLS: a TLS record header is content type 22 (handshake), version major 3,
// and a record length no larger than 2^14+2048. Fewer than MaxSniff bytes are
// enough to rule TLS out, and ok is false only when more bytes are needed.
func ClassifyPrefix(b []byte) (kind string, ok bool) {
	if len(b) == 0 {
		return "", false
	}
	if b[0] != 0x16 {
		return KindPlaintext, true
	}
	if len(b) < 2 {
		return "", false
	}
	if b[1] != 0x03 {
		return KindPlaintext, true
	}
	if len(b) < MaxSniff {
		return "", false
	}
	if n := int(b[3])<<8 | int(b[4]); n == 0 || n > 1<<14+2048 {
		return KindPlaintext, true
	}
	return KindTLS, true
}

// Conn is a connection whose first bytes have been read but not consumed.
type Conn struct {
	net.Conn
	r *bufio.Reader
}

// Read reads through the sniffing buffer.
func (c *Conn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection underneath when it can, else closes
// it, so Splice passes a half-close through a sniffed connection.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Sniff reads the first bytes of c (waiting at most timeout) and says whether the
// client speaks TLS. The returned Conn replays those bytes, so the TLS server or
// the HTTP server that takes over sees the stream from its start.
func Sniff(c net.Conn, timeout time.Duration) (*Conn, string, error) {
	br := bufio.NewReaderSize(c, 4096)
	if timeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	}
	for n := 1; n <= MaxSniff; n++ {
		b, err := br.Peek(n)
		if kind, ok := ClassifyPrefix(b); ok {
			return &Conn{Conn: c, r: br}, kind, nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, "", ErrSniffTimeout
			}
			if errors.Is(err, io.EOF) && len(b) > 0 {
				// A short plaintext request ("\x16\x03") is still plaintext.
				return &Conn{Conn: c, r: br}, KindPlaintext, nil
			}
			return nil, "", err
		}
	}
	return &Conn{Conn: c, r: br}, KindPlaintext, nil
}

// httpStarts are how an HTTP/1 request line (its method and a space) and the
// HTTP/2 connection preface begin.
var httpStarts = []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ", "TRACE ", "PATCH ", "PRI * HTTP/2.0\r\n"}

// ClassifyHTTP says whether b, a connection's first bytes, begins an HTTP/1
// request or the HTTP/2 preface. ok is false while b could still become one
// (a prefix of "DELETE ", say): the caller needs more bytes.
func ClassifyHTTP(b []byte) (isHTTP, ok bool) {
	if len(b) == 0 {
		return false, false
	}
	undecided := false
	for _, s := range httpStarts {
		n := min(len(b), len(s))
		if string(b[:n]) == s[:n] {
			if n == len(s) {
				return true, true
			}
			undecided = true
		}
	}
	return false, !undecided
}

// SniffHTTP reads a connection's first bytes and says whether the client
// speaks HTTP, the way Istio detects the protocol of a port it has no name or
// appProtocol for. It waits only while the bytes so far could still begin an
// HTTP request, and at most timeout: a client that sends nothing by then (a
// protocol where the server speaks first) is not HTTP. The returned Conn
// replays the bytes read.
func SniffHTTP(c net.Conn, timeout time.Duration) (*Conn, bool, error) {
	br := bufio.NewReaderSize(c, 4096)
	if timeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	}
	conn := &Conn{Conn: c, r: br}
	n := 1
	for {
		b, err := br.Peek(n)
		if len(b) > 0 {
			b, _ = br.Peek(br.Buffered())
		}
		if isHTTP, ok := ClassifyHTTP(b); ok {
			return conn, isHTTP, nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, io.EOF) {
				return conn, false, nil
			}
			return nil, false, err
		}
		n = len(b) + 1
	}
}
