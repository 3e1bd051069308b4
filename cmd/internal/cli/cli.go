// Package cli holds what the three binaries share: strict YAML config files that
// flags override, logging set-up, a metrics endpoint and duration values.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rampart-mesh/rampart/internal/serve"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Duration is a time.Duration that reads "90s" / "1h" from YAML and flags.
type Duration time.Duration

func (d *Duration) String() string { return time.Duration(*d).String() }

// Set implements pflag.Value.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (e.g. 90s, 5m, 1h)", s)
	}
	*d = Duration(v)
	return nil
}

// Type implements pflag.Value.
func (d *Duration) Type() string { return "duration" }

// UnmarshalJSON accepts a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"90s\", got %s", b)
	}
	return d.Set(s)
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Size is a byte count that reads "100Mi", "512Ki", "1Gi" or plain bytes from
// YAML and flags (binary suffixes, as Kubernetes quantities write them; also
// "MiB" and the decimal "M", "MB").
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9},
	{"B", 1},
}

func (z *Size) String() string { return strconv.FormatInt(int64(*z), 10) }

// Set implements pflag.Value.
func (z *Size) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mult {
		return fmt.Errorf("%q is not a size (e.g. 100Mi, 512Ki, 1048576)", s)
	}
	*z = Size(v * mult)
	return nil
}

// Type implements pflag.Value.
func (z *Size) Type() string { return "size" }

// UnmarshalJSON accepts a size string or a number of bytes.
func (z *Size) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n json.Number
		if json.Unmarshal(b, &n) != nil {
			return fmt.Errorf("want a size such as \"100Mi\" or a number of bytes, got %s", b)
		}
		s = n.String()
	}
	return z.Set(s)
}

// MarshalJSON writes the size as a number of bytes.
func (z Size) MarshalJSON() ([]byte, error) { return json.Marshal(int64(z)) }

// LoadConfig decodes the YAML file at path into cfg, strictly: an unknown key is an
// error naming it. Flags the user set explicitly are re-applied afterwards, so the
// command line wins over the file.
func LoadConfig(path string, fs *pflag.FlagSet, cfg any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	changed := map[string]string{}
	fs.Visit(func(f *pflag.Flag) { changed[f.Name] = f.Value.String() })
	jsonData, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(jsonData))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %s", path, strings.TrimPrefix(err.Error(), "json: "))
	}
	for name, v := range changed {
		if err := fs.Set(name, v); err != nil {
			return err
		}
	}
	return nil
}

// NewLogger returns a slog logger writing to w at level ("debug", "info", "warn",
// "error") in format ("text" or "json").
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// NewRegistry returns a Prometheus registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// MetricsServer serves /metrics from reg on addr until ctx ends. An empty addr
// disables it. It logs the address it bound, which matters when the port is 0.
func MetricsServer(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger, extra map[string]http.Handler) error {
	if addr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	for p, h := range extra {
		mux.Handle(p, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Info("metrics serving", "addr", "http://"+lis.Addr().String()+"/metrics")
	return serve.HTTP(ctx, srv, lis)
}

// RunE is a cobra RunE for a daemon: it loads the --config file (if one was
// given) into cfg, with explicitly set flags winning, then runs.
func RunE(configFile *string, cfg any, run func(context.Context) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if *configFile != "" {
			if err := LoadConfig(*configFile, cmd.Flags(), cfg); err != nil {
				return err
			}
		}
		return run(cmd.Context())
	}
}
