package main

import (
	"fmt"
	"time"

	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/ca/jointoken"
	"github.com/spf13/cobra"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens (local-mode credentials for sidecars)",
	}
	var (
		stateDir, ns, sa string
		rootNamespace    string
		ttl              time.Duration
		reusable         bool
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token bound to one identity and print it",
		Long: `Create a join token and print it on stdout.

A join token lets one sidecar get its first SVID for exactly one identity,
spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. It expires after
--ttl and is single use unless --reusable: the sidecar renews with its SVID
afterwards, and with --data-dir rejoins with it after a restart (without, a
restarted sidecar needs a new token). A request the CA refuses does not spend
the token. Only a hash of the token is stored in the state directory.

rampartd's own identity, spiffe://<trust-domain>/ns/<root-namespace>/sa/rampartd,
is refused: sidecars trust whoever holds it as their control plane.`,
		Example: `  rampartctl token create --state-dir .rampart --namespace default --service-account web > web.token`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ns == "" || sa == "" {
				return fmt.Errorf("--namespace and --service-account are required")
			}
			tok, err := jointoken.New(stateDir, nil, jointoken.WithRootNamespace(rootNamespace)).Create(ca.Identity{Namespace: ns, ServiceAccount: sa}, ttl, reusable)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&stateDir, "state-dir", ".rampart", "rampartd's state directory")
	f.StringVarP(&ns, "namespace", "n", "", "namespace of the identity")
	f.StringVar(&sa, "service-account", "", "service account of the identity")
	f.DurationVar(&ttl, "ttl", time.Hour, "how long the token may be used")
	f.BoolVar(&reusable, "reusable", false, "allow the token to be used more than once until it expires")
	f.StringVar(&rootNamespace, "root-namespace", ca.DefaultRootNamespace, "rampartd's --root-namespace, where its own identity (service account rampartd) lives; no token is made for that identity")
	cmd.AddCommand(create)
	return cmd
}
