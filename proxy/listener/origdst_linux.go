package listener

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"
)

// soOriginalDst is Linux's SO_ORIGINAL_DST (netfilter, level SOL_IP) and
// IP6T_SO_ORIGINAL_DST (level SOL_IPV6), the same number: the address a
// connection was sent to before an iptables or ip6tables REDIRECT.
const soOriginalDst = 80

// OriginalDst returns where a redirected TCP connection was going, IPv4 or
// IPv6. An IPv4 connection accepted on a dual-stack socket (":15001") is
// asked at SOL_IP, as the kernel tracks it as IPv4. A connection that was not
// redirected returns its own local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: not a TCP connection")
	}
	local, ok := tc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: no local address")
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		sa4  syscall.RawSockaddrInet4
		sa6  syscall.RawSockaddrInet6
		serr error
	)
	v4 := local.IP.To4() != nil
	err = raw.Control(func(fd uintptr) {
		level, ptr, size := uintptr(syscall.SOL_IP), unsafe.Pointer(&sa4), uint32(unsafe.Sizeof(sa4))
		if !v4 {
			level, ptr, size = syscall.SOL_IPV6, unsafe.Pointer(&sa6), uint32(unsafe.Sizeof(sa6))
		}
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, level, soOriginalDst, uintptr(ptr), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		name := "SO_ORIGINAL_DST"
		if !v4 {
			name = "IP6T_SO_ORIGINAL_DST"
		}
		return netip.AddrPort{}, fmt.Errorf("original destination: getsockopt %s: %w", name, serr)
	}
	if v4 {
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), bigEndianPort(&sa4.Port)), nil
	}
	addr := netip.AddrFrom16(sa6.Addr).Unmap()
	if sa6.Scope_id != 0 && addr.Is6() {
		// A link-local destination is dialled on the interface it was bound
		// to; net.Dial takes the zone as the interface's index.
		addr = addr.WithZone(strconv.FormatUint(uint64(sa6.Scope_id), 10))
	}
	return netip.AddrPortFrom(addr, bigEndianPort(&sa6.Port)), nil
}

// bigEndianPort reads a sockaddr's port, stored in network byte order.
func bigEndianPort(p *uint16) uint16 {
	return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(p))[:])
}
