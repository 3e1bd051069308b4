package echo

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	OpText  byte = 0x1
	OpClose byte = 0x8
	OpPing  byte = 0x9
	OpPong  byte = 0xA
)

// maxFrame bounds the frames read: a test sends small messages.
const maxFrame = 1 << 20

// AcceptKey is the Sec-WebSocket-Accept answer to a Sec-WebSocket-Key.
func AcceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// WriteFrame writes one final frame; a client masks its frames, a server does not.
func WriteFrame(w io.Writer, op byte, payload []byte, mask bool) error {
	hdr := []byte{0x80 | op}
	var mbit byte
	if mask {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, mbit|byte(n))
	case n <= 0xFFFF:
		hdr = append(hdr, mbit|126)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr = append(hdr, mbit|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	data := payload
	if mask {
		var key [4]byte
		if _, err := rand.Read(key[:]); err != nil {
			return err
		}
		hdr = append(hdr, key[:]...)
		data = make([]byte, len(payload))
		for i, b := range payload {
			data[i] = b ^ key[i%4]
		}
	}
	if _, err := w.Write(append(hdr, data...)); err != nil {
		return fmt.Errorf("write websocket frame: %w", err)
	}
	return nil
}

// ReadFrame reads one frame, unmasking it if masked. Fragmented messages are
// not supported.
func ReadFrame(r io.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 {
		return 0, nil, errors.New("fragmented websocket message")
	}
	op = h[0] & 0x0F
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > maxFrame {
		return 0, nil, fmt.Errorf("websocket frame of %d bytes is too large", n)
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	return op, payload, nil
}

// webSocket completes the handshake and echoes messages until the client closes.
func (s *Server) webSocket(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if key == "" || r.Header.Get("Sec-WebSocket-Version") != "13" {
		http.Error(w, "websocket: Sec-WebSocket-Key and Sec-WebSocket-Version: 13 required", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Warn("websocket hijack", "err", err)
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nX-Echo-Name: %s\r\n\r\n", AcceptKey(key), s.cfg.Name)
	if err := brw.Flush(); err != nil {
		return
	}
	s.echoFrames(brw.Reader, brw.Writer)
}

func (s *Server) echoFrames(r *bufio.Reader, w *bufio.Writer) {
	for {
		op, payload, err := ReadFrame(r)
		if err != nil {
			return
		}
		reply := op
		switch op {
		case OpPing:
			reply = OpPong
		case OpPong:
			continue
		}
		if err := WriteFrame(w, reply, payload, false); err != nil || w.Flush() != nil || op == OpClose {
			return
		}
	}
}
