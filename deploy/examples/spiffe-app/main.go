// Command spiffe-app is a tiny application that knows nothing of Rampart: it gets
// its identity from the SPIFFE Workload API (go-spiffe's workloadapi client, as any
// SPIFFE-aware app would) and talks mTLS with it.
//
//	spiffe-app serve --socket /tmp/a.sock --listen 127.0.0.1:9443
//	spiffe-app call  --socket /tmp/b.sock --url https://127.0.0.1:9443/ --interval 500ms
//	spiffe-app serve-plain --listen 127.0.0.1:9080 --name backend   (behind a sidecar)
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
	"strings"
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
	case "serve-plain":
		err = servePlain(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (serve, serve-plain or call)", os.Args[1])
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

// servePlain is an app that leaves mTLS to its sidecar: plain HTTP on loopback,
// the caller's identity from the X-Forwarded-Client-Cert the sidecar sets.
func servePlain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-plain", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:9080", "address to serve plain HTTP on")
	name := fs.String("name", "app", "name to answer with")
	_ = fs.Parse(args)
	srv := &http.Server{
		Addr:              *listen,
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			caller := "unknown"
			for _, part := range strings.Split(r.Header.Get("X-Forwarded-Client-Cert"), ";") {
				if v, ok := strings.CutPrefix(part, "URI="); ok {
					caller = v
				}
			}
			fmt.Fprintf(w, "hello %s, this is %s behind its sidecar\n", caller, *name)
		}),
	}
	fmt.Printf("serving plain HTTP on %s (the sidecar terminates mTLS)\n", *listen)
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
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
			fmt.Printf("request %d: %s (my svid %s): %s\n", i, resp.Status, serial(src), strings.TrimSpace(string(body)))
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
