package decisionlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
)

// BreakKind says how a chain is broken.
type BreakKind string

// Kinds of break Verify reports.
const (
	// BreakModified: the record's bytes do not match its hash; it was changed
	// after it was written.
	BreakModified BreakKind = "modified"
	// BreakRelinked: the record's prev_hash is not the hash of the record before
	// it, though both are self-consistent: one of them was rewritten with a
	// recomputed hash, or the first record of a chain does not start from the
	// genesis hash.
	BreakRelinked BreakKind = "relinked"
	// BreakDeleted: records are missing before this one.
	BreakDeleted BreakKind = "deleted"
	// BreakReordered: the record expected here comes later.
	BreakReordered BreakKind = "reordered"
	// BreakInserted: the record is not part of the chain here (a copy of an
	// earlier record, or a forged one).
	BreakInserted BreakKind = "inserted"
	// BreakTruncated: the file ends in the middle of a record.
	BreakTruncated BreakKind = "truncated"
	// BreakMalformed: the line is not a decision-log record.
	BreakMalformed BreakKind = "malformed"
)

// ErrChainBroken is matched (errors.Is) by the *Break that Verify returns.
var ErrChainBroken = errors.New("decision log chain is broken")

// Break is where and how a chain breaks: the first problem Verify found.
type Break struct {
	Kind   BreakKind
	File   string
	Line   int // 1-based
	Seq    uint64
	Detail string
}

func (b *Break) Error() string {
	return fmt.Sprintf("%s:%d: decision log record %s: %s", b.File, b.Line, b.Kind, b.Detail)
}

// Is makes errors.Is(err, ErrChainBroken) true.
func (b *Break) Is(target error) bool { return target == ErrChainBroken }

// VerifyReport is what Verify checked.
type VerifyReport struct {
	Files int
	// Records is how many records verified, up to the break if there is one.
	Records uint64
	// FirstSeq is the first record's seq; FromGenesis says it is 1 (no older
	// records were rotated away or are missing).
	FirstSeq    uint64
	FromGenesis bool
	// LastSeq and LastHash are the last verified record's: compare them with an
	// anchored Logger.Head to detect removal of the newest records.
	LastSeq  uint64
	LastHash string
	// Break is the first problem found, nil if the chain is intact.
	Break *Break
	// Torn lists the torn (incomplete) last lines of files that the chain
	// continues past: a crash mid-write, after which the writer set the file
	// aside and continued the chain from its last complete record in the next
	// file. They are not breaks (Kind is BreakTruncated), but worth reporting:
	// the torn record was lost.
	Torn []Break
}

// OK reports whether the chain verified.
func (r VerifyReport) OK() bool { return r.Break == nil }

