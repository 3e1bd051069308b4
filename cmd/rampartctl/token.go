package main

import (
	"errors"
	"fmt"
	"path/filepath"
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
is refused: sidecars trust whoever holds it as their control plane. The root
namespace is the one rampartd last started with on --state-dir (recorded in
<state-dir>/ca/state.json), else rampart-system; --root-namespace, if given,
must agree with the recorded one.`,
		Example: `  rampartctl token create --state-dir .rampart --namespace default --service-account web > web.token`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ns == "" || sa == "" {
				return fmt.Errorf("--namespace and --service-account are required")
			}
			rootNS, err := tokenRootNamespace(stateDir, rootNamespace)
			if err != nil {
				return err
			}
			tok, err := jointoken.New(stateDir, nil, jointoken.WithRootNamespace(rootNS)).Create(ca.Identity{Namespace: ns, ServiceAccount: sa}, ttl, reusable)
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
	f.StringVar(&rootNamespace, "root-namespace", "", "rampartd's --root-namespace, where its own identity (service account rampartd) lives; no token is made for that identity (default: the one rampartd last started with on --state-dir, else "+ca.DefaultRootNamespace+")")
	cmd.AddCommand(create)
	return cmd
}

// tokenRootNamespace is the root namespace whose rampartd identity gets no
// token: the one rampartd recorded in stateDir, which flag (if set) must
// equal, else flag, else the default (no CA yet, or a state directory from
// before the record).
func tokenRootNamespace(stateDir, flag string) (string, error) {
	recorded, err := ca.ReadRootNamespace(stateDir)
	if err != nil && !errors.Is(err, ca.ErrNoState) {
		return "", fmt.Errorf("read the root namespace rampartd started with: %w", err)
	}
	switch {
	case flag != "" && recorded != "" && flag != recorded:
		return "", fmt.Errorf("--root-namespace %q is not %q, the root namespace rampartd last started with on %s (recorded in %s): drop --root-namespace, or restart rampartd with --root-namespace %s first",
			flag, recorded, stateDir, filepath.Join(stateDir, "ca", "state.json"), flag)
	case flag != "":
		return flag, nil
	case recorded != "":
		return recorded, nil
	}
	return ca.DefaultRootNamespace, nil
}
