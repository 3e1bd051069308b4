// Package echo is the backend of the data-plane end-to-end tests: an app that
// says who answered, remembers what reached it and misbehaves on request, so a
// test can see from outside what the sidecars in front of it did.
//
// Over HTTP (HTTP/1.1 or h2c) every request is answered with its name in the
// x-echo-name header and a JSON body, after these query parameters:
//
//   - fail=N: the first N attempts of a request (by x-request-id) answer 503;
//   - sleep=D: wait D (a Go duration) before answering, or until the caller
//     gives up; with sleepn=N only the first N attempts wait.
//
// A server made sick through the control listener answers 503 to everything.
// GET /ws with Upgrade: websocket echoes WebSocket messages; gRPC requests go
// to a bidirectional streaming echo (see StreamDesc). In TCP mode it echoes
// the bytes of every connection instead.
//
// The control listener, which the mesh does not front, serves GET /stats
// (requests and most in flight by first path segment), GET /seen?id=ID (the
// attempts of one request) and POST /sick?on=true|false.
//
// It is test code: it must not import the product's packages.
package echo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// Config configures a Server.
type Config struct {
	// Name is who answers: the x-echo-name header, and the body.
	Name string
	// Listener is where the app serves (behind its sidecar).
	Listener net.Listener
	// TCP makes Listener a plain TCP echo.
	TCP bool
	// Control, if set, serves the test's view of the server.
	Control net.Listener
	Log     *slog.Logger
}

// Server is the echo backend.
type Server struct {
	cfg  Config
	log  *slog.Logger
	grpc *grpc.Server

	mu       sync.Mutex
	sick     bool
	attempts map[string]int    // by x-request-id
	seen     map[string][]Seen // by x-request-id
	counts   map[string]int    // by first path segment
	inFlight map[string]int
	maxIn    map[string]int
	conns    int // TCP connections
}

// Seen is one request as it reached the app.
type Seen struct {
	Name    string `json:"name"`
	Host    string `json:"host"`
	Path    string `json:"path"`
	Attempt int    `json:"attempt"`
	Status  int    `json:"status"`
}

// Stats is what GET /stats reports.
type Stats struct {
	Name string `json:"name"`
	// Requests and MaxInFlight are by first path segment ("/split").
	Requests    map[string]int `json:"requests"`
	MaxInFlight map[string]int `json:"maxInFlight"`
	// Connections counts TCP connections in TCP mode.
	Connections int `json:"connections"`
}

// New validates cfg. It does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.Name == "" || cfg.Listener == nil {
		return nil, errors.New("echo: Name and Listener are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("component", "echo", "name", cfg.Name),
		attempts: map[string]int{}, seen: map[string][]Seen{}, counts: map[string]int{}, inFlight: map[string]int{}, maxIn: map[string]int{}}
	s.grpc = grpc.NewServer(grpc.ForceServerCodec(Codec{}))
	s.grpc.RegisterService(&serviceDesc, s)
	return s, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	var servers []*http.Server
	errc := make(chan error, 2)
	if s.cfg.TCP {
		go func() { errc <- s.serveTCP(ctx) }()
	} else {
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		hs := &http.Server{Handler: s, Protocols: &protos, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		go func() { errc <- hs.Serve(s.cfg.Listener) }()
	}
	if s.cfg.Control != nil {
		hs := &http.Server{Handler: s.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		go func() { errc <- hs.Serve(s.cfg.Control) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
	}
	s.cfg.Listener.Close()
	for _, hs := range servers {
		_ = hs.Close()
	}
	s.grpc.Stop()
	return err
}

func (s *Server) serveTCP(ctx context.Context) error {
	for {
		c, err := s.cfg.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		s.conns++
		s.mu.Unlock()
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// segment is a path's first segment: "/split" of "/split/x".
func segment(path string) string {
	if i := strings.IndexByte(path[min(1, len(path)):], '/'); i >= 0 {
		return path[:i+1]
	}
	return path
}

// ServeHTTP answers the app's requests.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("content-type"), "application/grpc") {
		s.grpc.ServeHTTP(w, r)
		return
	}
	seg := segment(r.URL.Path)
	id := r.Header.Get("x-request-id")
	s.mu.Lock()
	attempt := 1
	if id != "" {
		s.attempts[id]++
		attempt = s.attempts[id]
	}
	s.counts[seg]++
	s.inFlight[seg]++
	s.maxIn[seg] = max(s.maxIn[seg], s.inFlight[seg])
	sick := s.sick
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight[seg]--
		s.mu.Unlock()
	}()

	status := http.StatusOK
	q := r.URL.Query()
	if n, _ := strconv.Atoi(q.Get("fail")); sick || attempt <= n {
		status = http.StatusServiceUnavailable
	}
	if id != "" {
		s.mu.Lock()
		s.seen[id] = append(s.seen[id], Seen{Name: s.cfg.Name, Host: r.Host, Path: r.URL.Path, Attempt: attempt, Status: status})
		s.mu.Unlock()
	}
	if d, err := time.ParseDuration(q.Get("sleep")); err == nil && d > 0 {
		if n, _ := strconv.Atoi(q.Get("sleepn")); n == 0 || attempt <= n {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
	}
	if status == http.StatusOK && r.URL.Path == "/ws" && strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		s.webSocket(w, r)
		return
	}
	w.Header().Set("x-echo-name", s.cfg.Name)
	w.Header().Set("x-echo-attempt", strconv.Itoa(attempt))
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Seen{Name: s.cfg.Name, Host: r.Host, Path: r.URL.Path, Attempt: attempt, Status: status})
}

func (s *Server) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		st := Stats{Name: s.cfg.Name, Requests: map[string]int{}, MaxInFlight: map[string]int{}, Connections: s.conns}
		for k, v := range s.counts {
			st.Requests[k] = v
		}
		for k, v := range s.maxIn {
			st.MaxInFlight[k] = v
		}
		s.mu.Unlock()
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /seen", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		seen := append([]Seen{}, s.seen[r.URL.Query().Get("id")]...)
		s.mu.Unlock()
		writeJSON(w, seen)
	})
	mux.HandleFunc("POST /sick", func(w http.ResponseWriter, r *http.Request) {
		on, err := strconv.ParseBool(r.URL.Query().Get("on"))
		if err != nil {
			http.Error(w, "sick: on must be true or false", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.sick = on
		s.mu.Unlock()
		s.log.Info("sick", "on", on)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
