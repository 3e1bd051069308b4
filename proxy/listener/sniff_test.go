package listener

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

func TestClassifyPrefix(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		kind string
		ok   bool
	}{
		{"empty needs more", nil, "", false},
		{"HTTP request", []byte("GET / HTTP/1.1\r\n"), KindPlaintext, true},
		{"HTTP/2 preface", []byte("PRI * HTTP/2.0"), KindPlaintext, true},
		{"TLS needs the record header", []byte{0x16, 0x03}, "", false},
		{"TLS 1.0 record", []byte{0x16, 0x03, 0x01, 0x02, 0x00}, KindTLS, true},
		{"handshake type with another major version", []byte{0x16, 0x02, 0x01, 0x00, 0x10}, KindPlaintext, true},
		{"oversized record", []byte{0x16, 0x03, 0x01, 0xff, 0xff}, KindPlaintext, true},
		{"zero-length record", []byte{0x16, 0x03, 0x01, 0x00, 0x00}, KindPlaintext, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, ok := ClassifyPrefix(tc.in)
			if kind != tc.kind || ok != tc.ok {
				t.Fatalf("ClassifyPrefix(%q) = %q, %t; want %q, %t", tc.in, kind, ok, tc.kind, tc.ok)
			}
		})
	}
}

// A real TLS client is recognised and the bytes it sent are replayed to the TLS
// server; a plaintext client is recognised and its bytes replayed too.
func TestSniffRealClients(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(net.Conn)
		want  string
		first string
	}{
		{"TLS client", func(c net.Conn) {
			_ = tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "x"}).Handshake()
		}, KindTLS, "\x16\x03"},
		{"HTTP client", func(c net.Conn) { _, _ = io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n") }, KindPlaintext, "GET /a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			go tc.write(client)
			defer client.Close()
			c, kind, err := Sniff(server, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if kind != tc.want {
				t.Fatalf("kind %q, want %q", kind, tc.want)
			}
			buf := make([]byte, len(tc.first))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != tc.first {
				t.Fatalf("replayed %q, %v; want %q", buf, err, tc.first)
			}
		})
	}
}

func TestSniffTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := Sniff(s, 50*time.Millisecond); err != ErrSniffTimeout {
		t.Fatalf("err = %v, want ErrSniffTimeout", err)
	}
}

func FuzzSniff(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5})
	f.Add([]byte{0x16})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		kind, ok := ClassifyPrefix(in)
		if ok && kind != KindTLS && kind != KindPlaintext {
			t.Fatalf("kind %q", kind)
		}
		if len(in) >= MaxSniff && !ok {
			t.Fatalf("%d bytes were not enough to decide", len(in))
		}
		if ok && kind == KindTLS && (in[0] != 0x16 || in[1] != 0x03) {
			t.Fatalf("%x classified as TLS", in)
		}
		client, server := net.Pipe()
		go func() { _, _ = client.Write(in); client.Close() }()
		c, _, err := Sniff(server, time.Second)
		if err == nil {
			got, _ := io.ReadAll(c)
			if string(got) != string(in) {
				t.Fatalf("replayed %x, want %x", got, in)
			}
		}
		server.Close()
	})
}

func TestClassifyHTTP(t *testing.T) {
	for _, tc := range []struct {
		in         string
		isHTTP, ok bool
	}{
		{"", false, false},
		{"G", false, false},
		{"GET", false, false},
		{"GET ", true, true},
		{"GET /x HTTP/1.1\r\n", true, true},
		{"DELETE /x", true, true},
		{"DEL", false, false},
		{"OPTIONS * HTTP/1.1", true, true},
		{"PATCH /", true, true},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true, true},
		{"PRI * HTTP/2", false, false},
		{"PRI * HTTP/3", false, true},
		{"GETX", false, true},
		{"get /", false, true},
		{"\x00\x01\x02", false, true},
		{"*1\r\n$4\r\nPING\r\n", false, true}, // redis
		{"SSH-2.0-OpenSSH", false, true},
		{"POSTAL", false, true},
	} {
		isHTTP, ok := ClassifyHTTP([]byte(tc.in))
		if isHTTP != tc.isHTTP || ok != tc.ok {
			t.Errorf("ClassifyHTTP(%q) = %t, %t; want %t, %t", tc.in, isHTTP, ok, tc.isHTTP, tc.ok)
		}
	}
}

// SniffHTTP decides as soon as the bytes allow, waits while they are
// ambiguous, replays them, and calls a silent client not HTTP after the
// timeout.
func TestSniffHTTPRealConnections(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	for _, tc := range []struct {
		name   string
		chunks []string // sent with pauses between them
		isHTTP bool
	}{
		{"request in one write", []string{"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"}, true},
		{"method split across writes", []string{"DE", "LETE /a HTTP/1.1\r\n\r\n"}, true},
		{"binary protocol", []string{"\x00\x00\x00\x08hello!!!"}, false},
		{"short non-HTTP prefix, then silence", []string{"GE\x00"}, false},
		{"silent client (server speaks first)", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", lis.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := lis.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			go func() {
				for i, ch := range tc.chunks {
					if i > 0 {
						time.Sleep(50 * time.Millisecond)
					}
					_, _ = io.WriteString(c, ch)
				}
			}()
			sc, isHTTP, err := SniffHTTP(s, 500*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if isHTTP != tc.isHTTP {
				t.Fatalf("isHTTP = %t, want %t", isHTTP, tc.isHTTP)
			}
			want := ""
			for _, ch := range tc.chunks {
				want += ch
			}
			if want == "" {
				return
			}
			got := make([]byte, len(want))
			_ = sc.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.ReadFull(sc, got); err != nil || string(got) != want {
				t.Fatalf("replayed %q (%v), want %q", got, err, want)
			}
		})
	}
}
