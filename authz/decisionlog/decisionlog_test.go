package decisionlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rampart-mesh/rampart/authz"
)

func TestChainVerifiesAfterNEvents(t *testing.T) {
	const n = 50
	h := newHarness(t, Config{Labels: map[string]string{"id": "sidecar-1"}})
	h.start(t)
	for i := range n {
		h.logAll(t, testEvent(t, i, "/orders"))
	}
	h.stopAndWait(t)

	rep, err := Verify(h.path)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !rep.OK() || rep.Records != n || rep.FirstSeq != 1 || !rep.FromGenesis || rep.LastSeq != n {
		t.Errorf("report = %+v, want %d records from genesis", rep, n)
	}
	if head := h.l.Head(); head.Seq != rep.LastSeq || head.Hash != rep.LastHash {
		t.Errorf("Head() = %+v, want seq %d hash %s", head, rep.LastSeq, rep.LastHash)
	}

	lines := readLines(t, h.path)
	if len(lines) != n {
		t.Fatalf("%d lines, want %d", len(lines), n)
	}
	prev := GenesisHash
	for i, line := range lines {
		r := decodeRecord(t, line)
		if r["seq"] != float64(i+1) || r["prev_hash"] != prev {
			t.Fatalf("line %d: seq %v prev_hash %v, want %d %s", i+1, r["seq"], r["prev_hash"], i+1, prev)
		}
		if r["decision_id"] != r["result"].(map[string]any)["decision_id"] {
			t.Errorf("line %d: decision_id %v is not the result's", i+1, r["decision_id"])
		}
		if want := "2026-03-14T14:09:26.535897932Z"; r["timestamp"] != want {
			t.Errorf("line %d: timestamp %v, want %s (fake clock, UTC)", i+1, r["timestamp"], want)
		}
		prev = r["hash"].(string)
	}

	size, err := os.Stat(h.path)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`
# HELP decision_log_bytes_written_total Bytes of decision-log records written to the log file.
# TYPE decision_log_bytes_written_total counter
decision_log_bytes_written_total %d
# HELP decision_logs_written_total Decision-log records written to the log file.
# TYPE decision_logs_written_total counter
decision_logs_written_total %d
`, size.Size(), n)
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want), "decision_logs_written_total", "decision_log_bytes_written_total"); err != nil {
		t.Error(err)
	}
}

// TestHashSchemeAsDocumented checks records with nothing but the recipe in the
// package documentation: bytes, SHA-256 and a JSON decoder.
func TestHashSchemeAsDocumented(t *testing.T) {
	h := newHarness(t, Config{})
	h.start(t)
	for i := range 3 {
		h.logAll(t, testEvent(t, i, "/orders"))
	}
	h.stopAndWait(t)

	var prevSeq float64
	prevHash := strings.Repeat("0", 64)
	for n, line := range readLines(t, h.path) {
		l := bytes.TrimSuffix(line, []byte("\n"))
		if !bytes.HasSuffix(l[:len(l)-66], []byte(`,"hash":"`)) {
			t.Fatalf("line %d does not end with the hash member: %s", n+1, l)
		}
		hash := string(l[len(l)-66 : len(l)-2])
		sum := sha256.Sum256(append(bytes.Clone(l[:len(l)-66]), `"}`...))
		if hex.EncodeToString(sum[:]) != hash {
			t.Errorf("line %d: SHA-256 of the line with hash emptied is not its hash", n+1)
		}
		r := decodeRecord(t, l)
		if r["seq"] != prevSeq+1 || r["prev_hash"] != prevHash || r["hash"] != hash {
			t.Errorf("line %d: seq %v prev_hash %v, want %v %s", n+1, r["seq"], r["prev_hash"], prevSeq+1, prevHash)
		}
		prevSeq, prevHash = prevSeq+1, hash
	}
}

