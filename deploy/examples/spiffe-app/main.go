// Command spiffe-app is a tiny application that knows nothing of Rampart: it gets
// its identity from the SPIFFE Workload API (go-spiffe's workloadapi client, as any
// SPIFFE-aware app would) and talks mTLS with it.
//
//	spiffe-app serve --socket /tmp/a.sock --listen 127.0.0.1:9443
//	spiffe-app call  --socket /tmp/b.sock --url https://127.0.0.1:9443/ --interval 500ms
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: spiffe-app serve|call [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "call":
		err = call(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (serve or call)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "spiffe-app:", err)
		os.Exit(1)
	}
}

func source(ctx context.Context, socket string) (*workloadapi.X509Source, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+socket)))
}

func serial(src x509svid.Source) string {
	s, err := src.GetX509SVID()
	if err != nil {
		return "none"
	}
	return fmt.Sprintf("%x", s.Certificates[0].SerialNumber)[:8]
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	socket := fs.String("socket", "", "Workload API socket")
	listen := fs.String("listen", "127.0.0.1:9443", "address to serve mTLS on")
	_ = fs.Parse(args)
	src, err := source(ctx, *socket)
	if err != nil {
		return err
	}
	defer src.Close()
	svid, _ := src.GetX509SVID()
	td := svid.ID.TrustDomain()
	srv := &http.Server{
		Addr:              *listen,
		TLSConfig:         tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeMemberOf(td)),
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			peer, _ := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
			fmt.Fprintf(w, "hello %s, this is %s (svid %s)\n", peer, svid.ID, serial(src))
		}),
	}
	srv.TLSConfig.MinVersion = tls.VersionTLS13
	fmt.Printf("serving mTLS on %s as %s\n", *listen, svid.ID)
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.ListenAndServeTLS("", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func call(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("call", flag.ExitOnError)
	socket := fs.String("socket", "", "Workload API socket")
	url := fs.String("url", "https://127.0.0.1:9443/", "server URL")
	interval := fs.Duration("interval", time.Second, "time between requests")
	count := fs.Int("count", 0, "requests to make; 0 until interrupted")
	server := fs.String("server-id", "", "SPIFFE ID the server must present (default: any in the trust domain)")
	_ = fs.Parse(args)
	src, err := source(ctx, *socket)
	if err != nil {
		return err
	}
	defer src.Close()
	svid, _ := src.GetX509SVID()
	auth := tlsconfig.AuthorizeMemberOf(svid.ID.TrustDomain())
	if *server != "" {
		id, err := spiffeid.FromString(*server)
		if err != nil {
			return err
		}
		auth = tlsconfig.AuthorizeID(id)
	}
	tlsCfg := tlsconfig.MTLSClientConfig(src, src, auth)
	tlsCfg.MinVersion = tls.VersionTLS13
	// A fresh connection per request, so every request is also a handshake.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true}}
	failures := 0
loop:
	for i := 1; *count == 0 || i <= *count; i++ {
		resp, err := client.Get(*url)
		if err != nil {
			failures++
			fmt.Printf("request %d FAILED: %v\n", i, err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Printf("request %d: %s (my svid %s): %s", i, resp.Status, serial(src), body)
		}
		select {
		case <-ctx.Done():
			break loop
		case <-time.After(*interval):
		}
	}
	if failures > 0 {
		return fmt.Errorf("%d requests failed", failures)
	}
	return nil
}
