package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// The targets for the Rampart pair with mTLS, authorization and JWT.
const (
	targetP90Ratio = 1.3  // added p90 at most 1.3× the HAProxy pair's
	targetSatRatio = 0.7  // saturation at least 0.7× the HAProxy pair's
	targetCPUPer1k = 40.0 // ms of CPU per 1,000 requests per sidecar at saturation
	targetRSSIdle  = 30.0 // MB per sidecar, idle
	// noiseP90 is the run-to-run spread of p90 that PERFORMANCE.md found.
	noiseP90 = 0.15
)

// addOverDirect fills each setup's added latency: its percentile minus the
// direct path's at the same connection count.
func addOverDirect(results []result) {
	direct := map[int]latency{}
	for _, r := range results {
		if r.Setup == "direct" {
			for _, l := range r.Latency {
				direct[l.Conns] = l
			}
		}
	}
	for i := range results {
		for j, l := range results[i].Latency {
			d, ok := direct[l.Conns]
			if !ok {
				continue
			}
			results[i].Latency[j].AddedP50 = l.P50 - d.P50
			results[i].Latency[j].AddedP90 = l.P90 - d.P90
			results[i].Latency[j].AddedP99 = l.P99 - d.P99
		}
	}
}

// verdict is one target checked.
type verdict struct {
	Target string `json:"target"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// report is the whole run, as printed and as written to -json.
type report struct {
	Time     time.Time `json:"time"`
	Machine  string    `json:"machine"`
	Settings struct {
		QPS         int    `json:"qps"`
		Conns       []int  `json:"conns"`
		Duration    string `json:"duration"`
		SatDuration string `json:"saturation_duration"`
		SatConns    int    `json:"saturation_conns"`
		SatThreads  int    `json:"saturation_threads"`
	} `json:"settings"`
	Results  []result  `json:"results"`
	Verdicts []verdict `json:"verdicts"`
}

func newReport(o options, results []result) *report {
	rep := &report{Time: time.Now().UTC(), Results: results}
	rep.Machine = fmt.Sprintf("%d CPUs, %s/%s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	rep.Settings.QPS, rep.Settings.Conns = o.qps, o.conns
	rep.Settings.Duration, rep.Settings.SatDuration = o.latencyDur.String(), o.satDur.String()
	rep.Settings.SatConns, rep.Settings.SatThreads = o.satConns, o.satThreads
	rep.Verdicts = verdicts(results)
	return rep
}

func find(results []result, setup string) *result {
	for i := range results {
		if results[i].Setup == setup && results[i].Error == "" {
			return &results[i]
		}
	}
	return nil
}

// verdicts compares the Rampart pair with mTLS, authz and JWT against the
// targets; the relative ones need the HAProxy pair of the same run.
func verdicts(results []result) []verdict {
	rp, hp := find(results, "rampart-authz-jwt"), find(results, "haproxy")
	if rp == nil {
		return []verdict{{Target: "all", Detail: "the rampart mTLS+authz+JWT setup did not run or failed"}}
	}
	var vs []verdict
	if hp == nil {
		vs = append(vs, verdict{Target: "relative targets", Detail: "the HAProxy pair did not run or failed: no added-p90 or saturation verdict"})
	} else {
		for _, l := range rp.Latency {
			var h *latency
			for k := range hp.Latency {
				if hp.Latency[k].Conns == l.Conns {
					h = &hp.Latency[k]
				}
			}
			if h == nil {
				continue
			}
			bound := targetP90Ratio * math.Max(h.AddedP90, 0)
			d := fmt.Sprintf("rampart +%.3f ms vs HAProxy +%.3f ms (bound %.3f ms = %.1f×, ratio %s)",
				l.AddedP90, h.AddedP90, bound, targetP90Ratio, ratio(l.AddedP90, h.AddedP90))
			pass := l.AddedP90 <= bound
			if !pass && l.AddedP90-bound < noiseP90 {
				d += fmt.Sprintf("; over by %.3f ms, within the ~%.2f ms noise", l.AddedP90-bound, noiseP90)
			}
			vs = append(vs, verdict{Target: fmt.Sprintf("added p90 at c=%d ≤ %.1f× HAProxy", l.Conns, targetP90Ratio), Pass: pass, Detail: d})
		}
		vs = append(vs, verdict{Target: fmt.Sprintf("saturation ≥ %.1f× HAProxy", targetSatRatio), Pass: rp.SatRPS >= targetSatRatio*hp.SatRPS,
			Detail: fmt.Sprintf("rampart %.0f rps vs HAProxy %.0f rps (bound %.0f, ratio %s)", rp.SatRPS, hp.SatRPS, targetSatRatio*hp.SatRPS, ratio(rp.SatRPS, hp.SatRPS))})
	}
	worstCPU, worstRSS := 0.0, 0.0
	var cpus, rsss []string
	for _, p := range rp.Proxies {
		worstCPU, worstRSS = math.Max(worstCPU, p.CPUPer1k), math.Max(worstRSS, p.RSSIdleMB)
		cpus = append(cpus, fmt.Sprintf("%s %.1f ms", p.Name, p.CPUPer1k))
		rsss = append(rsss, fmt.Sprintf("%s %.1f MB", p.Name, p.RSSIdleMB))
	}
	cpuDetail := strings.Join(cpus, ", ")
	if hp != nil {
		cpuDetail += fmt.Sprintf(" (HAProxy: %s)", perProxy(hp.Proxies, func(p procResult) float64 { return p.CPUPer1k }, "ms"))
	}
	vs = append(vs,
		verdict{Target: fmt.Sprintf("CPU ≤ %.0f ms per 1,000 requests per sidecar at saturation", targetCPUPer1k), Pass: worstCPU <= targetCPUPer1k, Detail: cpuDetail},
		verdict{Target: fmt.Sprintf("sidecar RSS ≤ %.0f MB idle", targetRSSIdle), Pass: worstRSS <= targetRSSIdle, Detail: strings.Join(rsss, ", ")})
	return vs
}

func perProxy(ps []procResult, f func(procResult) float64, unit string) string {
	var s []string
	for _, p := range ps {
		s = append(s, strings.TrimSpace(fmt.Sprintf("%s %.1f %s", p.Name, f(p), unit)))
	}
	return strings.Join(s, ", ")
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func (rep *report) missed() bool {
	for _, v := range rep.Verdicts {
		if !v.Pass {
			return true
		}
	}
	return false
}

func (rep *report) print(w io.Writer) {
	s := rep.Settings
	fmt.Fprintf(w, "\nProxy hop on loopback (%s): 1 KiB responses; fortio %s -qps %d -uniform, %s per run; wrk -t%d -c%d -d%s.\n",
		rep.Machine, fortioVersion, s.QPS, s.Duration, s.SatThreads, s.SatConns, s.SatDuration)
	fmt.Fprintln(w, "Latency is added over direct (ms); the direct row is absolute. CPU is ms per 1,000 requests per proxy at saturation; RSS in MB; A/B = client side/server side.")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	head := []string{"setup"}
	for _, c := range s.Conns {
		head = append(head, fmt.Sprintf("p50 c=%d", c), fmt.Sprintf("p90 c=%d", c), fmt.Sprintf("p99 c=%d", c))
	}
	head = append(head, "sat rps", "CPU/1k A/B", "RSS idle A/B", "RSS load A/B", "machine CPU/1k", "")
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, r := range rep.Results {
		row := []string{r.Label}
		if r.Error != "" {
			row = append(row, "FAILED")
			for len(row) < len(head)-1 {
				row = append(row, "-")
			}
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
			continue
		}
		for _, c := range s.Conns {
			var l *latency
			for k := range r.Latency {
				if r.Latency[k].Conns == c {
					l = &r.Latency[k]
				}
			}
			switch {
			case l == nil:
				row = append(row, "-", "-", "-")
			case r.Setup == "direct":
				row = append(row, fmt.Sprintf("%.3f", l.P50), fmt.Sprintf("%.3f", l.P90), fmt.Sprintf("%.3f", l.P99))
			default:
				row = append(row, fmt.Sprintf("%+.3f", l.AddedP50), fmt.Sprintf("%+.3f", l.AddedP90), fmt.Sprintf("%+.3f", l.AddedP99))
			}
		}
		row = append(row, fmt.Sprintf("%.0f", r.SatRPS))
		if len(r.Proxies) == 0 {
			row = append(row, "-", "-", "-")
		} else {
			row = append(row, pair(r.Proxies, func(p procResult) float64 { return p.CPUPer1k }),
				pair(r.Proxies, func(p procResult) float64 { return p.RSSIdleMB }),
				pair(r.Proxies, func(p procResult) float64 { return p.RSSLoadMB }))
		}
		row = append(row, fmt.Sprintf("%.1f", r.MachineCPUPer1k))
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	_ = tw.Flush()

	fmt.Fprintln(w, "\nCPU at saturation, ms per 1,000 requests (the rest of the path):")
	for _, r := range rep.Results {
		if r.Error != "" {
			continue
		}
		all := append(append([]procResult{}, r.Proxies...), r.Others...)
		fmt.Fprintf(w, "  %-24s %s; whole machine %.1f (%.0f%% of the cores busy)\n", r.Label,
			perProxy(all, func(p procResult) float64 { return p.CPUPer1k }, ""), r.MachineCPUPer1k, 100*r.MachineBusy)
	}
	var warned bool
	for _, r := range rep.Results {
		for _, wmsg := range r.Warnings {
			if !warned {
				fmt.Fprintln(w, "\nWarnings:")
				warned = true
			}
			fmt.Fprintf(w, "  %s: %s\n", r.Label, wmsg)
		}
	}
	fmt.Fprintln(w, "\nVerdict: rampart mTLS+authz+JWT against the targets")
	for _, v := range rep.Verdicts {
		mark := "MISS"
		if v.Pass {
			mark = "PASS"
		}
		fmt.Fprintf(w, "  %s  %s: %s\n", mark, v.Target, v.Detail)
	}
	fmt.Fprintln(w)
}

func pair(ps []procResult, f func(procResult) float64) string {
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("%.1f", f(p)))
	}
	return strings.Join(s, "/")
}

func (rep *report) writeJSON(path string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("-json: %w", err)
	}
	return nil
}
