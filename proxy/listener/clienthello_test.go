package listener

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// loopbackPair returns both ends of a real TCP connection on loopback.
func loopbackPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := lis.Accept(); ch <- res{c, err} }()
	client, err = net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestReadClientHelloReplay: the SNI of a real crypto/tls client is read, and
// a real TLS server then completes the handshake over the returned Conn, so
// every byte the reader consumed was replayed intact.
func TestReadClientHelloReplay(t *testing.T) {
	for _, tc := range []struct {
		name, serverName, want string
	}{
		{"sni", "Foo.Example.COM", "foo.example.com"},
		{"no sni", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, sc := loopbackPair(t)
			cert := selfSigned(t, "foo.example.com")
			done := make(chan error, 1)
			go func() {
				cl := tls.Client(cc, &tls.Config{ServerName: tc.serverName, InsecureSkipVerify: true}) //nolint:gosec // test peer
				if err := cl.Handshake(); err != nil {
					done <- err
					return
				}
				_, err := io.WriteString(cl, "ping")
				done <- err
			}()
			rc, sni, err := ReadClientHello(sc, 0, 10*time.Second)
			if err != nil || sni != tc.want {
				t.Fatalf("ReadClientHello = %q, %v; want %q", sni, err, tc.want)
			}
			srv := tls.Server(rc, &tls.Config{Certificates: []tls.Certificate{cert}})
			_ = srv.SetDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("after replay: %q %v", buf, err)
			}
			if err := <-done; err != nil {
				t.Fatalf("client: %v", err)
			}
		})
	}
}

func TestReadClientHelloRejects(t *testing.T) {
	// A handshake record that claims a 16 KiB ClientHello and sends it.
	big := append([]byte{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc}, bytes.Repeat([]byte{0}, 16380)...)
	for _, tc := range []struct {
		name  string
		send  []byte
		max   int
		close bool // close the client's side after sending
		want  error
	}{
		{name: "plaintext", send: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), want: ErrNotTLS},
		{name: "garbage record", send: []byte{0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff}, want: ErrNotTLS},
		{name: "truncated then closed", send: []byte{0x16, 0x03, 0x01, 0x02}, close: true, want: ErrNotTLS},
		{name: "oversized for the limit", send: big, max: 4096, want: ErrClientHelloTooLarge},
		{name: "oversized for the default", send: append(big, big...), want: ErrClientHelloTooLarge},
		{name: "slow loris", send: []byte{0x16, 0x03, 0x01}, want: ErrClientHelloTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, sc := loopbackPair(t)
			go func() {
				_, _ = cc.Write(tc.send)
				if tc.close {
					_ = cc.(*net.TCPConn).CloseWrite()
				}
			}()
			type res struct {
				rc  *Conn
				err error
			}
			ch := make(chan res, 1)
			go func() {
				rc, _, err := ReadClientHello(sc, tc.max, 300*time.Millisecond)
				ch <- res{rc, err}
			}()
			var r res
			select {
			case r = <-ch:
			case <-time.After(10 * time.Second):
				t.Fatal("ReadClientHello did not return: the wait is unbounded")
			}
			if !errors.Is(r.err, tc.want) {
				t.Fatalf("err = %v, want %v", r.err, tc.want)
			}
			// Whatever was read comes back first, in order.
			n := min(len(tc.send), 4096)
			got := make([]byte, n)
			_ = r.rc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(r.rc, got); err != nil || !bytes.Equal(got, tc.send[:n]) {
				t.Fatalf("replayed %d bytes (%v), want the %d sent", len(got), err, n)
			}
		})
	}
}

// FuzzReadClientHello: hostile bytes never panic, and are replayed as sent.
func FuzzReadClientHello(f *testing.F) {
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03})
	f.Add([]byte("\x16\x03\x03\xff\xff"))
	f.Add([]byte("PRI * HTTP/2.0\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() {
			_, _ = a.Write(in)
			a.Close()
		}()
		rc, _, _ := ReadClientHello(b, 1024, time.Second)
		_ = rc.SetReadDeadline(time.Now().Add(time.Second))
		got, _ := io.ReadAll(rc)
		if !bytes.Equal(got, in) {
			t.Fatalf("replayed %x, sent %x", got, in)
		}
	})
}
