package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Where the services find each other. These are mesh names: with HTTP_PROXY
// pointing at the sidecar's outbound listener, "details:9080" is resolved and
// routed by the mesh, not by DNS.
const (
	defaultDetailsURL = "http://details:9080"
	defaultReviewsURL = "http://reviews:9080"
	defaultRatingsURL = "http://ratings:9080"
)

// Timeouts. reviews gives up on ratings before productpage gives up on reviews,
// so a slow ratings service degrades to "ratings unavailable" on the page rather
// than to "reviews unavailable". Neither service retries: retries are the mesh's
// job, and a retry here would multiply with the mesh's.
const (
	defaultProductPageTimeout = 3 * time.Second         // each call to details or reviews
	defaultRatingsTimeout     = 2500 * time.Millisecond // each call from reviews to ratings
)

// maxUpstreamBody bounds what we read from an upstream answer.
const maxUpstreamBody = 1 << 20

// propagated lists the request headers every service copies from its incoming
// request onto each outgoing call. The mesh's sidecars start and finish the trace
// spans, but only the app can tie an incoming request to the calls it causes, so
// it must carry these through:
//
//   - x-request-id: the mesh's request id, in every access log along the way;
//   - W3C trace context: traceparent, tracestate, and baggage;
//   - Zipkin B3, multi- and single-header: x-b3-traceid, x-b3-spanid,
//     x-b3-parentspanid, x-b3-sampled, x-b3-flags, b3;
//   - other tracers: x-ot-span-context (Lightstep), x-cloud-trace-context and
//     grpc-trace-bin (Google Cloud), sw8 (SkyWalking), x-datadog-trace-id,
//     x-datadog-parent-id, x-datadog-sampling-priority (Datadog);
//   - user-agent, so routing rules on the browser work past the first hop;
//   - end-user, the signed-in user, which routing and authorization rules match
//     on. productpage sets it from its session (see productPage.forwardHeaders);
//     the others pass on what they received.
//
// Cookies are not forwarded: the session cookie is productpage's own, and the
// user it names travels as end-user.
var propagated = []string{
	"x-request-id",
	"traceparent",
	"tracestate",
	"baggage",
	"x-b3-traceid",
	"x-b3-spanid",
	"x-b3-parentspanid",
	"x-b3-sampled",
	"x-b3-flags",
	"b3",
	"x-ot-span-context",
	"x-cloud-trace-context",
	"grpc-trace-bin",
	"sw8",
	"x-datadog-trace-id",
	"x-datadog-parent-id",
	"x-datadog-sampling-priority",
	"user-agent",
	"end-user",
}

// headerEndUser carries the signed-in user from productpage to the services behind it.
const headerEndUser = "end-user"

// forwardHeaders returns the propagated headers of in, for an outgoing call.
func forwardHeaders(in http.Header) http.Header {
	out := make(http.Header, len(propagated))
	for _, k := range propagated {
		if vs := in.Values(k); len(vs) > 0 {
			out[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
		}
	}
	return out
}

// newTransport is the transport every service calls its upstreams with.
// Proxy is http.ProxyFromEnvironment: the mesh sets HTTP_PROXY to the sidecar's
// outbound listener, and that is how "details:9080" reaches details. (The
// environment is read once, on first use; loopback addresses never go through
// the proxy.)
func newTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second, // the per-call timeout is usually shorter
		ExpectContinueTimeout: time.Second,
	}
}

// upstream is one service a service calls.
type upstream struct {
	name    string // "details", for messages
	base    string // "http://details:9080", no trailing slash
	timeout time.Duration
	client  *http.Client
}

func newUpstream(name, base string, timeout time.Duration, rt http.RoundTripper) (upstream, error) {
	u, err := url.Parse(base)
	if err != nil {
		return upstream{}, fmt.Errorf("%s URL %q: %w", name, base, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return upstream{}, fmt.Errorf("%s URL %q: want http://host:port or https://host:port with an optional path", name, base)
	}
	if timeout <= 0 {
		return upstream{}, fmt.Errorf("%s timeout %v: must be positive", name, timeout)
	}
	return upstream{
		name:    name,
		base:    strings.TrimSuffix(u.String(), "/"),
		timeout: timeout,
		client: &http.Client{
			Transport: rt,
			// Upstreams answer JSON; a redirect would be a misconfiguration.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// errStatus is an upstream's answer other than 200 OK.
var errStatus = errors.New("unexpected status")

// getJSON GETs path from the upstream with headers h and decodes the JSON answer into v.
func (u upstream) getJSON(ctx context.Context, path string, h http.Header, v any) error {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.base+path, nil)
	if err != nil {
		return fmt.Errorf("call %s: %w", u.name, err)
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("call %s: %w", u.name, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxUpstreamBody)
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, body) // so the connection can be reused
		return fmt.Errorf("call %s: GET %s: %w %s", u.name, path, errStatus, resp.Status)
	}
	if err := json.NewDecoder(body).Decode(v); err != nil {
		return fmt.Errorf("call %s: GET %s: decode answer: %w", u.name, path, err)
	}
	return nil
}
