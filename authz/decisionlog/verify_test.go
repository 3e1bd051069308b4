package decisionlog

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// writeTestLog writes n records with the real Logger and returns their lines.
func writeTestLog(t *testing.T, n int) [][]byte {
	t.Helper()
	h := newHarness(t, Config{})
	h.start(t)
	for i := range n {
		h.logAll(t, testEvent(t, i, "/orders"))
	}
	h.stopAndWait(t)
	return readLines(t, h.path)
}

func TestVerifyDetectsTampering(t *testing.T) {
	orig := writeTestLog(t, 10)
	edit := func(line []byte, old, new string) []byte {
		if !bytes.Contains(line, []byte(old)) {
			t.Fatalf("line has no %q", old)
		}
		return bytes.Replace(line, []byte(old), []byte(new), 1)
	}
	tests := []struct {
		name     string
		tamper   func(ls [][]byte) [][]byte
		wantKind BreakKind
		wantLine int
		wantSeq  uint64
	}{
		{name: "field changed in the first record", wantKind: BreakModified, wantLine: 1, wantSeq: 1,
			tamper: func(ls [][]byte) [][]byte { ls[0] = edit(ls[0], `"allowed":false`, `"allowed":true`); return ls }},
		{name: "field changed in the middle", wantKind: BreakModified, wantLine: 6, wantSeq: 6,
			tamper: func(ls [][]byte) [][]byte { ls[5] = edit(ls[5], `"status":403`, `"status":200`); return ls }},
		{name: "field changed in the last record", wantKind: BreakModified, wantLine: 10, wantSeq: 10,
			tamper: func(ls [][]byte) [][]byte {
				ls[9] = edit(ls[9], `"request_id":"req-9"`, `"request_id":"req-X"`)
				return ls
			}},
		{name: "hash changed", wantKind: BreakModified, wantLine: 4, wantSeq: 4,
			tamper: func(ls [][]byte) [][]byte {
				c := &ls[3][len(ls[3])-4] // the last hex digit
				if *c == '0' {
					*c = '1'
				} else {
					*c = '0'
				}
				return ls
			}},
		{name: "record rewritten with a recomputed hash", wantKind: BreakRelinked, wantLine: 4, wantSeq: 4,
			tamper: func(ls [][]byte) [][]byte {
				ls[2] = reseal(edit(ls[2], `"allowed":false`, `"allowed":true`))
				return ls
			}},
		{name: "line deleted in the middle", wantKind: BreakDeleted, wantLine: 5, wantSeq: 6,
			tamper: func(ls [][]byte) [][]byte { return slices.Delete(ls, 4, 5) }},
		{name: "three lines deleted", wantKind: BreakDeleted, wantLine: 3, wantSeq: 6,
			tamper: func(ls [][]byte) [][]byte { return slices.Delete(ls, 2, 5) }},
		{name: "lines swapped", wantKind: BreakReordered, wantLine: 4, wantSeq: 5,
			tamper: func(ls [][]byte) [][]byte { ls[3], ls[4] = ls[4], ls[3]; return ls }},
		{name: "line moved earlier", wantKind: BreakReordered, wantLine: 2, wantSeq: 8,
			tamper: func(ls [][]byte) [][]byte { l := ls[7]; ls = slices.Delete(ls, 7, 8); return slices.Insert(ls, 1, l) }},
		{name: "copy of an earlier line inserted", wantKind: BreakInserted, wantLine: 7, wantSeq: 2,
			tamper: func(ls [][]byte) [][]byte { return slices.Insert(ls, 6, bytes.Clone(ls[1])) }},
		{name: "line duplicated in place", wantKind: BreakInserted, wantLine: 4, wantSeq: 3,
			tamper: func(ls [][]byte) [][]byte { return slices.Insert(ls, 3, bytes.Clone(ls[2])) }},
		{name: "forged record inserted", wantKind: BreakInserted, wantLine: 5, wantSeq: 5,
			tamper: func(ls [][]byte) [][]byte {
				// A self-consistent record claiming seq 5, linked to seq 4.
				forged := reseal(edit(ls[4], `"request_id":"req-4"`, `"request_id":"forged"`))
				return slices.Insert(ls, 4, forged)
			}},
		{name: "garbage line inserted", wantKind: BreakMalformed, wantLine: 3,
			tamper: func(ls [][]byte) [][]byte { return slices.Insert(ls, 2, []byte("not a record\n")) }},
		{name: "empty line inserted", wantKind: BreakMalformed, wantLine: 3,
			tamper: func(ls [][]byte) [][]byte { return slices.Insert(ls, 2, []byte("\n")) }},
		{name: "truncated", wantKind: BreakTruncated, wantLine: 10,
			tamper: func(ls [][]byte) [][]byte { ls[9] = ls[9][:len(ls[9])/2]; return ls }},
		{name: "genesis relinked", wantKind: BreakRelinked, wantLine: 1, wantSeq: 1,
			tamper: func(ls [][]byte) [][]byte { ls[0] = reseal(edit(ls[0], GenesisHash, GenesisHash[1:]+"1")); return ls }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := make([][]byte, len(orig))
			for i := range orig {
				ls[i] = bytes.Clone(orig[i])
			}
			path := filepath.Join(t.TempDir(), "decisions.log")
			var b []byte
			for _, l := range tt.tamper(ls) {
				b = append(b, l...)
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(path)
			brk := mustBreak(t, err)
			if brk.Kind != tt.wantKind || brk.File != path || brk.Line != tt.wantLine || brk.Seq != tt.wantSeq {
				t.Errorf("break = %s (seq %d), want %s at line %d, seq %d", brk, brk.Seq, tt.wantKind, tt.wantLine, tt.wantSeq)
			}
			if rep.Break != brk || rep.OK() {
				t.Errorf("report.Break = %v, want the returned break", rep.Break)
			}
			if rep.Records >= 10 {
				t.Errorf("report says %d records verified", rep.Records)
			}
		})
	}

	t.Run("untouched", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "decisions.log")
		writeLines(t, path, orig)
		if rep, err := Verify(path); err != nil || rep.Records != 10 {
			t.Errorf("Verify = %+v, %v", rep, err)
		}
	})
}

