package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Interference from the rest of the machine (someone else's build or tests):
// a run during which other processes took more than foreignRetry of the
// machine is repeated, after waiting for quiet, up to options.retries times
// and while the interference budget lasts; the least disturbed attempt
// counts, and one above foreignWarn is flagged.
const (
	foreignWarn  = 0.05
	foreignRetry = 0.10
	quietBusy    = 0.10 // the machine is quiet below this share busy
)

// measure checks a running setup, then takes its numbers into r.
func measure(ctx context.Context, e *env, t *target, dir string, r *result) error {
	if err := waitReady(ctx, t, r); err != nil {
		return err
	}
	if err := check(t); err != nil {
		return err
	}
	progress("%s: serving; checks passed (200 with %d bytes%s)", r.Label, bodySize, checkSummary(t))
	e.waitQuiet(ctx, e.o.quietWait, r.Label, &r.Warnings)
	for _, p := range t.proxies {
		rss, err := sumRSS(p.pids)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		r.Proxies = append(r.Proxies, procResult{Name: p.name, RSSIdleMB: mb(rss)})
	}
	if e.o.warmup > 0 {
		if _, _, err := runFortio(ctx, e, t, e.o.conns[len(e.o.conns)-1], e.o.warmup, filepath.Join(dir, "fortio-warmup.json")); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	for _, c := range e.o.conns {
		var best latency
		bestForeign := 2.0
		for try := 0; try <= e.o.retries; try++ {
			if try > 0 {
				if !e.spend(e.o.latencyDur) {
					break
				}
				progress("%s: other processes took %.0f%% of the machine; waiting for quiet and running c=%d again", r.Label, 100*bestForeign, c)
				e.waitQuiet(ctx, e.o.quietWait, r.Label, nil)
			}
			progress("%s: fortio -qps %d -uniform -c %d for %s", r.Label, e.o.qps, c, e.o.latencyDur)
			m := startMeter(t)
			l, tool, err := runFortio(ctx, e, t, c, e.o.latencyDur, filepath.Join(dir, fmt.Sprintf("fortio-c%d-%d.json", c, try)))
			if err != nil {
				return err
			}
			l.Foreign, l.ForeignTop = m.foreign(tool)
			progress("%s: c=%d p50 %.3f ms, p90 %.3f ms, p99 %.3f ms (%.0f qps, %d requests, others %.0f%%)",
				r.Label, c, l.P50, l.P90, l.P99, l.ActualQPS, l.Requests, 100*l.Foreign)
			if l.Foreign < bestForeign {
				best, bestForeign = l, l.Foreign
			}
			if bestForeign <= foreignRetry {
				break
			}
		}
		r.noteForeign(fmt.Sprintf("fortio c=%d", c), bestForeign, best.ForeignTop)
		if best.ActualQPS < 0.97*float64(e.o.qps) {
			r.Warnings = append(r.Warnings, fmt.Sprintf("c=%d: fortio reached %.0f qps of %d", c, best.ActualQPS, e.o.qps))
		}
		if best.Sockets > int64(c) {
			r.Warnings = append(r.Warnings, fmt.Sprintf("c=%d: fortio opened %d connections for %d: the proxy closed some", c, best.Sockets, c))
		}
		r.Latency = append(r.Latency, best)
	}
	var best *saturation
	for try := 0; try <= e.o.retries; try++ {
		if try > 0 {
			if !e.spend(e.o.satDur) {
				break
			}
			progress("%s: other processes took %.0f%% of the machine; waiting for quiet and saturating again", r.Label, 100*best.Foreign)
			e.waitQuiet(ctx, e.o.quietWait, r.Label, nil)
		}
		progress("%s: wrk -t%d -c%d for %s", r.Label, e.o.satThreads, e.o.satConns, e.o.satDur)
		profiles := ""
		if try == 0 && len(t.pprof) > 0 {
			profiles = dir
		}
		s, err := saturate(ctx, e, t, filepath.Join(dir, fmt.Sprintf("wrk-%d.txt", try)), profiles)
		if err != nil {
			return err
		}
		progress("%s: %.0f rps at saturation (others %.0f%%)", r.Label, s.RPS, 100*s.Foreign)
		if best == nil || s.Foreign < best.Foreign {
			best = s
		}
		if best.Foreign <= foreignRetry {
			break
		}
	}
	r.noteForeign("wrk", best.Foreign, best.ForeignTop)
	r.SatRPS, r.SatRequests = best.RPS, best.Requests
	r.MachineCPUPer1k, r.MachineBusy, r.Others = best.MachinePer1k, best.MachineBusy, best.Others
	for i := range r.Proxies {
		r.Proxies[i].CPUPer1k, r.Proxies[i].RSSLoadMB = best.Proxies[i].CPUPer1k, best.Proxies[i].RSSLoadMB
	}
	for _, p := range t.proxies { // still alive after all that
		for _, pid := range p.pids {
			if _, err := procCPU(pid); err != nil {
				return fmt.Errorf("%s (pid %d) is gone after the runs: %w", p.name, pid, err)
			}
		}
	}
	return nil
}

// noteForeign records the share of the machine other processes took during
// a run, and warns when it is enough to skew the numbers.
func (r *result) noteForeign(run string, share float64, top string) {
	r.ForeignMax = max(r.ForeignMax, share)
	if share > foreignWarn {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s: other processes used %.0f%% of the machine during the run (%s); numbers are skewed", run, 100*share, top))
	}
}

// saturation is one wrk run with the costs read around it.
type saturation struct {
	RPS          float64
	Requests     int64
	Proxies      []procResult // CPU and peak RSS, in t.proxies' order
	Others       []procResult
	MachinePer1k float64
	MachineBusy  float64
	Foreign      float64
	ForeignTop   string
}

// saturate runs wrk while reading the CPU time of every process on the path
// and sampling the proxies' memory.
func saturate(ctx context.Context, e *env, t *target, outPath, profileDir string) (*saturation, error) {
	all := append(append([]measured{}, t.proxies...), t.others...)
	before := make([]int64, len(all))
	for i, g := range all {
		v, err := sumCPU(g.pids)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", g.name, err)
		}
		before[i] = v
	}
	busy0, _, total0, err := machineCPU()
	if err != nil {
		return nil, err
	}
	m := startMeter(t)
	peak := make([]int64, len(t.proxies))
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, p := range t.proxies {
				if v, err := sumRSS(p.pids); err == nil && v > peak[i] {
					peak[i] = v
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	profiled := make(chan struct{})
	go func() {
		defer close(profiled)
		if profileDir != "" {
			fetchProfiles(ctx, t.pprof, max(1, int((e.o.satDur-2*time.Second)/time.Second)), profileDir)
		}
	}()
	w, out, tool, werr := runWrk(ctx, e, t, e.o.satDur)
	close(stop)
	<-sampled
	<-profiled
	_ = os.WriteFile(outPath, []byte(out), 0o644)
	if werr != nil {
		return nil, werr
	}
	s := &saturation{RPS: w.RPS, Requests: w.Requests}
	s.Foreign, s.ForeignTop = m.foreign(tool)
	busy1, _, total1, err := machineCPU()
	if err != nil {
		return nil, err
	}
	per1k := func(ticks int64) float64 {
		return float64(ticks) * (1000.0 / clockTicks) / (float64(w.Requests) / 1000)
	}
	for i, g := range all {
		v, err := sumCPU(g.pids)
		if err != nil {
			return nil, fmt.Errorf("%s after wrk: %w", g.name, err)
		}
		if i < len(t.proxies) {
			s.Proxies = append(s.Proxies, procResult{Name: g.name, CPUPer1k: per1k(v - before[i]), RSSLoadMB: mb(peak[i])})
		} else {
			s.Others = append(s.Others, procResult{Name: g.name, CPUPer1k: per1k(v - before[i])})
		}
	}
	s.Others = append(s.Others, procResult{Name: "wrk", CPUPer1k: float64(tool) / float64(time.Millisecond) / (float64(w.Requests) / 1000)})
	s.MachinePer1k = per1k(busy1 - busy0)
	if total1 > total0 {
		s.MachineBusy = float64(busy1-busy0) / float64(total1-total0)
	}
	return s, nil
}

// meter measures the CPU the rest of the machine takes during a run: all
// busy time, less interrupts and the CPU of the setup's processes, the load
// generator and this program.
type meter struct {
	pids      map[int]bool
	busy, irq int64
	total     int64
	known     int64
	self      time.Duration
	procs     map[int]procTick
}

func startMeter(t *target) *meter {
	m := &meter{pids: map[int]bool{os.Getpid(): true}}
	for _, g := range append(append([]measured{}, t.proxies...), t.others...) {
		for _, p := range g.pids {
			m.pids[p] = true
		}
	}
	m.procs = procTicks()
	m.busy, m.irq, m.total, _ = machineCPU()
	m.known = knownCPU(m.pids)
	m.self = selfCPU()
	return m
}

// foreign returns the others' share of the machine since startMeter, and
// which processes took the most of it; tool is the CPU time the load
// generator used.
func (m *meter) foreign(tool time.Duration) (float64, string) {
	busy, irq, total, err := machineCPU()
	if err != nil || total <= m.total {
		return 0, ""
	}
	ticks := func(d time.Duration) int64 { return int64(d / (time.Second / clockTicks)) }
	f := (busy - m.busy) - (irq - m.irq) - (knownCPU(m.pids) - m.known) - ticks(selfCPU()-m.self) - ticks(tool)
	share := max(0, float64(f)/float64(total-m.total))
	byName := map[string]int64{}
	var seen int64
	for pid, now := range procTicks() {
		if m.pids[pid] {
			continue
		}
		d := now.ticks - m.procs[pid].ticks // a new process: all of its time
		if d > 0 {
			byName[now.name] += d
			seen += d
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return byName[names[i]] > byName[names[j]] })
	var top []string
	for _, n := range names[:min(3, len(names))] {
		top = append(top, fmt.Sprintf("%s %.0f%%", n, 100*float64(byName[n])/float64(total-m.total)))
	}
	if rest := f - seen; rest > 0 {
		top = append(top, fmt.Sprintf("processes that came and went %.0f%%", 100*float64(rest)/float64(total-m.total)))
	}
	return share, strings.Join(top, ", ")
}

func knownCPU(pids map[int]bool) int64 {
	var n int64
	for p := range pids {
		if v, err := procCPU(p); err == nil {
			n += v
		}
	}
	return n
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// spend takes d from the interference budget, if that much is left.
func (e *env) spend(d time.Duration) bool {
	if e.budget < d {
		return false
	}
	e.budget -= d
	return true
}

// waitQuiet waits, up to limit and within the interference budget, for the
// machine to be idle apart from the benchmark's idle processes; when it is
// not, it adds a warning to warnings (if given).
func (e *env) waitQuiet(ctx context.Context, limit time.Duration, label string, warnings *[]string) {
	start := time.Now()
	defer func() { e.budget = max(0, e.budget-max(0, time.Since(start)-time.Second)) }()
	limit = min(limit, e.budget).Round(time.Second)
	deadline := time.Now().Add(limit)
	said := false
	for {
		b0, _, t0, err := machineCPU()
		sleep(ctx, time.Second)
		b1, _, t1, err2 := machineCPU()
		if err != nil || err2 != nil || ctx.Err() != nil || t1 <= t0 {
			return
		}
		share := float64(b1-b0) / float64(t1-t0)
		if share < quietBusy {
			if said {
				progress("%s: machine quiet (%.0f%% busy)", label, 100*share)
			}
			return
		}
		if time.Now().After(deadline) {
			waited := fmt.Sprintf("waited %s for quiet", limit)
			if limit == 0 {
				waited = "no interference budget left to wait"
			}
			if warnings != nil {
				*warnings = append(*warnings, fmt.Sprintf("the machine was %.0f%% busy before the runs (%s)", 100*share, waited))
			}
			progress("%s: machine still %.0f%% busy (%s); measuring anyway", label, 100*share, waited)
			return
		}
		if !said {
			progress("%s: machine %.0f%% busy with other processes; waiting up to %s for quiet", label, 100*share, limit)
			said = true
		}
	}
}

// waitReady sends the first request until it gets through, for up to 15 s:
// a setup that is up may still lack its routes (Rampart's outbound answers
// 503 until its configuration arrives). A wait is reported as a warning.
func waitReady(ctx context.Context, t *target, r *result) error {
	start := time.Now()
	var code int
	var body []byte
	var err error
	for time.Since(start) < 15*time.Second && ctx.Err() == nil {
		if code, body, err = get(t.url, t.headers); err == nil && code == 200 {
			if d := time.Since(start); d > 200*time.Millisecond {
				r.Warnings = append(r.Warnings, fmt.Sprintf("the first 200 came %s after the setup reported ready; before it: %d %q", d.Round(time.Millisecond), t.firstCode, t.firstBody))
			}
			return nil
		}
		if t.firstCode == 0 && t.firstBody == "" {
			t.firstCode, t.firstBody = code, string(body)
			if err != nil {
				t.firstBody = err.Error()
			}
		}
		sleep(ctx, 100*time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("GET %s: %w (for 15s)", t.url, err)
	}
	return fmt.Errorf("GET %s: %d for 15s: %.300s", t.url, code, body)
}

// fetchProfiles takes a CPU profile of each proxy at once, for secs seconds,
// into dir/NAME.pprof, and says how to read it.
func fetchProfiles(ctx context.Context, urls map[string]string, secs int, dir string) {
	var wg sync.WaitGroup
	for name, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(dir, name+".pprof")
			if err := fetch(ctx, fmt.Sprintf("%s?seconds=%d", u, secs), path, time.Duration(secs+30)*time.Second); err != nil {
				progress("profile of %s: %v (does the sidecar have --pprof?)", name, err)
				return
			}
			progress("profile of %s: go tool pprof -top %s", name, path)
		}()
	}
	wg.Wait()
}

func fetch(ctx context.Context, url, path string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
