// Package regfile reads a file named by configuration or kept in a data
// directory without trusting what the name leads to: a FIFO, a device or an
// endless file must neither hang nor exhaust the reader.
//
// It imports nothing of the module: the data plane and the control plane may
// both use it.
package regfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// Errors from Read, matched with errors.Is.
var (
	// ErrNotRegular means the name leads to a FIFO, device, directory or socket.
	ErrNotRegular = errors.New("not a regular file")
	// ErrTooLarge means the file holds more than the caller's limit.
	ErrTooLarge = errors.New("file too large")
)

// Read returns the contents of the regular file name, at most limit bytes.
// The file is opened without blocking (opening a FIFO would otherwise wait
// for a writer), and its kind and size are checked on the opened file, not
// the name, so a swap in between changes nothing. check, if not nil, gets the
// opened file's info before anything is read (a caller's rule on its mode).
// An error opening the file is returned as os.OpenFile gives it, so
// errors.Is(err, fs.ErrNotExist) tells a missing file.
func Read(name string, limit int64, check func(fs.FileInfo) error) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is %w (%s)", name, ErrNotRegular, kind(fi.Mode()))
	}
	if fi.Size() > limit {
		return nil, &tooLargeError{name: name, limit: limit}
	}
	if check != nil {
		if err := check(fi); err != nil {
			return nil, err
		}
	}
	// The size may have grown since the Stat: read one byte past the limit to know.
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, &tooLargeError{name: name, limit: limit}
	}
	return b, nil
}

// tooLargeError says "<name> is larger than <limit> bytes" and is ErrTooLarge.
type tooLargeError struct {
	name  string
	limit int64
}

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than %d bytes", e.name, e.limit)
}

func (e *tooLargeError) Is(target error) bool { return target == ErrTooLarge }

func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "mode " + m.String()
}
