package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spf13/cobra"
)

func newAnalyzeCmd() *cobra.Command {
	var pf policyFlags
	var output outputFormat
	var checkJWKS bool
	c := &cobra.Command{
		Use:   "analyze -f PATH... [--mesh-config MESH.yaml] [-o json]",
		Short: "Validate configuration offline and report findings with stable codes",
		Long: `Validate the configuration in the files with the same checks rampartd applies,
and print each finding with its stable code, file:line, object and field path.

Kinds checked: AuthorizationPolicy (AP-*), RequestAuthentication (RA-*),
PeerAuthentication (PA-*), VirtualService (VS-*), DestinationRule (DR-*),
ServiceEntry and WorkloadEntry (SE-*), Gateway, and Rampart's own
RateLimitPolicy (policy.rampart.dev/v1alpha1, RL-*).

With --check-jwks, every jwksUri (or OpenID discovery document) named by a
RequestAuthentication is fetched now; an issuer that cannot be reached is an
RA-JWKS-UNREACHABLE warning (sidecars keep using keys they cached).

Exit code: 0 no errors (warnings allowed), 1 at least one error.`,
		Example: `  rampartctl analyze -f deploy/examples/ -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, mesh, _, err := pf.load()
			if err != nil {
				if output == outputJSON {
					// Machine readers get JSON on stdout whatever happens.
					if werr := writeJSON(cmd.OutOrStdout(), []compile.Finding{unreadable(err, pf.meshFile)}); werr != nil {
						return werr
					}
				}
				return err
			}
			findings := analyze(objs, mesh)
			if checkJWKS {
				findings = append(findings, reachJWKS(cmd.Context(), objs)...)
			}
			sort.SliceStable(findings, func(i, j int) bool {
				if findings[i].File != findings[j].File {
					return findings[i].File < findings[j].File
				}
				return findings[i].Line < findings[j].Line
			})
			errs := 0
			for _, f := range findings {
				if f.Severity == compile.SeverityError {
					errs++
				}
			}
			if output == outputJSON {
				if findings == nil {
					findings = []compile.Finding{}
				}
				if err := writeJSON(cmd.OutOrStdout(), findings); err != nil {
					return err
				}
			} else {
				for _, f := range findings {
					fmt.Fprintln(cmd.OutOrStdout(), f.String())
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d objects, %d findings (%d errors)\n", len(objs), len(findings), errs)
			}
			if errs > 0 {
				return fmt.Errorf("%d errors", errs)
			}
			return nil
		},
	}
	pf.add(c)
	addOutputFlag(c, &output)
	c.Flags().BoolVar(&checkJWKS, "check-jwks", false, "fetch every RequestAuthentication's JWKS now and report unreachable issuers")
	return c
}

// unreadable is the finding for configuration analyze could not read: a
// file's YAML, or the mesh config.
func unreadable(err error, meshFile string) compile.Finding {
	f := compile.Finding{Code: "FILE-UNREADABLE", Severity: compile.SeverityError, Message: err.Error()}
	var fe *source.FileError
	var pe *fs.PathError
	switch {
	case errors.As(err, &fe):
		f.File, f.Line, f.Message = fe.File, fe.Line, fe.Message()
	case errors.As(err, &pe):
		f.File = pe.Path
	case meshFile != "" && strings.HasPrefix(err.Error(), meshFile+": "):
		f.File, f.Message = meshFile, strings.TrimPrefix(err.Error(), meshFile+": ")
	}
	return f
}

// analyze validates every security object; objects without a namespace are
// checked as if in "default", as kubectl apply would place them.
func analyze(objs []source.Object, mesh compile.Mesh) []compile.Finding {
	aps, fs := compile.DecodeAuthorizationPolicies(objs, "default")
	for _, p := range aps {
		fs = append(fs, compile.ValidateAuthorizationPolicy(p, mesh)...)
	}
	ras, rf := compile.DecodeRequestAuthentications(objs, "default")
	fs = append(fs, rf...)
	for _, ra := range ras {
		// JWTRules validates; attach each to a workload that selects it.
		wl := compile.Workload{Namespace: ra.Object.Namespace, Labels: ra.Spec.GetSelector().GetMatchLabels()}
		_, vf := compile.JWTRules(mesh, wl, []*compile.RequestAuthn{ra})
		fs = append(fs, vf...)
	}
	pas, pf := compile.DecodePeerAuthentications(objs, "default")
	fs = append(fs, pf...)
	for _, pa := range pas {
		wl := compile.Workload{Namespace: pa.Object.Namespace, Labels: pa.Spec.GetSelector().GetMatchLabels()}
		_, vf := compile.ResolvePeerAuthentication(mesh, wl, 0, []*compile.PeerAuthn{pa})
		fs = append(fs, vf...)
	}
	// Routing and the registry: ServiceEntry, WorkloadEntry, VirtualService,
	// DestinationRule, Gateway.
	_, nf := compile.DecodeNetworking(objs, mesh, "default")
	fs = append(fs, nf...)
	// Rampart's own kinds: RateLimitPolicy.
	_, lf := compile.DecodeRateLimitPolicies(objs, "default")
	fs = append(fs, lf...)
	return append(fs, compile.RootNamespaceFindings(objs, mesh)...)
}

func reachJWKS(ctx context.Context, objs []source.Object) []compile.Finding {
	ras, _ := compile.DecodeRequestAuthentications(objs, "default")
	client := &http.Client{Timeout: 5 * time.Second}
	var fs []compile.Finding
	for _, ra := range ras {
		for i, r := range ra.Spec.GetJwtRules() {
			url := r.GetJwksUri()
			if url == "" && r.GetJwks() == "" && r.GetIssuer() != "" {
				url = r.GetIssuer() + "/.well-known/openid-configuration"
			}
			if url == "" {
				continue
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err == nil {
				var resp *http.Response
				if resp, err = client.Do(req); err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("HTTP %d", resp.StatusCode)
					}
				}
			}
			if err != nil {
				fs = append(fs, compile.Finding{Code: "RA-JWKS-UNREACHABLE", Severity: compile.SeverityWarning,
					Object: "RequestAuthentication " + ra.Object.Namespace + "/" + ra.Object.Name, File: ra.Object.File, Line: ra.Object.Line,
					Path: fmt.Sprintf("spec.jwtRules[%d]", i), Message: fmt.Sprintf("%s: %v (sidecars keep the keys they cached; new sidecars cannot verify tokens)", url, err)})
			}
		}
	}
	return fs
}
