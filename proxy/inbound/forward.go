package inbound

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/rampart-mesh/rampart/proxy/h1"
	"golang.org/x/net/http/httpguts"
)

// forward sends an authorized request to the app and copies the answer back,
// as httputil.ReverseProxy with the inbound Rewrite does (the same headers
// leave and arrive: X-Forwarded-For/-Host/-Proto from what the sidecar saw,
// hop-by-hop fields dropped, a body that breaks off aborts the response),
// without its per-request copies. Upgrades and gRPC go through
// ReverseProxy.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, sent *int) int {
	out := new(http.Request)
	*out = *r
	out.RequestURI = ""
	out.URL = &url.URL{Scheme: "http", Host: s.cfg.App, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: cleanQuery(r.URL.RawQuery)}
	if r.ContentLength == 0 {
		out.Body = nil
	}
	h := r.Header // the request is this handler's own: its header is reused
	te := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	h1.RemoveHopHeaders(h)
	if te {
		h["Te"] = []string{"trailers"}
	}
	delete(h, "X-Forwarded-For")
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		h["X-Forwarded-For"] = []string{ip}
	}
	h["X-Forwarded-Host"] = []string{r.Host}
	if r.TLS != nil {
		h["X-Forwarded-Proto"] = []string{"https"}
	} else {
		h["X-Forwarded-Proto"] = []string{"http"}
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // no Go default in the app's logs
	}
	out.Header = h
	out.Close = false

	resp, err := s.appTransport.RoundTrip(out)
	if err != nil {
		if r.Context().Err() != nil {
			s.log.Debug("client disconnected before the app answered", "app", s.cfg.App, "err", err)
			w.WriteHeader(499)
			return 499
		}
		s.log.Warn("app unreachable", "app", s.cfg.App, "err", err)
		http.Error(w, "upstream connect error", http.StatusServiceUnavailable)
		return http.StatusServiceUnavailable
	}
	defer resp.Body.Close()
	h1.RemoveHopHeaders(resp.Header)
	wh := w.Header()
	for k, vs := range resp.Header {
		wh[k] = append(wh[k], vs...)
	}
	if len(resp.Trailer) > 0 {
		keys := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		wh.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	*sent = resp.StatusCode
	bp := proxyBufs.Get().(*[]byte)
	err = copyBody(w, resp, *bp)
	proxyBufs.Put(bp)
	if err != nil && !errors.Is(err, io.EOF) {
		if r.Context().Err() == nil {
			s.log.Debug("the app's response body broke off", "app", s.cfg.App, "err", err)
		}
		// The client must see the response end early, not a short success.
		panic(http.ErrAbortHandler)
	}
	for k, vs := range resp.Trailer {
		wh[http.TrailerPrefix+k] = vs
	}
	return resp.StatusCode
}

// copyBody copies the app's body to the client; a body of unknown length (a
// stream) is flushed as it arrives.
func copyBody(w http.ResponseWriter, resp *http.Response, buf []byte) error {
	flush := resp.ContentLength == -1 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	f, _ := w.(http.Flusher)
	if flush && f != nil {
		f.Flush()
	}
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flush && f != nil {
				f.Flush()
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// cleanQuery re-encodes a query net/url would not parse as sent (semicolons,
// bad escapes), as ReverseProxy does, so the app and the policy read the
// same parameters.
func cleanQuery(q string) string {
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			return reencode(q)
		case '%':
			if i+2 >= len(q) || !ishex(q[i+1]) || !ishex(q[i+2]) {
				return reencode(q)
			}
			i += 3
		default:
			i++
		}
	}
	return q
}

func reencode(q string) string {
	v, _ := url.ParseQuery(q)
	return v.Encode()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
