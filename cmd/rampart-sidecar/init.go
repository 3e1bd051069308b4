package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/rampart-mesh/rampart/proxy/inbound"

	"github.com/spf13/cobra"
)

// iptables chains the init command owns; re-running it replaces them.
const (
	chainOutput  = "RAMPART_OUTPUT"
	chainInbound = "RAMPART_INBOUND"
)

type initConfig struct {
	proxyUID        int
	outboundPort    int
	inboundPort     int
	inboundPorts    string
	excludeInPort   []int
	excludeOutPort  []int
	excludeOutCIDRs []string
	ipv6            string // auto, on or off
	dryRun          bool
}

// family is one IP family's rule set: its tool and its loopback range.
type family struct {
	tool     string // iptables or ip6tables
	loopback string
}

var (
	ipv4 = family{tool: "iptables", loopback: "127.0.0.0/8"}
	ipv6 = family{tool: "ip6tables", loopback: "::1/128"}
)

// ipv6Sysctl exists when the kernel has IPv6; ifInet6 lists the namespace's
// IPv6 addresses (variables for tests).
var (
	ipv6Sysctl = "/proc/sys/net/ipv6"
	ifInet6    = "/proc/net/if_inet6"
)

func newInitCmd() *cobra.Command {
	c := initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006, ipv6: "auto"}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install transparent capture (iptables REDIRECT) in this network namespace",
		Long: `Install iptables NAT rules in the current network namespace, for IPv4 and
IPv6, so that the workload's traffic passes through its sidecar without the
app knowing:

  outbound  every TCP connection the workload opens, except the sidecar's own
            (by --proxy-uid), loopback, --exclude-outbound-ports and
            --exclude-outbound-ip-ranges, is redirected to --outbound-port;
  inbound   connections to --inbound-ports (except --exclude-inbound-ports)
            arrive at --inbound-port.

The sidecar's own connections to the pod's addresses (not loopback) on a
captured inbound port are sent to --inbound-port too, so the sidecar's
--app must be a loopback address (127.0.0.0/8 or ::1) when inbound traffic is
captured, or the sidecar's forwarding to the app would come back to it (a
sidecar run with --transparent refuses to start otherwise).

IPv6: with --ipv6=auto (the default) the same rules are installed with
ip6tables whenever the kernel has IPv6, and a failure to install them is an
error: IPv6 traffic left uncaptured would reach the app without mTLS or
authorization. --ipv6=off skips them, and is refused while the namespace has
a global IPv6 address (one added later, by router advertisement, is not
captured: prefer auto). Link-local destinations (fe80::/10) are never
redirected outbound: they cannot be mesh services. Redirected IPv6 connections arrive at ::1 (outbound) or the
pod's IPv6 address (inbound), so run the sidecar's listeners on both
families: --outbound-listen :15001 --inbound-listen :15006.

The sidecar then runs with --transparent and finds where each connection was
going with SO_ORIGINAL_DST. Run it as root (or with CAP_NET_ADMIN) once per
namespace, before the app starts, like Istio's init container; it replaces the
rules it installed before. The sidecar must run as --proxy-uid.`,
		Example: `  rampart-sidecar init --proxy-uid 1337 --inbound-ports 9080
  rampart-sidecar init --inbound-ports '*' --exclude-outbound-ip-ranges 169.254.169.254/32
  rampart-sidecar init --inbound-ports '*' --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fams, err := families(c.ipv6)
			if err != nil {
				return err
			}
			for _, fam := range fams {
				rules, err := captureRules(c, fam)
				if err != nil {
					return err
				}
				if err := applyRules(cmd.OutOrStdout(), fam, rules, c.dryRun); err != nil {
					if fam == ipv6 && c.ipv6 == "auto" {
						return fmt.Errorf("%w\nthis kernel has IPv6, and IPv6 traffic left uncaptured would bypass the sidecar; where the namespace has no IPv6 address, --ipv6=off skips these rules", err)
					}
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.proxyUID, "proxy-uid", c.proxyUID, "uid the sidecar runs as; its own connections are not redirected")
	f.IntVar(&c.outboundPort, "outbound-port", c.outboundPort, "the sidecar's outbound listener port")
	f.IntVar(&c.inboundPort, "inbound-port", c.inboundPort, "the sidecar's inbound listener port")
	f.StringVar(&c.inboundPorts, "inbound-ports", "", "the app's ports to capture, comma separated, or '*' for all; empty captures no inbound traffic")
	f.IntSliceVar(&c.excludeInPort, "exclude-inbound-ports", nil, "destination ports never redirected inbound, with --inbound-ports '*': what must be reached without mTLS, e.g. the sidecar's --metrics-listen :15090 for Prometheus (an app's port listed here is reachable around the sidecar)")
	f.IntSliceVar(&c.excludeOutPort, "exclude-outbound-ports", nil, "destination ports never redirected outbound (e.g. the control plane's)")
	f.StringSliceVar(&c.excludeOutCIDRs, "exclude-outbound-ip-ranges", nil, "destination CIDRs never redirected outbound, IPv4 or IPv6, comma separated (e.g. 169.254.169.254/32)")
	f.StringVar(&c.ipv6, "ipv6", c.ipv6, "capture IPv6 too: auto (when the kernel has IPv6), on, or off (IPv6 traffic then bypasses the sidecar)")
	f.BoolVar(&c.dryRun, "dry-run", false, "print the iptables and ip6tables commands instead of running them")
	return cmd
}

// families are the IP families --ipv6 asks to capture.
func families(mode string) ([]family, error) {
	switch mode {
	case "on":
		return []family{ipv4, ipv6}, nil
	case "off":
		if _, err := os.Stat(ipv6Sysctl); err == nil {
			if _, err := os.Stat(ifInet6); err != nil {
				return nil, fmt.Errorf("--ipv6=off: cannot tell whether this namespace has IPv6 addresses (%v); leave --ipv6 at auto", err)
			}
		}
		if addr, dev := globalIPv6(); addr != "" {
			return nil, fmt.Errorf("--ipv6=off: this namespace has the IPv6 address %s on %s, whose traffic would reach the app around the sidecar; leave --ipv6 at auto (ip6tables must work) or remove the address", addr, dev)
		}
		return []family{ipv4}, nil
	case "auto":
		if _, err := os.Stat(ipv6Sysctl); err != nil {
			return []family{ipv4}, nil
		}
		return []family{ipv4, ipv6}, nil
	}
	return nil, fmt.Errorf("--ipv6: %q is not auto, on or off", mode)
}

// globalIPv6 returns one of the namespace's global-scope IPv6 addresses and
// its interface, or "" when it has none (or IPv6 at all).
func globalIPv6() (addr, dev string) {
	data, err := os.ReadFile(ifInet6)
	if err != nil {
		return "", ""
	}
	// Each line: address (32 hex digits), interface index, prefix length,
	// scope, flags, interface name. Scope 00 is global.
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 || f[3] != "00" || len(f[0]) != 32 {
			continue
		}
		raw, err := hex.DecodeString(f[0])
		if err != nil {
			continue
		}
		return netip.AddrFrom16([16]byte(raw)).String(), f[5]
	}
	return "", ""
}

// cleanupRules undo an earlier run; they fail harmlessly when there was none.
func cleanupRules() [][]string {
	return [][]string{
		nat("-D", "OUTPUT", "-p", "tcp", "-j", chainOutput),
		nat("-D", "PREROUTING", "-p", "tcp", "-j", chainInbound),
		nat("-F", chainOutput), nat("-X", chainOutput),
		nat("-F", chainInbound), nat("-X", chainInbound),
	}
}

func nat(args ...string) []string { return append([]string{"-t", "nat"}, args...) }

func validPort(p int) bool { return p > 0 && p <= 65535 }

// captureRules are fam's iptables argument lists, in order, after the cleanup.
func captureRules(c initConfig, fam family) ([][]string, error) {
	if c.proxyUID < 0 || !validPort(c.outboundPort) || !validPort(c.inboundPort) {
		return nil, errors.New("--proxy-uid, --outbound-port and --inbound-port must be valid")
	}
	rules := [][]string{nat("-N", chainInbound), nat("-N", chainOutput)}
	uid := strconv.Itoa(c.proxyUID)
	if c.inboundPorts != "" && fam == ipv4 {
		// The sidecar passes connections to the pod's other ports on to the
		// pod's address from 127.0.0.6 (Istio's inbound passthrough source):
		// those stay out of the capture below, or they would come back.
		rules = append(rules, nat("-A", chainOutput, "-s", inbound.PassthroughSource+"/32", "-o", "lo", "-j", "RETURN"))
	}
	if c.inboundPorts != "" {
		// The sidecar's own connection to its pod's address (the app calling
		// a service whose endpoint is this pod) goes over loopback and never
		// passes PREROUTING: send it to the inbound capture too, so it meets
		// mTLS and authorization rather than the app's port (Istio's
		// ISTIO_OUTPUT does the same). The sidecar's forwarding to the app
		// goes to a loopback address (--app), which stays out.
		rules = append(rules, nat("-A", chainOutput, "!", "-d", fam.loopback, "-o", "lo", "-p", "tcp", "-m", "owner", "--uid-owner", uid, "-j", chainInbound))
	}
	rules = append(rules,
		nat("-A", chainOutput, "-m", "owner", "--uid-owner", uid, "-j", "RETURN"),
		nat("-A", chainOutput, "-d", fam.loopback, "-j", "RETURN"),
	)
	for _, p := range c.excludeOutPort {
		if !validPort(p) {
			return nil, fmt.Errorf("--exclude-outbound-ports: %d is not a port", p)
		}
		rules = append(rules, nat("-A", chainOutput, "-p", "tcp", "--dport", strconv.Itoa(p), "-j", "RETURN"))
	}
	for _, s := range c.excludeOutCIDRs {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--exclude-outbound-ip-ranges: %q is not a CIDR (want e.g. 10.0.0.0/8 or fd00::/8)", s)
		}
		if pfx.Addr().Is4() != (fam == ipv4) {
			continue // the other family's
		}
		rules = append(rules, nat("-A", chainOutput, "-d", pfx.Masked().String(), "-j", "RETURN"))
	}
	if fam == ipv6 {
		// A redirected link-local connection would arrive at ::1 from a socket
		// scoped to its interface, and fail; it cannot be a mesh service.
		rules = append(rules, nat("-A", chainOutput, "-d", "fe80::/10", "-j", "RETURN"))
	}
	rules = append(rules,
		nat("-A", chainOutput, "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.outboundPort)),
		nat("-A", "OUTPUT", "-p", "tcp", "-j", chainOutput),
	)
	redirectIn := func(match ...string) []string {
		return nat(append(append([]string{"-A", chainInbound, "-p", "tcp"}, match...), "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.inboundPort))...)
	}
	switch c.inboundPorts {
	case "":
	case "*":
		for _, p := range c.excludeInPort {
			if !validPort(p) {
				return nil, fmt.Errorf("--exclude-inbound-ports: %d is not a port", p)
			}
			rules = append(rules, nat("-A", chainInbound, "-p", "tcp", "--dport", strconv.Itoa(p), "-j", "RETURN"))
		}
		rules = append(rules, redirectIn("!", "-d", fam.loopback))
	default:
		excluded := map[int]bool{}
		for _, p := range c.excludeInPort {
			excluded[p] = true
		}
		for _, s := range strings.Split(c.inboundPorts, ",") {
			p, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || !validPort(p) {
				return nil, fmt.Errorf("--inbound-ports: %q is not a port", s)
			}
			if excluded[p] {
				return nil, fmt.Errorf("--inbound-ports: %d is also in --exclude-inbound-ports", p)
			}
			rules = append(rules, redirectIn("--dport", strconv.Itoa(p)))
		}
	}
	rules = append(rules, nat("-A", "PREROUTING", "-p", "tcp", "-j", chainInbound))
	return rules, nil
}

// applyRules undoes an earlier run's rules, then installs rules, with fam's tool.
func applyRules(out io.Writer, fam family, rules [][]string, dryRun bool) error {
	cleanup := cleanupRules()
	for i, r := range append(cleanup, rules...) {
		if dryRun {
			fmt.Fprintln(out, fam.tool+" "+strings.Join(r, " "))
			continue
		}
		b, err := exec.Command(fam.tool, r...).CombinedOutput()
		if err != nil && i >= len(cleanup) {
			return fmt.Errorf("%s %s: %v: %s", fam.tool, strings.Join(r, " "), err, strings.TrimSpace(string(b)))
		}
	}
	if !dryRun {
		fmt.Fprintf(out, "transparent capture installed (%s, %d rules)\n", fam.tool, len(rules))
	}
	return nil
}
