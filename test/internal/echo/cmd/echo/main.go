// Command echo runs the data-plane tests' backend (package echo) on
// $RAMPART_APP_ADDR, as 'rampartctl up' starts an app.
package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/rampart-mesh/rampart/test/internal/echo"
)

func main() {
	name := flag.String("name", os.Getenv("ECHO_NAME"), "who answers (the x-echo-name header)")
	listen := flag.String("listen", os.Getenv("RAMPART_APP_ADDR"), "where to serve (default $RAMPART_APP_ADDR)")
	control := flag.String("control", "", "where to serve the control endpoints (/stats, /seen, /sick); empty: none")
	tcp := flag.Bool("tcp", false, "echo TCP bytes instead of serving HTTP")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*name, *listen, *control, *tcp, log); err != nil {
		log.Error("echo", "err", err)
		os.Exit(1)
	}
}

func run(name, listen, control string, tcp bool, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	cfg := echo.Config{Name: name, Listener: lis, TCP: tcp, Log: log}
	if control != "" {
		if cfg.Control, err = net.Listen("tcp", control); err != nil {
			lis.Close()
			return err
		}
	}
	s, err := echo.New(cfg)
	if err != nil {
		return err
	}
	log.Info("echo serving", "name", name, "listen", lis.Addr().String(), "control", control, "tcp", tcp)
	return s.Run(ctx)
}
