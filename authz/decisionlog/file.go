package decisionlog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
)

const writeBufferSize = 256 << 10

// file is the chained, rotating JSON Lines file. Only Run's goroutine uses it.
type file struct {
	path     string
	maxBytes int64
	maxFiles int
	log      *slog.Logger
	m        *metrics

	f     *os.File // nil when closed or after a failure
	w     *bufio.Writer
	size  int64 // of the current file, buffered bytes included
	dirty bool  // written to the OS since the last fsync
	// pending counts what sits in w, not yet in the file.
	pendingRecords, pendingBytes int

	seq  uint64 // of the last record written
	prev string // its hash
}

// name is the i-th file: the current one for 0, then the rotated ones, newest
// first.
func (s *file) name(i int) string {
	if i == 0 {
		return s.path
	}
	return s.path + "." + strconv.Itoa(i)
}

// open continues the chain from the files on disk and opens the current file
// for appending.
func (s *file) open() error {
	aside, err := s.resume()
	if err != nil {
		return err
	}
	if aside {
		if err := s.shift(); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open decision log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open decision log: %w", err)
	}
	s.f, s.size, s.dirty = f, fi.Size(), false
	s.pendingRecords, s.pendingBytes = 0, 0
	if s.w == nil {
		s.w = bufio.NewWriterSize(f, writeBufferSize)
	} else {
		s.w.Reset(f)
	}
	return nil
}

// resume sets seq and prev from the last complete record of the newest file
// that has one. It reports whether the current file must be rotated aside
// before appending: it ends in a torn (incomplete) line, or its last line is
// not a record, so the chain cannot continue in it.
func (s *file) resume() (aside bool, err error) {
	s.seq, s.prev = 0, GenesisHash
	for i := 0; i <= s.maxFiles; i++ {
		name := s.name(i)
		line, torn, err := lastLine(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read the end of decision log %s: %w", name, err)
		}
		if i == 0 && torn {
			aside = true
			s.log.Warn("decision log ends in an incomplete record (a torn write); rotating it aside, Verify will report it", "file", name)
		}
		if line == nil {
			continue
		}
		l, _, perr := parseLine(line)
		if perr != nil {
			aside = aside || i == 0
			s.log.Error("the last line of the decision log is not a record; starting a new chain at seq 1, Verify will report the break",
				"file", name, "err", perr)
			return aside, nil
		}
		s.seq, s.prev = l.Seq, l.Hash
		s.log.Info("continuing the decision log chain", "file", name, "seq", l.Seq)
		return aside, nil
	}
	return aside, nil
}

// lastLine returns the last complete line of the file (without "\n"), nil if
// there is none, and whether bytes follow it without a final newline.
func lastLine(name string) (line []byte, torn bool, err error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	size := fi.Size()
	end, err := lastIndexByte(f, size, '\n')
	if err != nil {
		return nil, false, err
	}
	torn = end < size-1
	if end < 0 {
		return nil, torn, nil
	}
	start, err := lastIndexByte(f, end, '\n')
	if err != nil {
		return nil, false, err
	}
	line = make([]byte, end-start-1)
	if _, err := f.ReadAt(line, start+1); err != nil {
		return nil, false, err
	}
	return line, torn, nil
}

// lastIndexByte is the offset of the last c in f before limit, or -1.
func lastIndexByte(f *os.File, limit int64, c byte) (int64, error) {
	buf := make([]byte, 32<<10)
	for pos := limit; pos > 0; {
		n := int64(len(buf))
		if n > pos {
			n = pos
		}
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], c); i >= 0 {
			return pos + int64(i), nil
		}
	}
	return -1, nil
}

// shift renames the current file to .1, .1 to .2 and so on, deleting the
// oldest. The current file must be closed.
func (s *file) shift() error {
	if err := os.Remove(s.name(s.maxFiles)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotate decision log: %w", err)
	}
	for i := s.maxFiles - 1; i >= 0; i-- {
		if err := os.Rename(s.name(i), s.name(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotate decision log: %w", err)
		}
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("rotate decision log: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// append writes one sealed record line, rotating first if the line would take
// the current file past maxBytes. A line larger than maxBytes gets a file to
// itself.
func (s *file) append(line []byte, seq uint64, hash string) error {
	if s.f == nil {
		return errors.New("decision log is not open")
	}
	if s.size > 0 && s.size+int64(len(line)) > s.maxBytes {
		if err := s.rotate(); err != nil {
			return err
		}
	}
	// Flush whole records only, so that a failed write loses whole records.
	if s.w.Buffered() > 0 && len(line) > s.w.Available() {
		if err := s.flush(false); err != nil {
			return err
		}
	}
	if _, err := s.w.Write(line); err != nil {
		return fmt.Errorf("write decision log: %w", err)
	}
	s.size += int64(len(line))
	s.pendingRecords++
	s.pendingBytes += len(line)
	s.seq, s.prev = seq, hash
	return nil
}

func (s *file) rotate() error {
	if err := s.close(); err != nil {
		return err
	}
	if err := s.shift(); err != nil {
		return err
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("rotate decision log: %w", err)
	}
	s.f, s.size, s.dirty = f, 0, false
	s.w.Reset(f)
	s.log.Info("decision log rotated", "file", s.path, "next_seq", s.seq+1)
	return nil
}

// flush moves buffered records to the file and, with sync, to stable storage.
func (s *file) flush(sync bool) error {
	if s.f == nil {
		return nil
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("write decision log: %w", err)
	}
	if s.pendingRecords > 0 {
		s.m.written.Add(float64(s.pendingRecords))
		s.m.bytes.Add(float64(s.pendingBytes))
		s.pendingRecords, s.pendingBytes = 0, 0
		s.dirty = true
	}
	if sync && s.dirty {
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("sync decision log: %w", err)
		}
		s.dirty = false
	}
	return nil
}

// close flushes, syncs and closes the current file.
func (s *file) close() error {
	if s.f == nil {
		return nil
	}
	err := s.flush(true)
	if cerr := s.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close decision log: %w", cerr)
	}
	s.f = nil
	return err
}

// fail abandons the current file after a write error: what was buffered is
// counted as lost, and the next open re-reads the chain from disk, so the
// chain continues from what actually reached the file.
func (s *file) fail() {
	if s.pendingRecords > 0 {
		s.m.dropped.WithLabelValues(DropError).Add(float64(s.pendingRecords))
	}
	s.pendingRecords, s.pendingBytes = 0, 0
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}
