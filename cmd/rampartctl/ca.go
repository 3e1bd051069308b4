package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/policies/controlplane"
	"github.com/spf13/cobra"
)

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Inspect the mesh CA and rotate its root",
	}
	var stateDir string
	var output outputFormat
	addStateDir := func(c *cobra.Command) {
		c.Flags().StringVar(&stateDir, "state-dir", ".rampart", "rampartd's state directory")
	}
	root := &cobra.Command{
		Use:   "root",
		Short: "Print the trusted root certificate(s) as PEM",
		Long:  "Print every root in the trust bundle as PEM (two during a rotation). Give it to sidecars with --root-cert.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			roots, err := ca.ReadRoots(stateDir)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(ca.EncodeCertsPEM(roots))
			return err
		},
	}
	bundle := &cobra.Command{
		Use:   "bundle",
		Short: "Print the SPIFFE trust bundle (JWKS JSON)",
		Long: `Print the trust bundle in SPIFFE bundle format: a JWKS whose keys are the X.509
roots ("use": "x509-svid", with "x5c") and the JWT-SVID signing keys ("use":
"jwt-svid", with "kid"), plus spiffe_sequence and spiffe_refresh_hint.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := adminGet(cmd.Context(), stateDir, "/ca/bundle")
			if errors.Is(err, errNotRunning) {
				data, err = readBundleOffline(stateDir)
			}
			if err != nil {
				return err
			}
			var pretty any
			if err := json.Unmarshal(data, &pretty); err != nil {
				return err
			}
			return writeJSON(cmd.OutOrStdout(), pretty)
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the rotation phase, the roots and their expiries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st ca.Status
			data, err := adminGet(cmd.Context(), stateDir, "/ca/status")
			switch {
			case errors.Is(err, errNotRunning):
				if st, err = ca.ReadStatus(stateDir); err != nil {
					return err
				}
			case err != nil:
				return err
			default:
				if err := json.Unmarshal(data, &st); err != nil {
					return err
				}
			}
			return printStatus(cmd.OutOrStdout(), st, output)
		},
	}
	addOutputFlag(status, &output)
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Start a root rotation on the running rampartd",
		Long: `Start a root rotation. rampartd then, on its own:
  1. Prepared: creates a new root and publishes it in the bundle beside the old one;
  2. Switched: after the propagation delay (--rotation-propagation), signs with the new root;
  3. Idle: once every SVID the old root signed has expired, removes it from the bundle.
Sidecars fetch the bundle at its refresh hint and renew at half their SVID's life,
so no handshake fails on the way. Follow it with 'rampartctl ca status'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, code, err := adminDo(cmd.Context(), stateDir, http.MethodPost, "/ca/rotate")
			if err != nil {
				return err
			}
			if code != http.StatusOK {
				var e struct{ Error string }
				_ = json.Unmarshal(data, &e)
				return fmt.Errorf("rotate: %s", e.Error)
			}
			var st ca.Status
			if err := json.Unmarshal(data, &st); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "root rotation started")
			return printStatus(cmd.OutOrStdout(), st, output)
		},
	}
	addOutputFlag(rotate, &output)
	for _, c := range []*cobra.Command{root, bundle, status, rotate} {
		addStateDir(c)
		cmd.AddCommand(c)
	}
	return cmd
}

func printStatus(w io.Writer, st ca.Status, output outputFormat) error {
	if output == outputJSON {
		return writeJSON(w, st)
	}
	fmt.Fprintf(w, "trust domain:    %s\nphase:           %s\nbundle sequence: %d\n", st.TrustDomain, st.Phase, st.Sequence)
	if st.External {
		fmt.Fprintln(w, "signing CA:      operator-supplied")
	}
	if st.NextAt != nil {
		fmt.Fprintf(w, "next:            %s at %s (in %s)\n", st.Next, st.NextAt.Format(time.RFC3339), time.Until(*st.NextAt).Round(time.Second))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GENERATION\tSTATE\tSERIAL\tNOT AFTER\tSUBJECT")
	for _, r := range st.Roots {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", r.Generation, r.State, short(r.Serial), r.NotAfter.Format(time.RFC3339), r.Subject)
	}
	return tw.Flush()
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

var errNotRunning = errors.New("rampartd is not running")

func adminClient(stateDir string) *http.Client {
	sock := controlplane.AdminSocketPath(stateDir)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

func adminDo(ctx context.Context, stateDir, method, path string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://rampartd"+path, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := adminClient(stateDir).Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, 0, fmt.Errorf("%w: no admin socket at %s (start rampartd with --state-dir %s)", errNotRunning, controlplane.AdminSocketPath(stateDir), stateDir)
		}
		return nil, 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return data, resp.StatusCode, err
}

// proxyGet reads a proxy endpoint from rampartd: through the admin socket in
// stateDir, or from server's monitoring port (/debug/...) when server is set.
func proxyGet(ctx context.Context, stateDir, server, path string) ([]byte, error) {
	if server == "" {
		return adminGet(ctx, stateDir, path)
	}
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(server, "/")+"/debug"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("--server %s: %w", server, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d: %s", req.URL, resp.StatusCode, data)
	}
	return data, nil
}

func adminGet(ctx context.Context, stateDir, path string) ([]byte, error) {
	data, code, err := adminDo(ctx, stateDir, http.MethodGet, path)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d: %s", path, code, data)
	}
	return data, nil
}

// readBundleOffline builds the bundle from the state directory while rampartd is down.
func readBundleOffline(stateDir string) ([]byte, error) {
	b, err := ca.ReadBundle(stateDir)
	if err != nil {
		return nil, err
	}
	return b.Marshal()
}
