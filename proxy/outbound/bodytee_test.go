package outbound

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// closeCounter is a request body that counts its Closes.
type closeCounter struct {
	io.Reader
	closes int
}

func (c *closeCounter) Close() error { c.closes++; return nil }

// How a streamed body can go to the next attempt after one that failed,
// depending on how much of it that attempt read; the body is closed once,
// by the tee, never by an attempt.
func TestBodyTeeReplay(t *testing.T) {
	const limit = 8
	for _, tc := range []struct {
		name     string
		body     string
		read     int // bytes the failed attempt read; -1: to the end
		wantOK   bool
		wantCopy string // what the next attempt sends as a copy; "": it reads the body itself
	}{
		{name: "nothing read", body: "hello", read: 0, wantOK: true},
		{name: "read in part", body: "hello", read: 2},
		{name: "read to the end", body: "hello", read: -1, wantOK: true, wantCopy: "hello"},
		{name: "empty, read to the end", body: "", read: -1, wantOK: true},
		{name: "over the limit", body: "hello, world", read: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			down := &closeCounter{Reader: strings.NewReader(tc.body)}
			tee := &bodyTee{r: down, limit: limit}
			first := tee.reader()
			switch {
			case tc.read < 0:
				if _, err := io.ReadAll(first); err != nil {
					t.Fatal(err)
				}
			case tc.read > 0:
				if _, err := io.ReadFull(first, make([]byte, tc.read)); err != nil {
					t.Fatal(err)
				}
			}
			if err := first.Close(); err != nil || down.closes != 0 {
				t.Fatalf("an attempt's Close: %v, the body closed %d times; want it open", err, down.closes)
			}
			cp, ok := tee.replay(first, true)
			if ok != tc.wantOK || string(cp) != tc.wantCopy {
				t.Fatalf("replay = %q, %v; want %q, %v", cp, ok, tc.wantCopy, tc.wantOK)
			}
			if ok && cp == nil {
				// The next attempt reads the body itself, all of it; asking
				// without take leaves it its reader.
				next := tee.reader()
				if _, ok := tee.replay(next, false); !ok {
					t.Error("replay without take: false, want true (nothing read yet)")
				}
				got, err := io.ReadAll(next)
				if err != nil || string(got) != tc.body {
					t.Errorf("the next attempt read %q, %v; want %q", got, err, tc.body)
				}
			}
			if _, err := first.Read(make([]byte, 1)); !errors.Is(err, errAttemptDone) {
				t.Errorf("a read by the failed attempt's transport: %v, want %v", err, errAttemptDone)
			}
			tee.Close()
			tee.Close()
			if down.closes != 1 {
				t.Errorf("the body was closed %d times, want once", down.closes)
			}
		})
	}
}

// blockingBody is a request body whose Read says it was entered and waits
// for data, as a client that has not sent the rest yet.
type blockingBody struct {
	entered chan struct{}
	data    chan string
}

func (b *blockingBody) Read(p []byte) (int, error) {
	b.entered <- struct{}{}
	s, ok := <-b.data
	if !ok {
		return 0, io.EOF
	}
	return copy(p, s), nil
}

func (b *blockingBody) Close() error { return nil }

// A failed attempt whose transport is still reading the body (nothing read
// yet) must not let the next attempt read it too: the bytes would go to
// either. Neither the retry nor a mirror gets it, and the late bytes stay
// with the failed attempt.
func TestBodyTeeReadUnderWay(t *testing.T) {
	down := &blockingBody{entered: make(chan struct{}), data: make(chan string)}
	tee := &bodyTee{r: down, limit: 64}
	first := tee.reader()
	type result struct {
		s   string
		err error
	}
	done := make(chan result)
	go func() {
		p := make([]byte, 16)
		n, err := first.Read(p)
		done <- result{string(p[:n]), err}
	}()
	<-down.entered
	if tee.unread() {
		t.Error("unread while a read is under way")
	}
	if cp, ok := tee.replay(first, true); ok {
		t.Errorf("replay = %q, true while the failed attempt still reads; want no retry", cp)
	}
	down.data <- "late"
	if r := <-done; r.s != "late" || r.err != nil {
		t.Errorf("the read under way got %q, %v; want %q, nil", r.s, r.err, "late")
	}
	if cp, ok := tee.replay(nil, false); ok {
		t.Errorf("replay = %q, true after the failed attempt read part of the body; want no retry", cp)
	}
}