func TestEventShape(t *testing.T) {
	h := newHarness(t, Config{Labels: map[string]string{"id": "sidecar-1", "version": "v1"}})
	e := testEvent(t, 1, "/dry")
	e.Labels = map[string]string{"version": "v2"}
	h.start(t)
	h.logAll(t, e)
	h.stopAndWait(t)

	r := decodeRecord(t, readLines(t, h.path)[0])
	var keys []string
	for k := range r {
		keys = append(keys, k)
	}
	for _, k := range []string{"decision_id", "labels", "bundles", "path", "input", "result", "timestamp", "masked", "rampart", "seq", "prev_hash", "hash"} {
		if _, ok := r[k]; !ok {
			t.Errorf("record has no %q; keys %v", k, keys)
		}
	}
	if _, ok := r["erased"]; ok {
		t.Errorf("record has erased with nothing erased: %v", r["erased"])
	}
	if got, want := r["labels"], map[string]any{"id": "sidecar-1", "version": "v2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("labels = %v, want %v (config labels, the event's winning)", got, want)
	}
	if got, want := r["bundles"], map[string]any{"rampart": map[string]any{"revision": "rev-7"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("bundles = %v, want %v", got, want)
	}
	if r["path"] != DefaultPath {
		t.Errorf("path = %v, want %s", r["path"], DefaultPath)
	}
	wantMesh := map[string]any{
		"source_principal":      "spiffe://cluster.local/ns/shop/sa/frontend",
		"source_workload":       "shop/frontend",
		"destination_workload":  "shop/orders",
		"destination_principal": "spiffe://cluster.local/ns/shop/sa/orders",
		"policy":                "ns/deny-all",
		"rule":                  float64(0),
		"allowed":               false,
		"status":                float64(403),
		"dry_run":               true,
		"reason":                "denied by DENY policy ns/deny-all rules[0]",
		"request_id":            "req-1",
	}
	if !reflect.DeepEqual(r["rampart"], wantMesh) {
		t.Errorf("rampart = %v\nwant      %v", r["rampart"], wantMesh)
	}
	if got := r["input"].(map[string]any)["parsed_path"]; !reflect.DeepEqual(got, []any{"dry"}) {
		t.Errorf("input.parsed_path = %v, want [dry]", got)
	}
}

func TestRotation(t *testing.T) {
	// Measure one record, then allow about three a file.
	probe := newHarness(t, Config{})
	probe.start(t)
	probe.logAll(t, testEvent(t, 0, "/orders"))
	probe.stopAndWait(t)
	fi, err := os.Stat(probe.path)
	if err != nil {
		t.Fatal(err)
	}
	maxBytes := fi.Size()*3 + fi.Size()/2

	tests := []struct {
		name        string
		maxFiles    int
		wantFiles   int // rotated ones
		fromGenesis bool
	}{
		{name: "all files kept", maxFiles: 10, wantFiles: 6, fromGenesis: true},
		{name: "oldest deleted", maxFiles: 2, wantFiles: 2, fromGenesis: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n = 20
			h := newHarness(t, Config{MaxBytes: maxBytes, MaxFiles: tt.maxFiles})
			h.start(t)
			for i := range n {
				h.logAll(t, testEvent(t, i, "/orders"))
			}
			h.stopAndWait(t)

			paths := []string{h.path}
			for i := 1; ; i++ {
				p := fmt.Sprintf("%s.%d", h.path, i)
				fi, err := os.Stat(p)
				if err != nil {
					break
				}
				if fi.Size() > maxBytes {
					t.Errorf("%s is %d bytes, over MaxBytes %d", p, fi.Size(), maxBytes)
				}
				paths = append([]string{p}, paths...)
			}
			if got := len(paths) - 1; got != tt.wantFiles {
				t.Fatalf("%d rotated files, want %d", got, tt.wantFiles)
			}
			rep, err := Verify(paths...)
			if err != nil {
				t.Fatalf("Verify across %v: %v", paths, err)
			}
			if rep.LastSeq != n || rep.FromGenesis != tt.fromGenesis || rep.Files != len(paths) {
				t.Errorf("report = %+v, want last seq %d, from genesis %v", rep, n, tt.fromGenesis)
			}
			if tt.fromGenesis && rep.Records != n {
				t.Errorf("verified %d records, want %d", rep.Records, n)
			}

			// The chain crosses files: dropping the last record of .1 breaks it at
			// the first line of the current file.
			last := readLines(t, paths[len(paths)-2])
			writeLines(t, paths[len(paths)-2], last[:len(last)-1])
			_, err = Verify(paths...)
			if b := mustBreak(t, err); b.Kind != BreakDeleted || b.File != h.path || b.Line != 1 {
				t.Errorf("after deleting the last record of .1: %v, want deleted at %s:1", b, h.path)
			}
		})
	}
}

// runOnce starts a Logger on path, logs events from..to-1 and stops it.
func runOnce(t *testing.T, path string, from, to int) *harness {
	t.Helper()
	h := newHarness(t, Config{Path: path})
	h.start(t)
	for i := from; i < to; i++ {
		h.logAll(t, testEvent(t, i, "/orders"))
	}
	h.stopAndWait(t)
	return h
}

func appendToFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func TestRestartContinuesChain(t *testing.T) {
	t.Run("same file", func(t *testing.T) {
		path := t.TempDir() + "/decisions.log"
		runOnce(t, path, 0, 5)
		h := runOnce(t, path, 5, 10)
		rep, err := Verify(path)
		if err != nil {
			t.Fatalf("Verify after a restart: %v", err)
		}
		if rep.Records != 10 || rep.LastSeq != 10 || !rep.FromGenesis {
			t.Errorf("report = %+v, want 10 records from genesis", rep)
		}
		if h.l.Head() != (Head{Seq: rep.LastSeq, Hash: rep.LastHash}) {
			t.Errorf("Head after restart = %+v, want seq 10 hash %s", h.l.Head(), rep.LastHash)
		}
	})

	t.Run("after rotation, before the new file", func(t *testing.T) {
		// A crash between renaming the current file and creating the next one.
		path := t.TempDir() + "/decisions.log"
		runOnce(t, path, 0, 5)
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
		runOnce(t, path, 5, 7)
		rep, err := Verify(path+".1", path)
		if err != nil || rep.Records != 7 || !rep.FromGenesis {
			t.Fatalf("Verify = %+v, %v; want 7 records from genesis", rep, err)
		}
	})

	t.Run("torn last line", func(t *testing.T) {
		path := t.TempDir() + "/decisions.log"
		runOnce(t, path, 0, 5)
		appendToFile(t, path, `{"decision_id":"half-writ`)
		runOnce(t, path, 5, 7)
		// The torn file is set aside whole, and the chain goes on past it.
		if r := decodeRecord(t, readLines(t, path)[0]); r["seq"] != float64(6) {
			t.Errorf("first record after the torn file has seq %v, want 6", r["seq"])
		}
		// The restart is reported, not a break: the chain verifies across it.
		rep, err := Verify(path+".1", path)
		if err != nil || rep.Records != 7 || rep.LastSeq != 7 || !rep.FromGenesis {
			t.Fatalf("Verify = %+v, %v; want 7 records from genesis", rep, err)
		}
		if len(rep.Torn) != 1 || rep.Torn[0].Kind != BreakTruncated || rep.Torn[0].File != path+".1" || rep.Torn[0].Line != 6 {
			t.Errorf("Torn = %+v, want the torn line at %s.1:6", rep.Torn, path)
		}
		if rep, err := Verify(path); err != nil || rep.FirstSeq != 6 || rep.LastSeq != 7 || rep.FromGenesis {
			t.Errorf("Verify of the new file = %+v, %v; want seq 6 to 7", rep, err)
		}
		// Records after the restart are still verified.
		lines := readLines(t, path)
		writeLines(t, path, [][]byte{lines[0], bytes.Replace(lines[1], []byte(`"allowed":false`), []byte(`"allowed":true`), 1)})
		_, err = Verify(path+".1", path)
		if b := mustBreak(t, err); b.Kind != BreakModified || b.File != path || b.Line != 2 {
			t.Errorf("Verify after editing a record past the restart = %v, want modified at %s:2", err, path)
		}
	})

	t.Run("torn line not followed by the chain", func(t *testing.T) {
		path := t.TempDir() + "/decisions.log"
		runOnce(t, path, 0, 5)
		appendToFile(t, path, `{"decision_id":"half-writ`)
		runOnce(t, path, 5, 7)
		torn := readLines(t, path+".1")
		for _, tt := range []struct {
			name  string
			files [][][]byte // the contents of LOG.1, LOG
		}{
			{name: "torn newest file", files: [][][]byte{nil, torn}},
			{name: "empty next file", files: [][][]byte{torn, nil}},
			{name: "next file skips a record", files: [][][]byte{append(torn[:4:4], torn[5]), readLines(t, path)}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				dir := t.TempDir()
				a, b := dir+"/decisions.log.1", dir+"/decisions.log"
				for i, p := range []string{a, b} {
					var raw []byte
					for _, l := range tt.files[i] {
						raw = append(raw, l...)
					}
					if err := os.WriteFile(p, raw, 0o600); err != nil {
						t.Fatal(err)
					}
				}
				_, err := Verify(a, b)
				if brk := mustBreak(t, err); brk.Kind != BreakTruncated {
					t.Errorf("Verify = %v, want truncated", brk)
				}
			})
		}
	})

	t.Run("last line not a record", func(t *testing.T) {
		path := t.TempDir() + "/decisions.log"
		runOnce(t, path, 0, 5)
		appendToFile(t, path, "garbage\n")
		runOnce(t, path, 5, 7)
		// The damaged file is set aside; a new chain starts.
		if lines := readLines(t, path+".1"); string(lines[len(lines)-1]) != "garbage\n" {
			t.Errorf("%s.1 ends with %q, want the damaged line", path, lines[len(lines)-1])
		}
		if rep, err := Verify(path); err != nil || !rep.FromGenesis || rep.Records != 2 {
			t.Errorf("Verify of the new chain = %+v, %v", rep, err)
		}
		_, err := Verify(path+".1", path)
		if b := mustBreak(t, err); b.Kind != BreakMalformed || b.File != path+".1" || b.Line != 6 {
			t.Errorf("Verify across = %v, want malformed at %s.1:6", b, path)
		}
	})
}

