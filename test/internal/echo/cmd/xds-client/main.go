// Command xds-client is a proxyless gRPC app for the end-to-end tests: it
// dials its target with grpc-go's xds resolver and xDS transport credentials
// (bootstrap from GRPC_XDS_BOOTSTRAP), calls the echo's Who method n times
// and prints one JSON line per call: who answered, the caller identity the
// server's sidecar saw, and the gRPC status code.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rampart-mesh/rampart/test/internal/echo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // the xds resolver and balancers
)

// Result is one call as the client saw it.
type Result struct {
	Name string `json:"name,omitempty"`
	XFCC string `json:"xfcc,omitempty"`
	Code string `json:"code"`
	Err  string `json:"err,omitempty"`
}

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ",") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	target := flag.String("target", "", "xds:///HOST:PORT")
	n := flag.Int("n", 1, "calls to make")
	timeout := flag.Duration("timeout", 10*time.Second, "per call")
	linger := flag.Duration("linger", 0, "after the calls, stay connected to the control plane this long")
	var hdrs headers
	flag.Var(&hdrs, "header", "request metadata k=v (repeatable)")
	flag.Parse()
	if err := run(*target, *n, *timeout, *linger, hdrs); err != nil {
		fmt.Fprintln(os.Stderr, "xds-client:", err)
		os.Exit(1)
	}
}

func run(target string, n int, timeout, linger time.Duration, hdrs []string) error {
	// Fallback credentials apply only to clusters rampartd sends without TLS.
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	var md []string
	for _, h := range hdrs {
		k, v, ok := strings.Cut(h, "=")
		if !ok {
			return fmt.Errorf("--header %q: want k=v", h)
		}
		md = append(md, k, v)
	}
	enc := json.NewEncoder(os.Stdout)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
		in, out := []byte{}, []byte{}
		err := conn.Invoke(ctx, echo.WhoMethod, &in, &out, grpc.ForceCodec(echo.Codec{}), grpc.WaitForReady(false))
		cancel()
		r := Result{Code: status.Code(err).String()}
		if err != nil {
			r.Err = err.Error()
		} else {
			var w echo.Who
			if err := json.Unmarshal(out, &w); err != nil {
				return fmt.Errorf("answer %q: %w", out, err)
			}
			r.Name, r.XFCC = w.Name, w.XFCC
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	time.Sleep(linger)
	return nil
}
