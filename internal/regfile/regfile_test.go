package regfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	write := func(name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("x", size)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	small, atLimit, over := write("small", 3), write("at-limit", 16), write("over", 17)
	errRefused := errors.New("refused by the caller")
	tests := []struct {
		name    string
		path    string
		check   func(fs.FileInfo) error
		want    string
		wantIs  error
		wantMsg string
	}{
		{name: "regular file", path: small, want: "xxx"},
		{name: "at the limit", path: atLimit, want: strings.Repeat("x", 16)},
		{name: "over the limit", path: over, wantIs: ErrTooLarge, wantMsg: over + " is larger than 16 bytes"},
		{name: "FIFO", path: fifo, wantIs: ErrNotRegular, wantMsg: fifo + " is not a regular file (a named pipe)"},
		{name: "device", path: "/dev/null", wantIs: ErrNotRegular, wantMsg: "/dev/null is not a regular file (a device)"},
		{name: "directory", path: dir, wantIs: ErrNotRegular, wantMsg: dir + " is not a regular file (a directory)"},
		{name: "missing", path: filepath.Join(dir, "missing"), wantIs: fs.ErrNotExist},
		{name: "check refuses", path: small, check: func(fs.FileInfo) error { return errRefused }, wantIs: errRefused},
		{name: "check sees the file", path: small, check: func(fi fs.FileInfo) error {
			if fi.Size() != 3 || !fi.Mode().IsRegular() {
				t.Errorf("check got %v, size %d", fi.Mode(), fi.Size())
			}
			return nil
		}, want: "xxx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type result struct {
				data []byte
				err  error
			}
			done := make(chan result, 1)
			go func() {
				data, err := Read(tt.path, 16, tt.check)
				done <- result{data, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second): // guards a hang only
				// A blocked open of the FIFO waits for a writer: one lets it go.
				if w, err := os.OpenFile(tt.path, os.O_WRONLY, 0); err == nil {
					w.Close()
				}
				<-done
				t.Fatalf("Read(%s) blocked", tt.path)
			}
			if tt.wantIs == nil {
				if r.err != nil || string(r.data) != tt.want {
					t.Fatalf("Read(%s) = %q, %v; want %q", tt.path, r.data, r.err, tt.want)
				}
				return
			}
			if !errors.Is(r.err, tt.wantIs) || r.data != nil {
				t.Fatalf("Read(%s) = %q, %v; want no data and %v", tt.path, r.data, r.err, tt.wantIs)
			}
			if !strings.Contains(r.err.Error(), tt.wantMsg) {
				t.Errorf("Read(%s) error %q, want it to say %q", tt.path, r.err, tt.wantMsg)
			}
		})
	}
}

// A file that holds more than its Stat said (one appended to after the Stat)
// is refused, not returned cut at the limit. A procfs file stands in for it:
// Stat gives it size 0, reading it gives more.
func TestReadGrownAfterStat(t *testing.T) {
	const name = "/proc/self/maps"
	fi, err := os.Stat(name)
	if err != nil {
		t.Skip(err)
	}
	if fi.Size() != 0 {
		t.Skipf("%s: Stat says %d bytes, want 0 (not procfs?)", name, fi.Size())
	}
	const limit = 16
	if all, err := os.ReadFile(name); err != nil || len(all) <= limit {
		t.Fatalf("precondition: %s holds more than %d bytes; read %d bytes, %v", name, limit, len(all), err)
	}
	data, err := Read(name, limit, nil)
	if !errors.Is(err, ErrTooLarge) || data != nil {
		t.Fatalf("Read(%s, %d) = %d bytes, %v; want no data and %v", name, limit, len(data), err, ErrTooLarge)
	}
	if want := name + " is larger than 16 bytes"; !strings.Contains(err.Error(), want) {
		t.Errorf("Read(%s) error %q, want it to say %q", name, err, want)
	}
}