func TestFlushInterval(t *testing.T) {
	h := newHarness(t, Config{FlushInterval: 2 * time.Second})
	written, flushed := make(chan Event, 1), make(chan struct{}, 1)
	h.l.afterWrite = func(e Event) { written <- e }
	h.l.afterFlush = func() { flushed <- struct{}{} }
	h.start(t)
	h.logAll(t, testEvent(t, 1, "/orders"))
	<-written
	if lines := readLines(t, h.path); len(lines) != 0 {
		t.Fatalf("%d lines on disk before the flush interval, want 0 (buffered)", len(lines))
	}
	h.clk.Step(2 * time.Second)
	<-flushed
	if lines := readLines(t, h.path); len(lines) != 1 {
		t.Fatalf("%d lines on disk after the flush interval, want 1", len(lines))
	}
	if rep, err := Verify(h.path); err != nil || rep.Records != 1 {
		t.Errorf("Verify = %+v, %v", rep, err)
	}
	h.stopAndWait(t)
}

// A failed write loses what was buffered, counts it, and the chain goes on from
// what reached the file.
func TestWriteFailureRecovers(t *testing.T) {
	h := newHarness(t, Config{})
	written, flushed := make(chan Event, 1), make(chan struct{}, 1)
	h.l.afterWrite = func(e Event) {
		if e.Rampart.RequestID == "req-1" {
			h.l.file.f.Close() // the disk goes away under the buffered record
		}
		written <- e
	}
	h.l.afterFlush = func() { flushed <- struct{}{} }
	h.start(t)
	h.logAll(t, testEvent(t, 1, "/orders"))
	<-written
	h.clk.Step(time.Second)
	<-flushed // fails, and reopens the file
	// The lost record is not the head: nothing reached the file.
	if got := h.l.Head(); got != (Head{}) {
		t.Errorf("Head after the lost write = %+v, want none", got)
	}
	h.logAll(t, testEvent(t, 2, "/orders"))
	<-written
	h.stopAndWait(t)
	if rep, _ := Verify(h.path); h.l.Head() != (Head{Seq: rep.LastSeq, Hash: rep.LastHash}) {
		t.Errorf("Head = %+v, want the file's last record, seq %d hash %s", h.l.Head(), rep.LastSeq, rep.LastHash)
	}

	lines := readLines(t, h.path)
	if len(lines) != 1 {
		t.Fatalf("%d records on disk, want 1", len(lines))
	}
	if r := decodeRecord(t, lines[0]); r["seq"] != float64(1) || r["rampart"].(map[string]any)["request_id"] != "req-2" {
		t.Errorf("record = seq %v %v, want req-2 as seq 1", r["seq"], r["rampart"])
	}
	if rep, err := Verify(h.path); err != nil || rep.Records != 1 {
		t.Errorf("Verify = %+v, %v", rep, err)
	}
	for reason, want := range map[string]float64{DropError: 1, DropBufferFull: 0, DropPolicy: 0} {
		if got := testutil.ToFloat64(h.l.m.dropped.WithLabelValues(reason)); got != want {
			t.Errorf("dropped{%s} = %v, want %v", reason, got, want)
		}
	}
	if got := testutil.ToFloat64(h.l.m.written); got != 1 {
		t.Errorf("written = %v, want 1", got)
	}
}

