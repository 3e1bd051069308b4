package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/authz/decisionlog"
)

// writeRotatedLog writes n events with the real Logger, rotating every few
// records, and returns the log's path.
func writeRotatedLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "decisions.log")
	l, err := decisionlog.New(decisionlog.Config{Path: path, MaxBytes: 600, MaxFiles: 50})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	for i := range n {
		e := decisionlog.Event{DecisionID: fmt.Sprintf("d-%d", i), Input: map[string]any{"path": "/orders", "pad": strings.Repeat("x", 200)}}
		if err := l.Log(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return path
}

func runAuditVerify(path string) (string, error) {
	cmd := newAuditCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"verify", path})
	err := cmd.Execute()
	return out.String(), err
}

func TestAuditVerifyRotatedFiles(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string, oldest int)
		wantErr string // "" for an intact chain
		wantOut string
	}{
		{name: "intact", damage: func(*testing.T, string, int) {}, wantOut: "chain:   intact"},
		{
			name:    "newest rotated file deleted",
			damage:  func(t *testing.T, path string, _ int) { remove(t, path+".1") },
			wantErr: "decisions.log.1 are missing",
		},
		{
			name:    "middle rotated file deleted",
			damage:  func(t *testing.T, path string, _ int) { remove(t, path+".2") },
			wantErr: "decisions.log.2 are missing",
		},
		{
			name: "oldest rotated file deleted",
			// Indistinguishable from rotation: the chain starts mid-way.
			damage:  func(t *testing.T, path string, oldest int) { remove(t, fmt.Sprintf("%s.%d", path, oldest)) },
			wantOut: "the chain starts mid-way",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeRotatedLog(t, 8)
			oldest := 0
			for {
				if _, err := os.Stat(fmt.Sprintf("%s.%d", path, oldest+1)); err != nil {
					break
				}
				oldest++
			}
			if oldest < 3 {
				t.Fatalf("%d rotated files, want at least 3", oldest)
			}
			tt.damage(t, path, oldest)
			out, err := runAuditVerify(path)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("verify = %v, want an intact chain\n%s", err, out)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("verify = %v, want an error containing %q\n%s", err, tt.wantErr, out)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("output lacks %q:\n%s", tt.wantOut, out)
			}
		})
	}
}

func TestAuditVerifyNotesTornFile(t *testing.T) {
	path := writeRotatedLog(t, 8)
	// A crash mid-write leaves a partial line; the writer sets the file aside
	// and continues the chain from its last complete record in the next file.
	f, err := os.OpenFile(path+".2", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"decision_id":"half`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := runAuditVerify(path)
	if err != nil || !strings.Contains(out, "decisions.log.2:") || !strings.Contains(out, "torn record") || !strings.Contains(out, "intact") {
		t.Errorf("verify = %v, want an intact chain with a note on the torn line\n%s", err, out)
	}
}

func remove(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

// A log nothing was written to yet (a sidecar with no denial so far) says
// so, rather than that its chain starts mid-way.
func TestAuditVerifyEmptyLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runAuditVerify(path)
	if err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	if !strings.Contains(out, "none yet") || strings.Contains(out, "mid-way") || strings.Contains(out, "last:") {
		t.Fatalf("output:\n%s", out)
	}
}
