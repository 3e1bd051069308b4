package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// proc is a long-running child of the benchmark (a proxy, the backend,
// `rampartctl up`) in its own process group, its output in a log file. It is
// killed if the benchmark dies.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	stop syscall.Signal // the graceful stop signal
	done chan struct{}
	err  error
}

func startProc(name, logPath string, stop syscall.Signal, env []string, argv ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, stop: stop, done: make(chan struct{})}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// terminate sends the stop signal to the process group, and SIGKILL to what
// is left after grace.
func (p *proc) terminate(grace time.Duration) {
	pgid := -p.pid()
	_ = syscall.Kill(pgid, p.stop)
	select {
	case <-p.done:
	case <-time.After(grace):
		progress("%s did not stop within %s; killing it", p.name, grace)
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-p.done
	}
	_ = syscall.Kill(pgid, syscall.SIGKILL) // stragglers of the group
}

// logTail returns the last lines of a log file, for error messages.
func logTail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