func TestLosslessNeverDrops(t *testing.T) {
	const n = 50
	h := newHarness(t, Config{BufferSize: 1, Lossless: true})
	gate, writing := make(chan struct{}), make(chan struct{}, n)
	h.l.afterWrite = func(Event) {
		writing <- struct{}{}
		<-gate // the writer is stuck until the test opens the gate
	}
	events := make([]Event, n)
	for i := range events {
		events[i] = testEvent(t, i, "/orders")
	}
	h.start(t)
	h.logAll(t, events[0])
	<-writing              // the writer holds event 0
	h.logAll(t, events[1]) // fills the buffer

	// Full buffer, lossless: Log waits, and gives up only with its context.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := h.l.Log(ctx, events[2]); !errors.Is(err, context.Canceled) {
		t.Fatalf("Log on a full lossless buffer with a cancelled context = %v, want context.Canceled", err)
	}

	done := make(chan error, 1)
	go func() {
		for _, e := range events[2:] {
			if err := h.l.Log(t.Context(), e); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	close(gate)
	if err := <-done; err != nil {
		t.Fatalf("Log: %v", err)
	}
	h.stopAndWait(t)

	lines := readLines(t, h.path)
	if len(lines) != n {
		t.Fatalf("%d records written, want %d", len(lines), n)
	}
	for i, line := range lines {
		if id := decodeRecord(t, line)["rampart"].(map[string]any)["request_id"]; id != fmt.Sprintf("req-%d", i) {
			t.Errorf("line %d is %v, want req-%d", i+1, id, i)
		}
	}
	if got := testutil.ToFloat64(h.l.m.dropped.WithLabelValues(DropBufferFull)); got != 0 {
		t.Errorf("dropped{buffer_full} = %v, want 0", got)
	}
	if _, err := Verify(h.path); err != nil {
		t.Error(err)
	}
}

func TestFullBufferDropsAndCounts(t *testing.T) {
	h := newHarness(t, Config{BufferSize: 2})
	// Nothing writes yet, so the buffer fills.
	var errs []error
	for i := range 5 {
		errs = append(errs, h.l.Log(t.Context(), testEvent(t, i, "/orders")))
	}
	for i, err := range errs {
		if wantDrop := i >= 2; errors.Is(err, ErrBufferFull) != wantDrop || (!wantDrop && err != nil) {
			t.Errorf("Log #%d = %v, want dropped %v", i, err, wantDrop)
		}
	}
	h.start(t)
	h.stopAndWait(t)

	size, err := os.Stat(h.path)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`
# HELP decision_log_bytes_written_total Bytes of decision-log records written to the log file.
# TYPE decision_log_bytes_written_total counter
decision_log_bytes_written_total %d
# HELP decision_logs_dropped_total Decision-log events not written, by reason (buffer_full, policy, error, timeout, closed).
# TYPE decision_logs_dropped_total counter
decision_logs_dropped_total{reason="buffer_full"} 3
decision_logs_dropped_total{reason="closed"} 0
decision_logs_dropped_total{reason="error"} 0
decision_logs_dropped_total{reason="policy"} 0
decision_logs_dropped_total{reason="timeout"} 0
# HELP decision_logs_written_total Decision-log records written to the log file.
# TYPE decision_logs_written_total counter
decision_logs_written_total 2
`, size.Size())
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestLogAfterRun(t *testing.T) {
	h := newHarness(t, Config{})
	h.start(t)
	h.stopAndWait(t)
	if err := h.l.Log(t.Context(), Event{DecisionID: "late"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Log after Run = %v, want ErrClosed", err)
	}
	if got := testutil.ToFloat64(h.l.m.dropped.WithLabelValues(DropClosed)); got != 1 {
		t.Errorf("dropped{closed} = %v, want 1", got)
	}
	if err := h.l.Run(t.Context()); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
}

// Every event Log accepts is either written or counted as dropped.
func TestEveryDropCounted(t *testing.T) {
	tests := []struct {
		name       string
		run        func(t *testing.T, h *harness) // logs events and stops the Logger
		logged     float64
		wantReason string
	}{
		{
			name: "lossless Log gives up when its context ends",
			run: func(t *testing.T, h *harness) {
				h.logAll(t, testEvent(t, 0, "/orders")) // fills the buffer
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				if err := h.l.Log(ctx, testEvent(t, 1, "/orders")); !errors.Is(err, context.Canceled) {
					t.Errorf("Log with an ended context = %v, want context.Canceled", err)
				}
				h.start(t)
				h.stopAndWait(t)
			},
			logged: 2, wantReason: DropTimeout,
		},
		{
			name: "Log after Run returned",
			run: func(t *testing.T, h *harness) {
				h.start(t)
				h.logAll(t, testEvent(t, 0, "/orders"))
				h.stopAndWait(t)
				if err := h.l.Log(t.Context(), testEvent(t, 1, "/orders")); !errors.Is(err, ErrClosed) {
					t.Errorf("Log after Run = %v, want ErrClosed", err)
				}
			},
			logged: 2, wantReason: DropClosed,
		},
		{
			name: "queued when Run fails to open the log",
			run: func(t *testing.T, h *harness) {
				h.logAll(t, testEvent(t, 0, "/orders"))
				if err := os.Remove(filepath.Dir(h.path)); err != nil {
					t.Fatal(err)
				}
				if err := h.l.Run(t.Context()); err == nil {
					t.Error("Run without the log's directory succeeded")
				}
			},
			logged: 1, wantReason: DropClosed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{BufferSize: 1, Lossless: true})
			tt.run(t, h)
			written := testutil.ToFloat64(h.l.m.written)
			var dropped float64
			for _, r := range []string{DropBufferFull, DropPolicy, DropError, DropTimeout, DropClosed} {
				dropped += testutil.ToFloat64(h.l.m.dropped.WithLabelValues(r))
			}
			if written+dropped != tt.logged {
				t.Errorf("written %v + dropped %v != %v events logged", written, dropped, tt.logged)
			}
			if got := testutil.ToFloat64(h.l.m.dropped.WithLabelValues(tt.wantReason)); got != 1 {
				t.Errorf("dropped{%s} = %v, want 1", tt.wantReason, got)
			}
		})
	}
}

