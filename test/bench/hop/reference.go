package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The reference pairs: proxy A takes plaintext HTTP from the load generator
// and sends it over mTLS (verifying B's certificate, presenting its own) to
// proxy B, which requires and verifies A's certificate and sends plaintext
// to the backend. Both keep pools of upstream connections, so handshakes are
// rare, as PERFORMANCE.md describes for a fair comparison.

// nginxConf is one nginx instance: 2 workers, no access log, keepalive pools
// whose connections are not retired after 1,000 requests.
func nginxConf(dir, server, upstream string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `worker_processes 2;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream up {
        server %[2]s;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
%[3]s
}
`, dir, upstream, server)
	return b.String()
}

func startNginx(ctx context.Context, e *env, dir string) (*target, error) {
	pa, pb, err := twoFreeAddrs()
	if err != nil {
		return nil, err
	}
	a := fmt.Sprintf(`    server {
        listen %s;
        location / {
            proxy_pass https://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate %s;
            proxy_ssl_certificate_key %s;
            proxy_ssl_trusted_certificate %s;
            proxy_ssl_verify on;
            proxy_ssl_name %s;
            proxy_ssl_session_reuse on;
        }
    }`, pa, e.pki.ClientCert, e.pki.ClientKey, e.pki.CA, peerName)
	b := fmt.Sprintf(`    server {
        listen %s ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_client_certificate %s;
        ssl_verify_client on;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }`, pb, e.pki.ServerCert, e.pki.ServerKey, e.pki.CA)
	t := &target{url: "http://" + pa + "/", stopGrace: 10 * time.Second, mtlsAddr: pb}
	// B first, so that A's upstream is there when A starts.
	for _, inst := range []struct {
		name, sub, listen, server, upstream string
	}{{"nginx B", "b", pb, b, e.backendAddr}, {"nginx A", "a", pa, a, pb}} {
		d := filepath.Join(dir, inst.sub)
		if err := os.MkdirAll(filepath.Join(d, "tmp"), 0o755); err != nil {
			return t, err
		}
		conf := filepath.Join(d, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConf(d, inst.server, inst.upstream)), 0o644); err != nil {
			return t, err
		}
		log := filepath.Join(d, "stderr.log")
		p, err := startProc(inst.name, log, syscall.SIGTERM, nil, e.tools.nginx, "-p", d, "-c", conf, "-e", filepath.Join(d, "error.log"))
		if err != nil {
			return t, err
		}
		t.procs = append(t.procs, p)
		t.logs = append(t.logs, log, filepath.Join(d, "error.log"))
		pids, err := waitServing(ctx, p, inst.listen, 3) // the master and 2 workers
		if err != nil {
			return t, err
		}
		t.proxies = append([]measured{{inst.name, pids}}, t.proxies...)
	}
	t.others = []measured{{"backend", []int{e.backend.pid()}}}
	return t, nil
}

func startHAProxy(ctx context.Context, e *env, dir string) (*target, error) {
	pa, pb, err := twoFreeAddrs()
	if err != nil {
		return nil, err
	}
	common := `global
    nbthread 2
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
`
	a := common + fmt.Sprintf(`frontend in
    bind %s
    default_backend peer
backend peer
    http-reuse always
    server b %s ssl crt %s ca-file %s verify required verifyhost %s
`, pa, pb, e.pki.ClientPEM, e.pki.CA, peerName)
	b := common + fmt.Sprintf(`frontend in
    bind %s ssl crt %s ca-file %s verify required
    default_backend app
backend app
    http-reuse always
    server app %s
`, pb, e.pki.ServerPEM, e.pki.CA, e.backendAddr)
	t := &target{url: "http://" + pa + "/", stopGrace: 10 * time.Second, mtlsAddr: pb}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return t, err
	}
	for _, inst := range []struct{ name, listen, conf string }{{"haproxy B", pb, b}, {"haproxy A", pa, a}} {
		base := strings.ReplaceAll(inst.name, " ", "-")
		conf := filepath.Join(dir, base+".cfg")
		if err := os.WriteFile(conf, []byte(inst.conf), 0o644); err != nil {
			return t, err
		}
		log := filepath.Join(dir, base+".log")
		p, err := startProc(inst.name, log, syscall.SIGTERM, nil, e.tools.haproxy, "-db", "-f", conf)
		if err != nil {
			return t, err
		}
		t.procs = append(t.procs, p)
		t.logs = append(t.logs, log)
		pids, err := waitServing(ctx, p, inst.listen, 1)
		if err != nil {
			return t, err
		}
		t.proxies = append([]measured{{inst.name, pids}}, t.proxies...)
	}
	t.others = []measured{{"backend", []int{e.backend.pid()}}}
	return t, nil
}

// waitServing waits until p accepts connections on addr and has n processes
// (itself and its workers), and returns their pids.
func waitServing(ctx context.Context, p *proc, addr string, n int) ([]int, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		if done, err := p.exited(); done {
			return nil, fmt.Errorf("%s exited (%v):\n%s", p.name, err, logTail(p.log, 20))
		}
		if dialable(addr) {
			if pids := withDescendants(p.pid()); len(pids) == n {
				return pids, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: not serving on %s with %d processes after 20s:\n%s", p.name, addr, n, logTail(p.log, 20))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func twoFreeAddrs() (string, string, error) {
	a, err := freeAddr()
	if err != nil {
		return "", "", err
	}
	for {
		b, err := freeAddr()
		if err != nil || b != a {
			return a, b, err
		}
	}
}
