package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/rampart-mesh/rampart/authn/jwt"
	"github.com/rampart-mesh/rampart/authz/decisionlog"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/offline"
	"github.com/rampart-mesh/rampart/policies/source"
	"github.com/spf13/cobra"
)

func newAuthzCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "authz",
		Short: "Compile, check and test authorization policies offline",
		Long: `Work with Istio AuthorizationPolicies (and your own Rego) without a mesh.

Files are multi-document YAML, or directories of them. Objects without
metadata.namespace belong to the workload's namespace, as kubectl apply would
place them.`,
	}
	cmd.AddCommand(newAuthzCompileCmd(), newAuthzCheckCmd(), newAuthzTestCmd())
	return cmd
}

type policyFlags struct {
	files    []string
	meshFile string
}

func (p *policyFlags) add(c *cobra.Command) {
	c.Flags().StringArrayVarP(&p.files, "file", "f", nil, "policy YAML file or directory (repeatable)")
	c.Flags().StringVar(&p.meshFile, "mesh-config", "", "Istio MeshConfig YAML (rootNamespace, trustDomain, trustDomainAliases, pathNormalization, extensionProviders)")
}

func (p *policyFlags) load() ([]source.Object, compile.Mesh, string, error) {
	if len(p.files) == 0 {
		return nil, compile.Mesh{}, "", errors.New("give the policies with -f FILE (a YAML file or a directory)")
	}
	objs, err := source.ReadPaths(p.files)
	if err != nil {
		return nil, compile.Mesh{}, "", err
	}
	mesh, err := compile.Mesh{}.WithDefaults()
	dir := ""
	if p.meshFile != "" {
		data, rerr := os.ReadFile(p.meshFile)
		if rerr != nil {
			return nil, mesh, "", rerr
		}
		mesh, err = compile.ParseMesh(data)
		if err != nil {
			err = fmt.Errorf("%s: %w", p.meshFile, err)
		}
		dir = filepath.Dir(p.meshFile)
	}
	return objs, mesh, dir, err
}

