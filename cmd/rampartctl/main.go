// Command rampartctl is Rampart's CLI.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/rampart-mesh/rampart/cmd/internal/version"
	"github.com/spf13/cobra"
)

func main() {
	if err := newRoot().ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "rampartctl:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "rampartctl",
		Short: "Rampart's command-line tool",
		Long: `rampartctl operates a Rampart mesh.

Commands that work on a local mesh find it through --state-dir (default .rampart):
the CA, the join tokens and the running rampartd's admin socket all live there.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newTokenCmd(), newCACmd(), newAuthzCmd(), newAnalyzeCmd(), newAuditCmd(), newMTLSCmd(), newProxyStatusCmd(), newProxyConfigCmd(), newUpCmd(), newJWTCmd(), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "rampartctl", version.String())
		},
	}
}
