package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// bodySize is the size of every backend response body.
const bodySize = 1024

// runBackend is the `hop backend` mode: the app behind every proxy pair, an
// HTTP/1.1 server answering every request with 1 KiB. It is the same binary as
// the benchmark so that `rampartctl up` can start it as a Process.
func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", os.Getenv("RAMPART_APP_ADDR"), "address to serve on (default $RAMPART_APP_ADDR)")
	fs.String("tag", "", "ignored: lets the benchmark find this process by its command line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" {
		return errors.New("--listen or $RAMPART_APP_ADDR is required")
	}
	body := bytes.Repeat([]byte("r"), bodySize)
	size := strconv.Itoa(bodySize)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = []string{"application/octet-stream"}
		w.Header()["Content-Length"] = []string{size}
		_, _ = w.Write(body)
	})
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", lis.Addr())
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}