func newAuthzCompileCmd() *cobra.Command {
	var pf policyFlags
	var workload, labels, outDir string
	c := &cobra.Command{
		Use:   "compile -f PATH... --workload NS/NAME [--labels k=v,...] [--out DIR]",
		Short: "Print the Rego compiled for one workload",
		Long: `Print the Rego module a workload's sidecar evaluates: one rule per policy rule,
named in comments, from every AuthorizationPolicy that applies to the workload
(root namespace, its namespace, selectors matching --labels). Validation findings
go to stderr.

With --out DIR it writes the whole bundle a sidecar loads instead: policy.rego,
the Rego library, authn.json (the RequestAuthentication rules), peer.json (the
PeerAuthentication mode, per port) and a .revision, for rampart-sidecar
--authz-bundle DIR.`,
		Example: `  rampartctl authz compile -f policies/ --workload foo/httpbin --labels app=httpbin,version=v1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, mesh, _, err := pf.load()
			if err != nil {
				return err
			}
			ns, name, ok := strings.Cut(workload, "/")
			if !ok || ns == "" || name == "" {
				return fmt.Errorf("--workload %q: want NAMESPACE/NAME", workload)
			}
			lbls, err := parseLabels(labels)
			if err != nil {
				return err
			}
			out, findings := offline.Compile(objs, mesh, compile.Workload{Namespace: ns, Name: name, Labels: lbls})
			for _, f := range findings {
				fmt.Fprintln(cmd.ErrOrStderr(), f.String())
			}
			if outDir != "" {
				rules, rf := offline.RequestAuthRules(objs, mesh, compile.Workload{Namespace: ns, Name: name, Labels: lbls})
				for _, f := range rf {
					fmt.Fprintln(cmd.ErrOrStderr(), f.String())
				}
				if rules == nil {
					rules = []jwt.Rule{}
				}
				authn, err := json.MarshalIndent(rules, "", "  ")
				if err != nil {
					return err
				}
				pas, pf := compile.DecodePeerAuthentications(objs, ns)
				peerPol, rf2 := compile.ResolvePeerPolicy(mesh, compile.Workload{Namespace: ns, Name: name, Labels: lbls}, pas)
				for _, f := range append(pf, rf2...) {
					fmt.Fprintln(cmd.ErrOrStderr(), f.String())
				}
				peerJSON, err := json.MarshalIndent(peerPol, "", "  ")
				if err != nil {
					return err
				}
				files := offline.Bundle(out, mesh, nil).Modules
				files["authn.json"] = string(authn) + "\n"
				files["peer.json"] = string(peerJSON) + "\n"
				return writeBundle(outDir, files)
			}
			_, err = io.WriteString(cmd.OutOrStdout(), out.Module)
			return err
		},
	}
	pf.add(c)
	c.Flags().StringVar(&workload, "workload", "", "the workload, NAMESPACE/NAME")
	c.Flags().StringVar(&labels, "labels", "", "the workload's labels, k=v,k2=v2")
	c.Flags().StringVar(&outDir, "out", "", "write the sidecar bundle (policy and library) to this directory")
	return c
}

// writeBundle writes the bundle's files (Rego modules and authn.json, the
// workload's RequestAuthentication rules) under dir with a content-hash revision,
// each file atomically.
func writeBundle(dir string, modules map[string]string) error {
	names := make([]string, 0, len(modules))
	for n := range modules {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		path := filepath.Join(dir, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := ca.WriteFileAtomic(path, []byte(modules[n]), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%s\x00", n, modules[n])
	}
	rev := hex.EncodeToString(h.Sum(nil))[:16]
	return ca.WriteFileAtomic(filepath.Join(dir, ".revision"), []byte(rev+"\n"), 0o644)
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels: %q is not key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

func newAuthzCheckCmd() *cobra.Command {
	var pf policyFlags
	var reqFile, decisionLog string
	var output outputFormat
	var logAllows bool
	c := &cobra.Command{
		Use:   "check -f PATH... --request REQ.yaml [--mesh-config MESH.yaml] [-o json]",
		Short: "Decide one request offline, exactly as the workload's sidecar would",
		Long: `Run the sidecar's pipeline on one request: the AuthorizationPolicies that apply
to the request's workload are validated and compiled, loaded into the same engine
a sidecar uses, and the request is decided (CUSTOM providers: in-process Rego
bundles run for real; external ext_authz servers answer request.extAuthz).

REQ.yaml (every field optional; defaults in brackets):
  workload: {namespace [default], labels {}, ip [127.0.0.1]}
  protocol [http]            http, grpc or tcp
  mtls [true]                false: plaintext, no peer identity
  source: {principal, ip}    principal as Istio writes it: cluster.local/ns/foo/sa/sleep
  remoteIp [source ip]   destinationIp [workload ip]   port [80]   sni
  method [GET]   host   path [/] (raw, may carry a query)
  headers                    map; a list value is a repeated header
  auth: {principal, claims}  a validated JWT's iss/sub and claims
  extAuthz [allow]           what an external CUSTOM provider answers
  body                       the request body, for CUSTOM providers with
                             includeRequestBodyInCheck (a longer body than
                             maxRequestBytes is a 413 unless allowPartialMessage)

The output has allowed, status (200, 400, 403, 413; 0 for TCP), policy, rule, reason,
the dry-run result and the validation findings. The exit code is 0 whatever the
decision; it is 1 only if the check could not run (with -o json, stdout then
has {"error": ..., "findings": [...]} and no decision).`,
		Example: `  rampartctl authz check -f policies/ --request req.yaml -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// With -o json, a check that cannot run still prints one JSON
			// object: its error, and no decision.
			fail := func(err error, fs ...compile.Finding) error {
				if output == outputJSON {
					if fs == nil {
						fs = []compile.Finding{}
					}
					if werr := writeJSON(cmd.OutOrStdout(), struct {
						Error    string            `json:"error"`
						Findings []compile.Finding `json:"findings"`
					}{err.Error(), fs}); werr != nil {
						return werr
					}
				}
				return err
			}
			objs, mesh, dir, err := pf.load()
			if err != nil {
				return fail(err, unreadable(err, pf.meshFile))
			}
			var req offline.RequestSpec
			if reqFile != "" {
				data, err := os.ReadFile(reqFile)
				if err != nil {
					return fail(err)
				}
				if err := offline.DecodeStrict(data, &req); err != nil {
					return fail(fmt.Errorf("%s: %w", reqFile, err))
				}
			}
			res, err := offline.Check(cmd.Context(), objs, mesh, dir, req)
			if err != nil {
				return fail(err)
			}
			if decisionLog != "" {
				if err := logDecision(cmd.Context(), decisionLog, logAllows, res); err != nil {
					return err
				}
			}
			return printCheck(cmd.OutOrStdout(), res, output)
		},
	}
	pf.add(c)
	c.Flags().StringVar(&reqFile, "request", "", "the request, REQ.yaml")
	c.Flags().StringVar(&decisionLog, "decision-log", "", "append the decision to this tamper-evident decision log (denials and dry-run hits; see --log-allows)")
	c.Flags().BoolVar(&logAllows, "log-allows", false, "with --decision-log, log allowed requests too")
	addOutputFlag(c, &output)
	return c
}

