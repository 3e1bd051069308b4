// Package replay gives back a connection some of whose first bytes were
// already read (to sniff a protocol or a preface): they are read again first.
package replay

import "net"

// Conn reads Head, then the connection.
type Conn struct {
	net.Conn
	Head []byte
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(c.Head) > 0 {
		n := copy(p, c.Head)
		c.Head = c.Head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
