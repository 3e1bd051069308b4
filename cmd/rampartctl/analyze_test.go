package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/rampart-mesh/rampart/policies/compile"
)

// analyze -o json prints JSON on stdout even when it cannot read the
// configuration: one FILE-UNREADABLE error naming the file and, where the
// parser gives one, the line; the exit is still an error.
func TestAnalyzeJSONOnUnreadableConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	noKind := filepath.Join(dir, "nokind.yaml")
	if err := os.WriteFile(noKind, []byte("# x\n\nmetadata: {name: a}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mesh := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(mesh, []byte("rootNamespace: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		args       []string
		file       string
		line       int
		msgContain string
	}{
		{"yaml syntax", []string{"-f", bad}, bad, 6, "did not find expected"},
		{"no kind", []string{"-f", noKind}, noKind, 3, "without apiVersion and kind"},
		{"missing file", []string{"-f", filepath.Join(dir, "none.yaml")}, filepath.Join(dir, "none.yaml"), 0, "no such file"},
		{"bad mesh config", []string{"-f", good, "--mesh-config", mesh}, mesh, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			cmd := newAnalyzeCmd()
			cmd.SetOut(&out)
			cmd.SetErr(&errOut)
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			cmd.SetArgs(append(tt.args, "-o", "json"))
			if err := cmd.Execute(); err == nil {
				t.Fatal("analyze succeeded on unreadable configuration")
			}
			var fs []compile.Finding
			if err := json.Unmarshal(out.Bytes(), &fs); err != nil {
				t.Fatalf("stdout is not a JSON list of findings: %v\n%s", err, out.String())
			}
			if len(fs) != 1 || fs[0].Code != "FILE-UNREADABLE" || fs[0].Severity != compile.SeverityError ||
				fs[0].File != tt.file || fs[0].Line != tt.line || !bytes.Contains([]byte(fs[0].Message), []byte(tt.msgContain)) || fs[0].Message == "" {
				t.Errorf("findings = %+v; want one FILE-UNREADABLE error at %s:%d mentioning %q", fs, tt.file, tt.line, tt.msgContain)
			}
		})
	}
}

// authz check -o json that cannot run prints its error as JSON, with the
// unreadable file as a finding, and no decision a reader could take for one.
func TestAuthzCheckJSONOnUnreadableConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	req := filepath.Join(dir, "req.yaml")
	if err := os.WriteFile(req, []byte("method: GET\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	badReq := filepath.Join(dir, "badreq.yaml")
	if err := os.WriteFile(badReq, []byte("methd: GET\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, file, req, wantErr string
		findings                 int
	}{
		{"policy file", bad, req, "did not find expected", 1},
		{"request file", filepath.Join(dir, "empty.yaml"), badReq, "methd", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			cmd := newAuthzCheckCmd()
			cmd.SetOut(&out)
			cmd.SetErr(&bytes.Buffer{})
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			cmd.SetArgs([]string{"-f", tt.file, "--request", tt.req, "-o", "json"})
			if err := cmd.Execute(); err == nil {
				t.Fatal("check succeeded")
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatalf("stdout is not one JSON object: %v\n%s", err, out.String())
			}
			var fs []compile.Finding
			_ = json.Unmarshal(got["findings"], &fs)
			if _, ok := got["allowed"]; ok || !bytes.Contains(got["error"], []byte(tt.wantErr)) || len(fs) != tt.findings {
				t.Errorf("output %s; want an error mentioning %q, %d findings and no decision", out.String(), tt.wantErr, tt.findings)
			}
		})
	}
}