func printCheck(w io.Writer, res offline.Result, output outputFormat) error {
	if output == outputJSON {
		return writeJSON(w, res)
	}
	verdict := "DENIED"
	if res.Allowed {
		verdict = "ALLOWED"
	}
	fmt.Fprintf(w, "%s (status %d): %s\n", verdict, res.Status, res.Reason)
	if res.Policy != "" {
		fmt.Fprintf(w, "  policy: %s rules[%d]\n", res.Policy, res.Rule)
	}
	if res.NormalizedPath != "" {
		fmt.Fprintf(w, "  normalized path: %s\n", res.NormalizedPath)
	}
	if len(res.DryRun.Matches) > 0 {
		fmt.Fprintf(w, "  dry-run: would be allowed=%t; matches:", res.DryRun.Allowed)
		for _, m := range res.DryRun.Matches {
			fmt.Fprintf(w, " %s rules[%d]", m.Policy, m.Rule)
		}
		fmt.Fprintln(w)
	}
	for _, m := range res.Audit {
		fmt.Fprintf(w, "  audited by: %s rules[%d]\n", m.Policy, m.Rule)
	}
	for _, f := range res.Findings {
		fmt.Fprintf(w, "  %s\n", f.String())
	}
	return nil
}

func newAuthzTestCmd() *cobra.Command {
	var run string
	var output outputFormat
	c := &cobra.Command{
		Use:   "test CASES.yaml...",
		Short: "Run policy test cases and report pass/fail per case",
		Long: `Run policy test cases. A cases file is a YAML list of:

  - name: deny-admin-path
    source: why this is the expected behaviour (optional)
    mesh: {...MeshConfig...}          (optional)
    policies: [ {apiVersion, kind, metadata, spec}, ... ]
    request: {...REQ.yaml fields...}   (see 'rampartctl authz check --help')
    expect: {allowed: false, status: 403, policy: ns/name, findings: [AP-UNKNOWN-KEY]}

allowed is required; status, policy and findings are checked when given. The
exit code is 1 if any case fails.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			results := []offline.CaseResult{} // "[]", not null, in -o json when no case runs
			for _, file := range args {
				cases, err := offline.LoadCases(file)
				if err != nil {
					return err
				}
				for _, tc := range cases {
					if run != "" && !strings.Contains(tc.Name, run) {
						continue
					}
					results = append(results, tc.Run(context.WithoutCancel(cmd.Context()), file))
				}
			}
			failed := 0
			for _, r := range results {
				if !r.Passed {
					failed++
				}
			}
			switch output {
			case outputJSON:
				if err := writeJSON(cmd.OutOrStdout(), results); err != nil {
					return err
				}
			default:
				sort.SliceStable(results, func(i, j int) bool { return !results[i].Passed && results[j].Passed })
				for _, r := range results {
					if r.Passed {
						fmt.Fprintf(cmd.OutOrStdout(), "PASS  %s\n", r.Name)
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "FAIL  %s\n", r.Name)
					for _, f := range r.Failures {
						fmt.Fprintf(cmd.OutOrStdout(), "        %s\n", f)
					}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d cases, %d passed, %d failed\n", len(results), len(results)-failed, failed)
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d cases failed", failed, len(results))
			}
			return nil
		},
	}
	addOutputFlag(c, &output)
	c.Flags().StringVar(&run, "run", "", "only cases whose name contains this")
	return c
}

// logDecision appends one decision to a decision log, as a sidecar does.
func logDecision(ctx context.Context, path string, allows bool, res offline.Result) error {
	l, err := decisionlog.New(decisionlog.Config{Path: path, Lossless: true, LogAllows: &allows})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	if l.ShouldLog(res.Decision) {
		if err := l.Log(ctx, decisionlog.FromDecision(res.Decision, decisionlog.RequestMeta(res.Request))); err != nil {
			cancel()
			<-done
			return err
		}
	}
	cancel()
	return <-done
}
