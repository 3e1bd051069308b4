package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type testConfig struct {
	Listen string   `json:"listen"`
	TTL    Duration `json:"ttl"`
	Level  string   `json:"level"`
}

func load(t *testing.T, yaml string, args ...string) (testConfig, error) {
	t.Helper()
	c := testConfig{Listen: "default:1", TTL: Duration(time.Hour), Level: "info"}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.StringVar(&c.Listen, "listen", c.Listen, "")
	fs.Var(&c.TTL, "ttl", "")
	fs.StringVar(&c.Level, "level", c.Level, "")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return c, LoadConfig(path, fs, &c)
}

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		yaml    string
		args    []string
		want    testConfig
		wantErr string
	}{
		{name: "file sets values", yaml: "listen: a:2\nttl: 90s\n", want: testConfig{Listen: "a:2", TTL: Duration(90 * time.Second), Level: "info"}},
		{name: "flags win over the file", yaml: "listen: a:2\nlevel: debug\n", args: []string{"--listen", "b:3"}, want: testConfig{Listen: "b:3", TTL: Duration(time.Hour), Level: "debug"}},
		{name: "duration flag wins", yaml: "ttl: 90s\n", args: []string{"--ttl", "5m"}, want: testConfig{Listen: "default:1", TTL: Duration(5 * time.Minute), Level: "info"}},
		{name: "empty file keeps defaults", yaml: "", want: testConfig{Listen: "default:1", TTL: Duration(time.Hour), Level: "info"}},
		{name: "unknown key is named", yaml: "listen: a:2\nlistn: typo\n", wantErr: `unknown field "listn"`},
		{name: "bad duration is explained", yaml: "ttl: soon\n", wantErr: `"soon" is not a duration`},
		{name: "wrong type", yaml: "listen: [1, 2]\n", wantErr: "listen"},
		{name: "not YAML", yaml: "listen: [\n", wantErr: "c.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := load(t, tc.yaml, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestNewLogger(t *testing.T) {
	if _, err := NewLogger(os.Stderr, "loud", "text"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Fatalf("bad level: err = %v", err)
	}
	if _, err := NewLogger(os.Stderr, "info", "xml"); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Fatalf("bad format: err = %v", err)
	}
	var sb strings.Builder
	log, err := NewLogger(&sb, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	if strings.Contains(sb.String(), "hidden") || !strings.Contains(sb.String(), `"msg":"shown"`) {
		t.Fatalf("output %q", sb.String())
	}
}
