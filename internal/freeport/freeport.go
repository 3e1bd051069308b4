// Package freeport picks loopback ports for processes started later.
//
// A port found by listening on :0 and closing comes from the kernel's
// ephemeral range, where any other program's next :0 listener or outgoing
// connection may take it before the process it was meant for binds it (seen
// as "address already in use" when tests run side by side). Ports here come
// from below that range, which the kernel never hands out on its own.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Loopback returns a 127.0.0.1 address that is free now, chosen at random
// below the kernel's ephemeral port range (from :0 if none there is free).
func Loopback() (string, error) {
	low := ephemeralLow()
	const floor = 10000
	if low > floor {
		for range 64 {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(floor+rand.IntN(low-floor)))
			if l, err := net.Listen("tcp", addr); err == nil {
				l.Close()
				return addr, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Port is Loopback's port.
func Port() (int, error) {
	addr, err := Loopback()
	if err != nil {
		return 0, err
	}
	_, p, _ := net.SplitHostPort(addr)
	return strconv.Atoi(p)
}

// ephemeralLow is the lowest port the kernel picks for :0 (32768 when it
// cannot tell).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n < 1024 {
		return 32768
	}
	return n
}
