//go:build !linux

package listener

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst needs Linux's netfilter; elsewhere transparent capture is not available.
func OriginalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: transparent capture needs Linux")
}
