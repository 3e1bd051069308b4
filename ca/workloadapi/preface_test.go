package workloadapi

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// temporaryError is what accept(2) gives on EMFILE: net.OpError reports it Temporary.
type temporaryError struct{}

func (temporaryError) Error() string   { return "accept: too many open files" }
func (temporaryError) Temporary() bool { return true }
func (temporaryError) Timeout() bool   { return false }

// flakyListener fails its first n Accepts with a temporary error, then accepts
// from the real listener.
type flakyListener struct {
	net.Listener
	failures atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, temporaryError{}
	}
	return l.Listener.Accept()
}

func TestPrefaceListener(t *testing.T) {
	tests := []struct {
		name     string
		failures int32
	}{
		{name: "accepts"},
		{name: "keeps accepting after temporary errors", failures: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "wl")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			path := filepath.Join(dir, "p.sock")
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			fl := &flakyListener{Listener: l}
			fl.failures.Store(tc.failures)
			p := newPrefaceListener(fl, slog.New(slog.DiscardHandler))
			defer p.Close()

			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(append(append([]byte(nil), http2Preface...), "rest"...)); err != nil {
				t.Fatal(err)
			}

			accepted := make(chan net.Conn, 1)
			acceptErr := make(chan error, 1)
			go func() {
				for {
					sc, err := p.Accept()
					// Retry temporary errors, as grpc.Server.Serve does.
					var te interface{ Temporary() bool }
					if errors.As(err, &te) && te.Temporary() {
						time.Sleep(5 * time.Millisecond)
						continue
					}
					if err != nil {
						acceptErr <- err
						return
					}
					accepted <- sc
					return
				}
			}()
			var sc net.Conn
			select {
			case sc = <-accepted:
			case err := <-acceptErr:
				t.Fatalf("Accept: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("the connection was never handed on: accepting stopped at the temporary error")
			}
			defer sc.Close()
			// The preface read for the check is replayed to gRPC.
			buf := make([]byte, len(http2Preface)+len("rest"))
			_ = sc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(sc, buf); err != nil {
				t.Fatal(err)
			}
			if string(buf) != string(http2Preface)+"rest" {
				t.Errorf("read %q, want the preface then %q", buf, "rest")
			}

			p.Close()
			select {
			case <-accepted:
				t.Fatal("accepted after Close")
			default:
			}
			if _, err := p.Accept(); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Accept after Close: %v, want %v", err, net.ErrClosed)
			}
		})
	}
}