// Verify checks the hash chain across the files, given oldest first (Path.N …
// Path.1, Path): every record's hash, each prev_hash link and seq continuity.
// The first record may start mid-chain (older files rotated away). A torn last
// line of a file is no break when the next file's first record continues the
// chain from the last complete record (the writer's restart after a crash); it
// is listed in the report's Torn. Verify stops at the first break, which it
// returns both in the report and as the error (a *Break, matching
// ErrChainBroken); other errors are I/O errors.
func Verify(paths ...string) (VerifyReport, error) {
	rep := VerifyReport{Files: len(paths)}
	if len(paths) == 0 {
		return rep, errors.New("verify decision log: no files given")
	}
	src := &lines{paths: paths}
	defer src.close()
	var prev, prevPrev struct {
		link
		file string
		line int
	}
	have := false
	fail := func(kind BreakKind, file string, line int, seq uint64, format string, args ...any) (VerifyReport, error) {
		rep.Break = &Break{Kind: kind, File: file, Line: line, Seq: seq, Detail: fmt.Sprintf(format, args...)}
		return rep, rep.Break
	}
	// torn is a torn last line of a file, pending until the next file's first
	// record shows that the chain continues past it.
	var torn *Break
	tornNext := 0 // the index of the file whose first record must continue the chain
	failTorn := func(why string) (VerifyReport, error) {
		rep.Break = torn
		rep.Break.Detail += "; " + why
		return rep, rep.Break
	}
	for {
		text, complete, err := src.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, err
		}
		file, n := src.file(), src.line
		if torn != nil && (src.i != tornNext || n != 1) {
			return failTorn("the next file does not start with a record that continues the chain")
		}
		if !complete {
			torn = &Break{Kind: BreakTruncated, File: file, Line: n, Seq: 0,
				Detail: fmt.Sprintf("the file ends in the middle of a record (%d bytes without a newline)", len(text))}
			if src.i == len(paths)-1 {
				return failTorn("it is the newest file")
			}
			tornNext = src.i + 1
			continue
		}
		l, hashOK, perr := parseLine(text)
		if perr != nil {
			return fail(BreakMalformed, file, n, 0, "%v", perr)
		}
		if !hashOK {
			return fail(BreakModified, file, n, l.Seq, "seq %d does not match its hash: the record was changed after it was written", l.Seq)
		}
		if torn != nil {
			// The writer restarted: this record must continue the chain from
			// the last complete record before the torn line.
			if have && (l.Seq != prev.Seq+1 || l.PrevHash != prev.Hash) {
				return failTorn(fmt.Sprintf("the next record, %s:%d seq %d, does not continue the chain from seq %d", file, n, l.Seq, prev.Seq))
			}
			rep.Torn = append(rep.Torn, *torn)
			torn = nil
		}
		if !have {
			if l.Seq == 1 && l.PrevHash != GenesisHash {
				return fail(BreakRelinked, file, n, l.Seq, "seq 1 must link to the genesis hash, got prev_hash %s", l.PrevHash)
			}
			rep.FirstSeq, rep.FromGenesis = l.Seq, l.Seq == 1
		} else {
			want := prev.Seq + 1
			switch {
			case l.Seq == want && l.PrevHash != prev.Hash:
				return fail(BreakRelinked, file, n, l.Seq,
					"prev_hash is not the hash of seq %d at %s:%d: that record or this one was rewritten", prev.Seq, prev.file, prev.line)
			case l.Seq > want:
				if at, line, ok := src.find(want); ok {
					return fail(BreakReordered, file, n, l.Seq, "seq %d follows seq %d; seq %d comes later, at %s:%d", l.Seq, prev.Seq, want, at, line)
				}
				if l.Seq == want+1 {
					return fail(BreakDeleted, file, n, l.Seq, "seq %d is missing between this record and %s:%d", want, prev.file, prev.line)
				}
				return fail(BreakDeleted, file, n, l.Seq, "seq %d to %d are missing between this record and %s:%d", want, l.Seq-1, prev.file, prev.line)
			case l.Seq < want:
				if l.Seq == prev.Seq && l.Hash != prev.Hash && l.PrevHash == prevPrev.Hash {
					// This record links past the previous line: that line is the intruder.
					rep.Records--
					rep.LastSeq, rep.LastHash = prevPrev.Seq, prevPrev.Hash
					return fail(BreakInserted, prev.file, prev.line, prev.Seq,
						"seq %d is not part of the chain: the next record (line %d), also seq %d, links to the record before it", prev.Seq, n, l.Seq)
				}
				return fail(BreakInserted, file, n, l.Seq, "seq %d after seq %d at %s:%d: the record is a copy or does not belong here", l.Seq, prev.Seq, prev.file, prev.line)
			}
		}
		prevPrev = prev
		prev.link, prev.file, prev.line = l, file, n
		have = true
		rep.Records++
		rep.LastSeq, rep.LastHash = l.Seq, l.Hash
	}
	if torn != nil {
		return failTorn("no record follows it")
	}
	return rep, nil
}

// lines reads lines across files in order.
type lines struct {
	paths []string
	i     int // index of the open file; len(paths) at the end
	f     *os.File
	r     *bufio.Reader
	line  int
}

func (s *lines) file() string { return s.paths[s.i] }

// next returns the next line without its "\n"; complete is false for bytes at
// the end of a file with no newline. io.EOF after the last file.
func (s *lines) next() (text []byte, complete bool, err error) {
	for s.i < len(s.paths) {
		if s.f == nil {
			f, err := os.Open(s.paths[s.i])
			if err != nil {
				return nil, false, fmt.Errorf("verify decision log: %w", err)
			}
			s.f, s.line = f, 0
			if s.r == nil {
				s.r = bufio.NewReaderSize(f, 64<<10)
			} else {
				s.r.Reset(f)
			}
		}
		text, err := s.r.ReadBytes('\n')
		if len(text) > 0 {
			s.line++
			if err == nil {
				return text[:len(text)-1], true, nil
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, false, fmt.Errorf("verify decision log %s: %w", s.paths[s.i], err)
		}
		if len(text) > 0 {
			return text, false, nil // the next call moves on to the next file
		}
		s.f.Close()
		s.f = nil
		s.i++
	}
	return nil, false, io.EOF
}

// find scans the rest of the files for a record with seq; it consumes them.
func (s *lines) find(seq uint64) (file string, line int, ok bool) {
	for {
		text, complete, err := s.next()
		if err != nil {
			return "", 0, false
		}
		if !complete {
			continue
		}
		if l, _, err := parseLine(text); err == nil && l.Seq == seq {
			return s.file(), s.line, true
		}
	}
}

func (s *lines) close() {
	if s.f != nil {
		s.f.Close()
	}
}
