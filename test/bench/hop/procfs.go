package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// procCPU returns a process's user+system CPU time in ticks (its exited
// threads included).
func procCPU(pid int) (int64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime %q %q", pid, f[11], f[12])
	}
	return ut + st, nil
}

// statFields returns /proc/PID/stat's fields after the command name.
func statFields(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return f, nil
}

// procRSS returns a process's resident set size in bytes.
func procRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q", pid, v)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// sumCPU and sumRSS add up a set of processes (nginx's master and workers).
func sumCPU(pids []int) (int64, error) {
	var n int64
	for _, p := range pids {
		v, err := procCPU(p)
		if err != nil {
			return 0, err
		}
		n += v
	}
	return n, nil
}

func sumRSS(pids []int) (int64, error) {
	var n int64
	for _, p := range pids {
		v, err := procRSS(p)
		if err != nil {
			return 0, err
		}
		n += v
	}
	return n, nil
}

// allPIDs lists the processes in /proc.
func allPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// withDescendants returns pid and every process below it.
func withDescendants(pid int) []int {
	children := map[int][]int{}
	for _, p := range allPIDs() {
		f, err := statFields(p)
		if err != nil {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// cmdline returns a process's arguments.
func cmdline(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// findProcs returns the processes whose program is named prog and whose
// command line contains every one of words.
func findProcs(prog string, words ...string) []int {
	var out []int
	for _, p := range allPIDs() {
		args := cmdline(p)
		if len(args) == 0 || filepath.Base(args[0]) != prog {
			continue
		}
		line := strings.Join(args, " ")
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

// machineCPU returns the whole machine's busy and total CPU ticks from
// /proc/stat, and of the busy ticks those spent in interrupts (loopback
// traffic is mostly processed in softirq, which no process is charged for).
func machineCPU() (busy, irq, total int64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	// user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("/proc/stat: %q", line)
		}
		total += v
		if i != 3 && i != 4 {
			busy += v
		}
		if i == 5 || i == 6 {
			irq += v
		}
	}
	return busy, irq, total, nil
}

// procTicks returns every process's CPU ticks and name.
func procTicks() map[int]procTick {
	out := map[int]procTick{}
	for _, p := range allPIDs() {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		open, close := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(string(data[close+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out[p] = procTick{name: string(data[open+1 : close]), ticks: ut + st}
	}
	return out
}

type procTick struct {
	name  string
	ticks int64
}
