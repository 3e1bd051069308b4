package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// latency is one fortio run at a fixed rate.
type latency struct {
	Conns     int     `json:"conns"`
	P50       float64 `json:"p50_ms"`
	P90       float64 `json:"p90_ms"`
	P99       float64 `json:"p99_ms"`
	AddedP50  float64 `json:"added_p50_ms"`
	AddedP90  float64 `json:"added_p90_ms"`
	AddedP99  float64 `json:"added_p99_ms"`
	ActualQPS float64 `json:"actual_qps"`
	Requests  int64   `json:"requests"`
	Sockets   int64   `json:"sockets"`
	// Foreign is the share of the machine other processes used meanwhile.
	Foreign    float64 `json:"foreign_cpu"`
	ForeignTop string  `json:"foreign_top,omitempty"`
}

// fortioJSON is the part of fortio's -json output the benchmark reads.
type fortioJSON struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	SocketCount       int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
	ErrorsDurationHistogram struct{ Count int64 }
	Sizes                   struct{ Min float64 }
}

// runFortio runs `fortio load` at e.o.qps with uniform pacing and checks that
// every request got a 200 with the full body.
func runFortio(ctx context.Context, e *env, t *target, conns int, d time.Duration, jsonPath string) (latency, time.Duration, error) {
	args := []string{"load", "-qps", strconv.Itoa(e.o.qps), "-uniform", "-r", "0.00001", "-t", d.String(), "-c", strconv.Itoa(conns),
		"-p", "50,90,99", "-timeout", "5s", "-json", jsonPath, "-loglevel", "Warning"}
	for _, h := range t.headers {
		args = append(args, "-H", h)
	}
	args = append(args, t.url)
	out, cpu, err := runTool(ctx, d+time.Minute, e.tools.fortio, args)
	if err != nil {
		return latency{}, cpu, fmt.Errorf("fortio -c %d: %w\n%s", conns, err, tail(out, 3000))
	}
	l, err := readFortio(jsonPath, conns)
	return l, cpu, err
}

// readFortio reads a fortio -json file and checks that every request got a
// 200 with the whole body.
func readFortio(jsonPath string, conns int) (latency, error) {
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		return latency{}, err
	}
	var r fortioJSON
	if err := json.Unmarshal(data, &r); err != nil {
		return latency{}, fmt.Errorf("fortio -json %s: %w", jsonPath, err)
	}
	l := latency{Conns: conns, ActualQPS: r.ActualQPS, Requests: r.DurationHistogram.Count, Sockets: r.SocketCount}
	if ok := r.RetCodes["200"]; ok != r.DurationHistogram.Count || len(r.RetCodes) != 1 || r.ErrorsDurationHistogram.Count != 0 || ok == 0 {
		return l, fmt.Errorf("fortio -c %d: %d requests, return codes %s (-1 is a socket error), %d errors; want only 200s (%s)",
			conns, r.DurationHistogram.Count, codes(r.RetCodes), r.ErrorsDurationHistogram.Count, jsonPath)
	}
	if r.Sizes.Min < bodySize {
		return l, fmt.Errorf("fortio -c %d: a response of %.0f bytes, smaller than the %d-byte body", conns, r.Sizes.Min, bodySize)
	}
	for _, p := range r.DurationHistogram.Percentiles {
		ms := p.Value * 1000
		switch p.Percentile {
		case 50:
			l.P50 = ms
		case 90:
			l.P90 = ms
		case 99:
			l.P99 = ms
		}
	}
	if l.P50 == 0 || l.P90 == 0 || l.P99 == 0 {
		return l, fmt.Errorf("fortio -c %d: no p50/p90/p99 in %s", conns, jsonPath)
	}
	return l, nil
}

func codes(m map[string]int64) string {
	var ks []string
	for k, v := range m {
		ks = append(ks, fmt.Sprintf("%s×%d", k, v))
	}
	sort.Strings(ks)
	return "{" + strings.Join(ks, " ") + "}"
}

// wrkResult is one wrk run.
type wrkResult struct {
	RPS       float64
	Requests  int64
	BytesRead float64
}

// runTool runs a load generator, bounded in time, and returns its output and
// the CPU time it used.
func runTool(ctx context.Context, limit time.Duration, path string, args []string) ([]byte, time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(rctx, path, args...)
	out, err := cmd.CombinedOutput()
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	return out, cpu, err
}

var (
	wrkTotal  = regexp.MustCompile(`(\d+) requests in ([\d.]+)(\w+), ([\d.]+)([KMGT]?B) read`)
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// runWrk saturates the target with wrk and checks that every response was a
// 2xx with the full body and no socket failed.
func runWrk(ctx context.Context, e *env, t *target, d time.Duration) (wrkResult, string, time.Duration, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-t", strconv.Itoa(e.o.satThreads), "-c", strconv.Itoa(e.o.satConns), "-d", fmt.Sprintf("%ds", secs), "--timeout", "5s"}
	for _, h := range t.headers {
		args = append(args, "-H", h)
	}
	args = append(args, t.url)
	outb, cpu, err := runTool(ctx, d+time.Minute, e.tools.wrk, args)
	out := string(outb)
	if err != nil {
		return wrkResult{}, out, cpu, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	r, err := parseWrk(out)
	return r, out, cpu, err
}

// parseWrk reads wrk's summary and checks that every response was a 2xx with
// the whole body and that no socket failed.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkTotal.FindStringSubmatch(out)
	rps := wrkRPS.FindStringSubmatch(out)
	if m == nil || rps == nil {
		return r, fmt.Errorf("wrk: cannot read its summary:\n%s", out)
	}
	r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	r.RPS, _ = strconv.ParseFloat(rps[1], 64)
	r.BytesRead, _ = strconv.ParseFloat(m[4], 64)
	r.BytesRead *= map[string]float64{"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m[5]]
	if n := wrkNon2xx.FindStringSubmatch(out); n != nil {
		return r, fmt.Errorf("wrk: %s of %d responses were not 2xx/3xx:\n%s", n[1], r.Requests, out)
	}
	if s := wrkErrors.FindStringSubmatch(out); s != nil {
		return r, fmt.Errorf("wrk: socket errors (connect %s, read %s, write %s, timeout %s):\n%s", s[1], s[2], s[3], s[4], out)
	}
	if r.Requests == 0 || r.BytesRead/float64(r.Requests) < bodySize {
		return r, fmt.Errorf("wrk: %d requests read %.0f bytes; want at least %d each:\n%s", r.Requests, r.BytesRead, bodySize, out)
	}
	return r, nil
}
