package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// check sends one request through the setup and makes sure it arrives, and
// that what must be refused is refused.
func check(t *target) error {
	code, body, err := get(t.url, t.headers)
	if err != nil {
		return fmt.Errorf("GET %s: %w", t.url, err)
	}
	if code != 200 || len(body) != bodySize {
		return fmt.Errorf("GET %s: %d with %d bytes, want 200 with %d: %.300s", t.url, code, len(body), bodySize, body)
	}
	for _, d := range t.denyChecks {
		var hs []string
		for _, h := range t.headers {
			if !strings.HasPrefix(strings.ToLower(h), "authorization:") {
				hs = append(hs, h)
			}
		}
		code, body, err := get(t.url, append(hs, d.headers...))
		if err != nil {
			return fmt.Errorf("GET %s with %s: %w", t.url, d.name, err)
		}
		if code != d.want {
			return fmt.Errorf("GET %s with %s: %d, want %d (is the policy applied?): %.300s", t.url, d.name, code, d.want, body)
		}
	}
	if t.mtlsAddr != "" {
		// Plaintext, then TLS without a client certificate: neither may get a 200.
		plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		if code := status(plain, "http://"+t.mtlsAddr+"/"); code == 200 {
			return fmt.Errorf("%s served a plaintext request: mTLS is not enforced", t.mtlsAddr)
		}
		noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // only checking that B wants a client certificate
		if code := status(noCert, "https://"+t.mtlsAddr+"/"); code == 200 {
			return fmt.Errorf("%s served a TLS request without a client certificate: mTLS is not enforced", t.mtlsAddr)
		}
	}
	return nil
}

func checkSummary(t *target) string {
	var s []string
	if t.mtlsAddr != "" {
		s = append(s, "plaintext and certificate-less TLS to "+t.mtlsAddr+" refused")
	}
	for _, d := range t.denyChecks {
		s = append(s, fmt.Sprintf("%s → %d", d.name, d.want))
	}
	if len(s) == 0 {
		return ""
	}
	return "; " + strings.Join(s, "; ")
}

// get sends one GET with headers ("Name: value"; Host sets the authority).
func get(url string, headers []string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		if strings.EqualFold(k, "host") {
			req.Host = strings.TrimSpace(v)
			continue
		}
		req.Header.Set(k, strings.TrimSpace(v))
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// status is the status of a GET, 0 if it failed.
func status(c *http.Client, url string) int {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// interestingLines returns the last n lines of a log that are not per-request
// access log lines.
func interestingLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if !strings.Contains(l, "msg=access") {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
