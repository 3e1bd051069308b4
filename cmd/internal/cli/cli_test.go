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

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Size
		wantErr bool
	}{
		{in: "1048576", want: 1 << 20},
		{in: "100Mi", want: 100 << 20},
		{in: "100MiB", want: 100 << 20},
		{in: "512Ki", want: 512 << 10},
		{in: "2Gi", want: 2 << 30},
		{in: "10M", want: 10_000_000},
		{in: "10MB", want: 10_000_000},
		{in: " 4 Ki ", want: 4 << 10},
		{in: "0", want: 0},
		{in: "", wantErr: true},
		{in: "Mi", wantErr: true},
		{in: "-1Mi", wantErr: true},
		{in: "1.5Mi", wantErr: true},
		{in: "10Xi", wantErr: true},
		{in: "9223372036854775807Ki", wantErr: true}, // overflows
	} {
		var z Size
		err := z.Set(tc.in)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "is not a size") {
				t.Errorf("Set(%q) = %d, %v; want an error", tc.in, z, err)
			}
			continue
		}
		if err != nil || z != tc.want {
			t.Errorf("Set(%q) = %d, %v; want %d", tc.in, z, err, tc.want)
		}
	}
	// From YAML, as a string or as a number of bytes.
	type sc struct {
		Max Size `json:"max"`
	}
	for in, want := range map[string]Size{"max: 4Ki\n": 4096, "max: 8192\n": 8192} {
		var c sc
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(in), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := LoadConfig(path, fs, &c); err != nil || c.Max != want {
			t.Errorf("%q: %d, %v; want %d", in, c.Max, err, want)
		}
	}
}
