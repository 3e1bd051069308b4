// Package serve runs HTTP servers for both planes' daemons.
package serve

import (
	"context"
	"net"
	"net/http"
	"time"
)

// HTTP runs srv on lis until ctx ends, then shuts it down, giving requests in
// flight five seconds to finish. It returns srv's error if srv stops first.
func HTTP(ctx context.Context, srv *http.Server, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}
