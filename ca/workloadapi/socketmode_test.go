package workloadapi_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/rampart-mesh/rampart/ca/workloadapi"
)

// Whoever can connect to the socket is handed the workload's key, so the
// socket must never be reachable with a wider mode than configured, not even
// for the moment between creating it and setting its mode: with a umask of 0
// bind(2) creates it open to every local user. A watcher polls the path while
// the server starts, again and again, and records every mode it sees there.
func TestSocketNeverWiderThanItsMode(t *testing.T) {
	cp := startControlPlane(t, nil, 0)
	w := startWorkload(t, cp, "shop", "cart")
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	dir := filepath.Dir(socketPath(t))
	const starts = 100
	for i := range starts {
		path := filepath.Join(dir, "api.sock")
		var stop, wide atomic.Bool
		var seen atomic.Uint32
		done := make(chan struct{})
		go func() {
			defer close(done)
			for !stop.Load() {
				if fi, err := os.Lstat(path); err == nil {
					if fi.Mode().Perm() != 0o600 {
						seen.Store(uint32(fi.Mode().Perm()))
						wide.Store(true)
					}
				}
			}
		}()
		srv, err := workloadapi.New(workloadapi.Config{Source: w.Agent, SocketPath: path})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- srv.Run(ctx) }()
		waitUntil(t, "socket "+path, func() bool { _, err := os.Lstat(path); return err == nil })
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		stop.Store(true)
		<-done
		if wide.Load() {
			t.Fatalf("start %d: the socket was reachable with mode %#o (want only 0600)", i+1, seen.Load())
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in the socket's directory: %s", e.Name())
	}
}