func TestRunFailsOnUnopenableFile(t *testing.T) {
	h := newHarness(t, Config{Path: t.TempDir() + "/missing-dir/decisions.log"})
	err := h.l.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "missing-dir") {
		t.Errorf("Run = %v, want an error naming the path", err)
	}
}

func TestShouldLog(t *testing.T) {
	deny := authz.Decision{Allowed: false, Status: 403}
	allow := authz.Decision{Allowed: true, Status: 200}
	allowDry := allow
	allowDry.DryRun = authz.DryRun{Allowed: false, Matches: []authz.Match{{Policy: "ns/dry", Rule: 0, DryRun: true}}}
	tests := []struct {
		name string
		cfg  Config
		d    authz.Decision
		want bool
	}{
		{name: "defaults log denies", d: deny, want: true},
		{name: "defaults skip allows", d: allow, want: false},
		{name: "defaults log dry-run hits", d: allowDry, want: true},
		{name: "denies off", cfg: Config{LogDenies: new(false)}, d: deny, want: false},
		{name: "dry-run off", cfg: Config{LogDryRun: new(false)}, d: allowDry, want: false},
		{name: "allows on", cfg: Config{LogAllows: new(true)}, d: allow, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Path = "unused.log"
			l, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got := l.ShouldLog(tt.d); got != tt.want {
				t.Errorf("ShouldLog = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no path", cfg: Config{}, want: "Path is required"},
		{name: "negative size", cfg: Config{Path: "x", MaxBytes: -1}, want: "MaxBytes must be positive"},
		{name: "negative buffer", cfg: Config{Path: "x", BufferSize: -1}, want: "BufferSize must be positive"},
		{name: "policy package", cfg: Config{Path: "x", Policy: "package foo\nmask contains \"/input/x\""}, want: "want system.log"},
		{name: "policy syntax", cfg: Config{Path: "x", Policy: "package system.log\nmask contains"}, want: "decision log policy"},
		{name: "policy without rules", cfg: Config{Path: "x", Policy: "package system.log\nmasks := 1"}, want: "neither a mask nor a drop rule"},
		{name: "policy uses the network", cfg: Config{Path: "x", Policy: "package system.log\ndrop if http.send({\"method\": \"GET\", \"url\": \"http://x\"}).status_code == 200"}, want: "http.send"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func BenchmarkLog(b *testing.B) {
	for _, bc := range []struct {
		name   string
		policy string
	}{
		{name: "builtin masks"},
		{name: "with policy", policy: `package system.log
mask contains "/input/attributes/request/http/headers/x-secret"
mask contains {"op": "upsert", "path": "/input/attributes/source/address", "value": "x"}
drop if input.rampart.policy == "ns/noisy"
`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l, err := New(Config{Path: b.TempDir() + "/decisions.log", Lossless: true, BufferSize: 1024, Policy: bc.policy})
			if err != nil {
				b.Fatal(err)
			}
			e := testEvent(b, 1, "/orders")
			ctx, cancel := context.WithCancel(b.Context())
			ended := make(chan error, 1)
			go func() { ended <- l.Run(ctx) }()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := l.Log(b.Context(), e); err != nil {
					b.Fatal(err)
				}
			}
			cancel() // Run drains the buffer and syncs: the time includes every write
			if err := <-ended; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if got := testutil.ToFloat64(l.m.written); got != float64(b.N) {
				b.Fatalf("written %v, want %d", got, b.N)
			}
		})
	}
}

func TestRequestMeta(t *testing.T) {
	tests := []struct {
		name string
		req  authz.Request
		want Meta
	}{
		{
			name: "kubernetes identity",
			req: authz.Request{ID: "r1", SourcePrincipal: "spiffe://cluster.local/ns/shop/sa/frontend",
				Workload: authz.Workload{Namespace: "shop", Name: "orders"}},
			want: Meta{RequestID: "r1", SourcePrincipal: "spiffe://cluster.local/ns/shop/sa/frontend",
				SourceWorkload: "shop/frontend", DestinationWorkload: "shop/orders"},
		},
		{
			name: "other SPIFFE path",
			req:  authz.Request{ID: "r2", SourcePrincipal: "spiffe://example.org/workload/web"},
			want: Meta{RequestID: "r2", SourcePrincipal: "spiffe://example.org/workload/web"},
		},
		{
			name: "longer path",
			req:  authz.Request{ID: "r3", SourcePrincipal: "spiffe://example.org/ns/a/sa/b/c"},
			want: Meta{RequestID: "r3", SourcePrincipal: "spiffe://example.org/ns/a/sa/b/c"},
		},
		{
			name: "plaintext peer",
			req:  authz.Request{ID: "r4"},
			want: Meta{RequestID: "r4"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RequestMeta(&tt.req); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("RequestMeta = %+v\nwant          %+v", got, tt.want)
			}
		})
	}
}