func TestVerifyIOErrors(t *testing.T) {
	if _, err := Verify(); err == nil || errors.Is(err, ErrChainBroken) {
		t.Errorf("Verify() = %v, want an error that is not a chain break", err)
	}
	_, err := Verify(filepath.Join(t.TempDir(), "missing.log"))
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrChainBroken) {
		t.Errorf("Verify(missing) = %v, want fs.ErrNotExist", err)
	}
}

func FuzzVerify(f *testing.F) {
	f.Add([]byte(""), []byte(""))
	f.Add([]byte("\n\n"), []byte("{}\n"))
	f.Add([]byte(`{"seq":1,"prev_hash":"`+GenesisHash+`","hash":"`+GenesisHash+`"}`+"\n"), []byte("x"))
	// Real records, whole and cut.
	e := Event{DecisionID: "d1", Labels: map[string]string{}, Path: DefaultPath, Input: map[string]any{"a": "b"}, Timestamp: t0.UTC()}
	var all []byte
	for i := 1; i <= 3; i++ {
		e.Seq, e.PrevHash = uint64(i), e.Hash
		if i == 1 {
			e.PrevHash = GenesisHash
		}
		var err error
		if all, _, err = encodeRecord(all, &e); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(all, []byte(nil))
	f.Add(all[:len(all)/2], all[len(all)/2:])
	f.Add(bytes.Replace(all, []byte(`"seq":2`), []byte(`"seq":4`), 1), all)

	f.Fuzz(func(t *testing.T, a, b []byte) {
		dir := t.TempDir()
		pa, pb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		if err := os.WriteFile(pa, a, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pb, b, 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := Verify(pa, pb)
		switch {
		case err == nil:
			if !rep.OK() || rep.Records != 0 && (rep.LastSeq < rep.FirstSeq || rep.LastSeq-rep.FirstSeq+1 != rep.Records) {
				t.Errorf("Verify passed with an inconsistent report %+v", rep)
			}
		case errors.Is(err, ErrChainBroken):
			var brk *Break
			if !errors.As(err, &brk) || rep.Break != brk || brk.Line < 1 {
				t.Errorf("break %v not in the report %+v", err, rep)
			}
		default:
			t.Errorf("Verify of readable files failed: %v", err)
		}
	})
}
