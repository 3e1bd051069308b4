package main

import (
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// iptables chains the init command owns; re-running it replaces them.
const (
	chainOutput  = "RAMPART_OUTPUT"
	chainInbound = "RAMPART_INBOUND"
)

type initConfig struct {
	proxyUID       int
	outboundPort   int
	inboundPort    int
	inboundPorts   string
	excludeOutPort []int
	dryRun         bool
}

func newInitCmd() *cobra.Command {
	c := initConfig{proxyUID: 1337, outboundPort: 15001, inboundPort: 15006}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install transparent capture (iptables REDIRECT) in this network namespace",
		Long: `Install iptables NAT rules in the current network namespace so that the
workload's traffic passes through its sidecar without the app knowing:

  outbound  every TCP connection the workload opens, except the sidecar's own
            (by --proxy-uid) and loopback, is redirected to --outbound-port;
  inbound   connections to --inbound-ports arrive at --inbound-port.

The sidecar's own connections to the pod's addresses (not 127.0.0.1) on a
captured inbound port are sent to --inbound-port too, so the sidecar's
--app must be a loopback address (127.0.0.0/8) when inbound traffic is
captured, or the sidecar's forwarding to the app would come back to it.

The sidecar then runs with --transparent and finds where each connection was
going with SO_ORIGINAL_DST. Run it as root (or with CAP_NET_ADMIN) once per
namespace, before the app starts, like Istio's init container; it replaces the
rules it installed before. The sidecar must run as --proxy-uid.`,
		Example: `  rampart-sidecar init --proxy-uid 1337 --inbound-ports 9080
  rampart-sidecar init --inbound-ports '*' --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rules, err := captureRules(c)
			if err != nil {
				return err
			}
			return applyRules(cmd.OutOrStdout(), rules, c.dryRun)
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.proxyUID, "proxy-uid", c.proxyUID, "uid the sidecar runs as; its own connections are not redirected")
	f.IntVar(&c.outboundPort, "outbound-port", c.outboundPort, "the sidecar's outbound listener port")
	f.IntVar(&c.inboundPort, "inbound-port", c.inboundPort, "the sidecar's inbound listener port")
	f.StringVar(&c.inboundPorts, "inbound-ports", "", "the app's ports to capture, comma separated, or '*' for all; empty captures no inbound traffic")
	f.IntSliceVar(&c.excludeOutPort, "exclude-outbound-ports", nil, "destination ports never redirected (e.g. the control plane's)")
	f.BoolVar(&c.dryRun, "dry-run", false, "print the iptables commands instead of running them")
	return cmd
}

// captureRules are the iptables argument lists, in order.
func captureRules(c initConfig) ([][]string, error) {
	if c.proxyUID < 0 || c.outboundPort <= 0 || c.outboundPort > 65535 || c.inboundPort <= 0 || c.inboundPort > 65535 {
		return nil, errors.New("--proxy-uid, --outbound-port and --inbound-port must be valid")
	}
	nat := func(args ...string) []string { return append([]string{"-t", "nat"}, args...) }
	rules := [][]string{
		// Start clean: unhook and drop the chains of an earlier run (errors ignored).
		nat("-D", "OUTPUT", "-p", "tcp", "-j", chainOutput),
		nat("-D", "PREROUTING", "-p", "tcp", "-j", chainInbound),
		nat("-F", chainOutput), nat("-X", chainOutput),
		nat("-F", chainInbound), nat("-X", chainInbound),
		nat("-N", chainInbound),
		nat("-N", chainOutput),
	}
	uid := strconv.Itoa(c.proxyUID)
	if c.inboundPorts != "" {
		// The sidecar's own connection to its pod's address (the app calling
		// a service whose endpoint is this pod) goes over loopback and never
		// passes PREROUTING: send it to the inbound capture too, so it meets
		// mTLS and authorization rather than the app's port (Istio's
		// ISTIO_OUTPUT does the same). The sidecar's forwarding to the app
		// goes to a loopback address (--app), which stays out.
		rules = append(rules, nat("-A", chainOutput, "!", "-d", "127.0.0.0/8", "-o", "lo", "-p", "tcp", "-m", "owner", "--uid-owner", uid, "-j", chainInbound))
	}
	rules = append(rules,
		nat("-A", chainOutput, "-m", "owner", "--uid-owner", uid, "-j", "RETURN"),
		nat("-A", chainOutput, "-d", "127.0.0.0/8", "-j", "RETURN"),
	)
	for _, p := range c.excludeOutPort {
		if p <= 0 || p > 65535 {
			return nil, fmt.Errorf("--exclude-outbound-ports: %d is not a port", p)
		}
		rules = append(rules, nat("-A", chainOutput, "-p", "tcp", "--dport", strconv.Itoa(p), "-j", "RETURN"))
	}
	rules = append(rules,
		nat("-A", chainOutput, "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.outboundPort)),
		nat("-A", "OUTPUT", "-p", "tcp", "-j", chainOutput),
	)
	switch c.inboundPorts {
	case "":
	case "*":
		rules = append(rules, nat("-A", chainInbound, "-p", "tcp", "!", "-d", "127.0.0.0/8", "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.inboundPort)))
	default:
		for _, s := range strings.Split(c.inboundPorts, ",") {
			p, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || p <= 0 || p > 65535 {
				return nil, fmt.Errorf("--inbound-ports: %q is not a port", s)
			}
			rules = append(rules, nat("-A", chainInbound, "-p", "tcp", "--dport", strconv.Itoa(p), "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.inboundPort)))
		}
	}
	rules = append(rules, nat("-A", "PREROUTING", "-p", "tcp", "-j", chainInbound))
	return rules, nil
}

func applyRules(out io.Writer, rules [][]string, dryRun bool) error {
	for i, r := range rules {
		cleanup := i < 6 // the first six undo an earlier run and may fail
		if dryRun {
			fmt.Fprintln(out, "iptables "+strings.Join(r, " "))
			continue
		}
		b, err := exec.Command("iptables", r...).CombinedOutput()
		if err != nil && !cleanup {
			return fmt.Errorf("iptables %s: %v: %s", strings.Join(r, " "), err, strings.TrimSpace(string(b)))
		}
	}
	if !dryRun {
		fmt.Fprintf(out, "transparent capture installed (%d rules)\n", len(rules)-6)
	}
	return nil
}
