// Command hop measures what one proxy hop costs: a client → proxy pair →
// backend path on loopback, for Rampart's sidecars (mTLS, then mTLS with
// authorization and JWT) and, for reference, an nginx pair and a HAProxy pair
// doing mTLS between them. It is what `make bench` runs last.
//
// Every setup is measured the same way, one at a time on an otherwise idle
// machine: fortio at a fixed, uniformly paced rate (4 and 16 connections) for
// latency; wrk for saturation throughput, with the proxies' CPU time
// (/proc/PID/stat) and resident memory (/proc/PID/status) read around and
// during that run. Latency is reported as added over the direct path.
//
//	go run ./test/bench/hop --bin bin                 # ~5 minutes
//	go run ./test/bench/hop --bin bin -quick          # 3 s runs, to iterate
//	go run ./test/bench/hop --bin bin -setups direct,rampart-authz-jwt,haproxy
//
// The Rampart pair is started as a user would, with `rampartctl up DIR` on a
// generated DIR. The tools (fortio, wrk, nginx, haproxy) are installed when
// missing: fortio with `go install` into ~/.cache/rampart-tools, the rest
// with apt-get.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command line.
type options struct {
	bin        string
	tools      string
	jsonOut    string
	qps        int
	conns      []int
	latencyDur time.Duration
	warmup     time.Duration
	satDur     time.Duration
	satConns   int
	satThreads int
	setups     []string
	quietWait  time.Duration
	retries    int
	budget     time.Duration
	keep       bool
	profile    bool
	strict     bool
	sidecarArg []string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "backend" {
		if err := runBackend(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "backend:", err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "hop:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := 0
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "hop:", err)
		code = 1
		if errors.Is(err, errTargetsMissed) {
			code = 3
		}
	}
	stop()
	os.Exit(code)
}

func parseFlags(args []string) (options, error) {
	home, _ := os.UserHomeDir()
	o := options{}
	fs := flag.NewFlagSet("hop", flag.ContinueOnError)
	fs.StringVar(&o.bin, "bin", "bin", "directory holding rampartd, rampart-sidecar and rampartctl ('make build' puts them in bin/)")
	fs.StringVar(&o.tools, "tools", filepath.Join(home, ".cache", "rampart-tools"), "where fortio is installed (and reused from)")
	fs.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	fs.IntVar(&o.qps, "qps", 1000, "fortio's fixed request rate for the latency runs")
	connsFlag := fs.String("conns", "4,16", "fortio connection counts for the latency runs, comma separated")
	fs.DurationVar(&o.latencyDur, "duration", 20*time.Second, "length of each fortio latency run")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "an unrecorded fortio run before the latency runs (fills connection pools)")
	fs.DurationVar(&o.satDur, "sat-duration", 15*time.Second, "length of the wrk saturation run")
	fs.IntVar(&o.satConns, "sat-conns", 32, "wrk connections")
	fs.IntVar(&o.satThreads, "sat-threads", 2, "wrk threads")
	fs.BoolVar(&h2Upgrade, "h2-upgrade", false, "between the Rampart sidecars, HTTP/1.1 upgraded to multiplexed HTTP/2 (a DestinationRule with connectionPool.http.h2UpgradePolicy UPGRADE)")
	quick := fs.Bool("quick", false, "3 s runs and a 1 s warm-up unless -duration, -sat-duration or -warmup are given: to iterate (numbers are rough)")
	setupsFlag := fs.String("setups", strings.Join(setupNames(), ","), "setups to run, comma separated (direct always runs: latency is added over it)")
	fs.DurationVar(&o.quietWait, "quiet-wait", time.Minute, "before each setup, wait up to this long for other processes to leave the machine idle")
	fs.IntVar(&o.retries, "retries", 2, "repeat a run this many times at most when other processes took over 10% of the machine during it")
	fs.DurationVar(&o.budget, "interference-budget", 2*time.Minute, "all the time that waiting for quiet and repeating disturbed runs may add to the whole benchmark")
	fs.BoolVar(&o.profile, "profile", false, "run the sidecars with --pprof (needs a rampartctl with --sidecar-arg) and save their CPU profiles during the saturation run in the work directory; implies -keep")
	fs.Func("sidecar-arg", "pass this flag to both Rampart sidecars (repeatable), e.g. -sidecar-arg=--concurrency=1", func(v string) error {
		o.sidecarArg = append(o.sidecarArg, v)
		return nil
	})
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, logs, fortio JSON) even when everything passed")
	fs.BoolVar(&o.strict, "strict", false, "exit 3 when a target is missed (by default only failures exit non-zero)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./test/bench/hop [flags]\n\nThe proxy-hop benchmark (see the package comment). Flags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.profile {
		o.keep = true
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (flags only; -h lists them)", fs.Arg(0))
	}
	if *quick { // durations given explicitly win
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, d := range map[string]*time.Duration{"duration": &o.latencyDur, "sat-duration": &o.satDur, "warmup": &o.warmup} {
			if !set[name] {
				*d = 3 * time.Second
				if name == "warmup" {
					*d = time.Second
				}
			}
		}
	}
	for _, s := range strings.Split(*connsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-conns: %q is not a positive integer", s)
		}
		o.conns = append(o.conns, n)
	}
	known := map[string]bool{}
	for _, n := range setupNames() {
		known[n] = true
	}
	o.setups = []string{"direct"}
	for _, s := range strings.Split(*setupsFlag, ",") {
		s = strings.TrimSpace(s)
		if s == "" || s == "direct" {
			continue
		}
		if !known[s] {
			return o, fmt.Errorf("-setups: unknown setup %q (known: %s)", s, strings.Join(setupNames(), ", "))
		}
		o.setups = append(o.setups, s)
	}
	if o.qps < 1 || o.latencyDur <= 0 || o.satDur <= 0 || o.satConns < 1 || o.satThreads < 1 {
		return o, errors.New("-qps, -duration, -sat-duration, -sat-conns and -sat-threads must be positive")
	}
	abs, err := filepath.Abs(o.bin)
	if err != nil {
		return o, err
	}
	o.bin = abs
	for _, b := range []string{"rampartd", "rampart-sidecar", "rampartctl"} {
		if _, err := os.Stat(filepath.Join(o.bin, b)); err != nil {
			return o, fmt.Errorf("-bin %s: no %s there (run 'make build' first)", o.bin, b)
		}
	}
	return o, nil
}

// progress prints one line of what the benchmark is doing, with the time.
func progress(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
