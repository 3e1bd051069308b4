package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/rampart-mesh/rampart/authz"
)

// Config configures a Logger.
type Config struct {
	// Path is the current log file. Rotated files are Path.1 (newest) to
	// Path.MaxFiles (oldest). Its directory must exist.
	Path string
	// MaxBytes is the size at which the current file is rotated. Default 100 MiB.
	MaxBytes int64
	// MaxFiles is how many rotated files are kept besides the current one.
	// Default 5.
	MaxFiles int
	// BufferSize is how many events may wait for the writer. Default 10000.
	BufferSize int
	// Lossless makes Log wait for room in a full buffer instead of dropping.
	Lossless bool
	// FlushInterval bounds how long a record may sit in memory before it is
	// written and synced to the file. Default 1 s.
	FlushInterval time.Duration

	// LogDenies, LogDryRun and LogAllows select what ShouldLog accepts: denials
	// (default true), decisions a dry-run policy matched (default true), and
	// allowed requests (default false).
	LogDenies *bool
	LogDryRun *bool
	LogAllows *bool

	// Labels are added to every event's labels (the event's own win), e.g.
	// the sidecar's id and version.
	Labels map[string]string
	// Policy is an optional Rego module, "package system.log", with OPA's mask
	// and drop rules.
	Policy string
	// PolicyFile names Policy in errors (default decision_log_policy.rego).
	PolicyFile string

	Log     *slog.Logger
	Clock   clock.WithTicker
	Metrics prometheus.Registerer
}

// Logger writes decision-log events to a hash-chained, rotating file. Log may
// be called from any goroutine; Run does the writing.
type Logger struct {
	cfg    Config
	log    *slog.Logger
	clock  clock.WithTicker
	m      *metrics
	policy *policy // nil without Config.Policy

	queue    chan *Event   // pointers: an idle buffer of 10,000 slots costs 80 KB, not megabytes
	done     chan struct{} // closed when Run has drained and returns
	started  atomic.Bool
	closing  atomic.Bool
	inflight atomic.Int64
	head     atomic.Pointer[Head]

	// Owned by Run's goroutine.
	file    file
	buf     []byte // the record being encoded
	failing bool   // the file is unusable; logged once until it recovers

	// Test hooks, called on Run's goroutine: after a record is buffered, and
	// after each flush attempt.
	afterWrite func(Event)
	afterFlush func()
}

// Head is the newest record of the chain. Anchor it outside the file to detect
// removal of the newest records.
type Head struct {
	Seq  uint64
	Hash string
}

// Errors returned by Log and Run. Callers match them with errors.Is.
var (
	ErrBufferFull = errors.New("decision log buffer is full; event dropped")
	ErrClosed     = errors.New("decision log is closed")
	ErrRunning    = errors.New("decision log is already running")
)

// New validates cfg, fills defaults and compiles the policy. It does no I/O.
func New(cfg Config) (*Logger, error) {
	if cfg.Path == "" {
		return nil, errors.New("decision log: Path is required")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 100 << 20
	}
	if cfg.MaxFiles == 0 {
		cfg.MaxFiles = 5
	}
	if cfg.BufferSize == 0 {
		cfg.BufferSize = 10000
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Second
	}
	for name, v := range map[string]int64{"MaxBytes": cfg.MaxBytes, "MaxFiles": int64(cfg.MaxFiles), "BufferSize": int64(cfg.BufferSize)} {
		if v < 0 {
			return nil, fmt.Errorf("decision log: %s must be positive, got %d", name, v)
		}
	}
	if cfg.FlushInterval < 0 {
		return nil, fmt.Errorf("decision log: FlushInterval must be positive, got %s", cfg.FlushInterval)
	}
	if cfg.LogDenies == nil {
		cfg.LogDenies = new(true)
	}
	if cfg.LogDryRun == nil {
		cfg.LogDryRun = new(true)
	}
	if cfg.LogAllows == nil {
		cfg.LogAllows = new(false)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	l := &Logger{
		cfg:   cfg,
		log:   cfg.Log.With("component", "decisionlog"),
		clock: cfg.Clock,
		queue: make(chan *Event, cfg.BufferSize),
		done:  make(chan struct{}),
	}
	if cfg.Policy != "" {
		p, err := compilePolicy(cfg.PolicyFile, cfg.Policy)
		if err != nil {
			return nil, fmt.Errorf("decision log policy: %w", err)
		}
		l.policy = p
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("decision log: %w", err)
	}
	l.m = m
	l.file = file{path: cfg.Path, maxBytes: cfg.MaxBytes, maxFiles: cfg.MaxFiles, log: l.log, m: m, prev: GenesisHash}
	return l, nil
}

// ShouldLog reports whether d is one of the decisions the Config selects. Log
// itself does not filter; callers ask ShouldLog first.
func (l *Logger) ShouldLog(d authz.Decision) bool {
	return !d.Allowed && *l.cfg.LogDenies ||
		len(d.DryRun.Matches) > 0 && *l.cfg.LogDryRun ||
		d.Allowed && *l.cfg.LogAllows
}

// Head returns the newest record written (to the file or its write buffer),
// zero before the first.
func (l *Logger) Head() Head {
	if h := l.head.Load(); h != nil {
		return *h
	}
	return Head{}
}

// Log queues e for writing and returns without waiting for the write. A zero
// Timestamp means now. The Logger reads e's maps and slices (Input, Result,
// Labels) later, on Run's goroutine: the caller must not modify them after Log.
//
// When the buffer is full, Log drops e and returns ErrBufferFull — or, with
// Config.Lossless, waits for room until ctx ends and then drops e and returns
// ctx's error. After Run has returned, Log drops e and returns ErrClosed. Every
// drop is counted in decision_logs_dropped_total (reasons buffer_full, timeout
// and closed): callers need not log it.
func (l *Logger) Log(ctx context.Context, e Event) error {
	l.inflight.Add(1)
	defer l.inflight.Add(-1)
	if l.closing.Load() {
		l.m.dropped.WithLabelValues(DropClosed).Inc()
		return ErrClosed
	}
	if e.Timestamp.IsZero() {
		e.Timestamp = l.clock.Now()
	}
	select {
	case l.queue <- &e:
		return nil
	default:
	}
	if !l.cfg.Lossless {
		l.m.dropped.WithLabelValues(DropBufferFull).Inc()
		return ErrBufferFull
	}
	select {
	case l.queue <- &e:
		return nil
	case <-l.done:
		l.m.dropped.WithLabelValues(DropClosed).Inc()
		return ErrClosed
	case <-ctx.Done():
		l.m.dropped.WithLabelValues(DropTimeout).Inc()
		return fmt.Errorf("log decision %s: %w", e.DecisionID, context.Cause(ctx))
	}
}

// Run opens the log (continuing the chain already on disk) and writes queued
// events until ctx ends; then it writes what is still queued, syncs and closes
// the file, and returns nil. It returns an error if the policy cannot be
// prepared or the log cannot be opened, or if the final sync fails. Write errors
// while running are logged and counted; the file is reopened and the chain
// continues from what reached it.
func (l *Logger) Run(ctx context.Context) error {
	if !l.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer l.discardQueued()
	if l.policy != nil {
		if err := l.policy.prepare(ctx); err != nil {
			return fmt.Errorf("decision log policy: %w", err)
		}
	}
	if err := l.file.open(); err != nil {
		return fmt.Errorf("decision log %s: %w", l.cfg.Path, err)
	}
	l.publishHead()
	ticker := l.clock.NewTicker(l.cfg.FlushInterval)
	defer ticker.Stop()
	// An event being processed is finished even if ctx ends meanwhile (the
	// policy has no network builtins, so evaluation cannot hang).
	work := context.WithoutCancel(ctx)
	for {
		select {
		case e := <-l.queue:
			l.process(work, *e)
		case <-ticker.C():
			l.flush()
		case <-ctx.Done():
			return l.shutdown(work)
		}
	}
}

// shutdown writes everything queued, including events of Log calls still in
// flight, then syncs and closes the file.
func (l *Logger) shutdown(ctx context.Context) error {
	l.closing.Store(true)
	for {
		select {
		case e := <-l.queue:
			l.process(ctx, *e)
			continue
		default:
		}
		// A Log that has not yet seen closing is counted in inflight, and one
		// that has sent is in the queue: stop when neither can add more.
		if l.inflight.Load() == 0 && len(l.queue) == 0 {
			break
		}
		runtime.Gosched()
	}
	if err := l.file.close(); err != nil {
		l.file.fail()
		return fmt.Errorf("decision log %s: %w", l.cfg.Path, err)
	}
	if l.afterFlush != nil {
		l.afterFlush()
	}
	return nil
}

// discardQueued closes the Logger for good when Run returns: later Log calls
// fail, and events still queued (Run failed before writing them, or a Log
// raced with the shutdown) are counted as dropped, reason closed.
func (l *Logger) discardQueued() {
	l.closing.Store(true)
	close(l.done)
	for {
		select {
		case <-l.queue:
			l.m.dropped.WithLabelValues(DropClosed).Inc()
			continue
		default:
		}
		if l.inflight.Load() == 0 && len(l.queue) == 0 {
			return
		}
		runtime.Gosched()
	}
}

func (l *Logger) flush() {
	if l.afterFlush != nil {
		defer l.afterFlush()
	}
	if l.file.f == nil {
		l.reopen()
		return
	}
	if err := l.file.flush(true); err != nil {
		l.fileFailed(err)
	}
}

func (l *Logger) process(ctx context.Context, e Event) {
	drop, err := l.prepare(ctx, &e)
	switch {
	case err != nil:
		l.m.dropped.WithLabelValues(DropError).Inc()
		l.log.Error("decision log event dropped", "decision_id", e.DecisionID, "err", err)
		return
	case drop:
		l.m.dropped.WithLabelValues(DropPolicy).Inc()
		return
	}
	if l.file.f == nil && !l.reopen() {
		l.m.dropped.WithLabelValues(DropError).Inc()
		return
	}
	e.Seq, e.PrevHash = l.file.seq+1, l.file.prev
	line, h, err := encodeRecord(l.buf[:0], &e)
	l.buf = line[:0]
	if err != nil {
		l.m.dropped.WithLabelValues(DropError).Inc()
		l.log.Error("decision log event dropped", "decision_id", e.DecisionID, "err", err)
		return
	}
	if err := l.file.append(line, e.Seq, h); err != nil {
		l.m.dropped.WithLabelValues(DropError).Inc()
		l.fileFailed(err)
		return
	}
	l.publishHead()
	if cap(l.buf) > 4*writeBufferSize {
		l.buf = nil // do not keep one huge event's buffer
	}
	if l.afterWrite != nil {
		l.afterWrite(e)
	}
}

// publishHead publishes the chain's newest record as the file knows it: after
// a write failure that is the last record that reached the disk, or none.
func (l *Logger) publishHead() {
	if l.file.seq == 0 {
		l.head.Store(nil)
		return
	}
	l.head.Store(&Head{Seq: l.file.seq, Hash: l.file.prev})
}

func (l *Logger) fileFailed(err error) {
	l.file.fail()
	l.log.Error("decision log write failed; reopening, buffered records are lost", "file", l.cfg.Path, "err", err)
	l.failing = true
	l.reopen()
}

// reopen tries to open the file again after a failure, continuing the chain
// from what reached it.
func (l *Logger) reopen() bool {
	if err := l.file.open(); err != nil {
		if !l.failing {
			l.log.Error("decision log cannot be opened; dropping events until it can", "file", l.cfg.Path, "err", err)
		}
		l.failing = true
		return false
	}
	// Records buffered when the file failed are lost: the chain, and Head,
	// continue from what reached the disk.
	l.publishHead()
	if l.failing {
		l.log.Info("decision log reopened", "file", l.cfg.Path, "seq", l.file.seq)
	}
	l.failing = false
	return true
}

// prepare turns a queued event into the one to write: UTC time, labels, a
// private copy of the input, the built-in masks, then (with a policy, on a
// private copy of the result too) the policy's drop and mask. drop reports that
// the policy dropped it.
func (l *Logger) prepare(ctx context.Context, e *Event) (drop bool, err error) {
	e.Timestamp = e.Timestamp.UTC()
	labels := make(map[string]string, len(l.cfg.Labels)+len(e.Labels))
	maps.Copy(labels, l.cfg.Labels)
	maps.Copy(labels, e.Labels)
	e.Labels = labels
	if e.Input, err = clone(e.Input); err != nil {
		return false, fmt.Errorf("copy input: %w", err)
	}
	// The result is masked too (a CUSTOM provider's headers, reason and body
	// can quote credentials): it needs a private generic copy.
	if e.Result, err = clone(e.Result); err != nil {
		return false, fmt.Errorf("copy result: %w", err)
	}
	e.Erased, e.Masked = slices.Clip(e.Erased), slices.Clip(e.Masked)
	maskBuiltin(e)
	if l.policy == nil {
		return false, nil
	}
	doc, err := policyInput(e)
	if err != nil {
		return false, err
	}
	drop, rules, err := l.policy.eval(ctx, doc)
	if err != nil || drop {
		return drop, err
	}
	for i := range rules {
		rules[i].apply(e)
	}
	return false, nil
}

// policyInput is the event as JSON, without the chain fields, which are not
// known yet.
func policyInput(e *Event) (map[string]any, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode event for the policy: %w", err)
	}
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decode event for the policy: %w", err)
	}
	delete(doc, "seq")
	delete(doc, "prev_hash")
	delete(doc, "hash")
	return doc, nil
}

// clone returns a private generic JSON copy of v: maps, slices and scalars
// are copied directly, OPA values converted, anything else (structs such as
// authz.Decision) goes through encoding/json.
func clone(v any) (any, error) {
	switch x := v.(type) {
	case nil, string, bool, json.Number, float64, float32, int, int8, int16, int32, int64,
		uint, uint8, uint16, uint32, uint64:
		return x, nil
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, c := range x {
			cc, err := clone(c)
			if err != nil {
				return nil, err
			}
			m[k] = cc
		}
		return m, nil
	case []any:
		s := make([]any, len(x))
		for i, c := range x {
			cc, err := clone(c)
			if err != nil {
				return nil, err
			}
			s[i] = cc
		}
		return s, nil
	case map[string]string:
		m := make(map[string]any, len(x))
		for k, c := range x {
			m[k] = c
		}
		return m, nil
	case []string:
		s := make([]any, len(x))
		for i, c := range x {
			s[i] = c
		}
		return s, nil
	case ast.Value: // authz keeps the input as the AST it evaluated
		return ast.JSON(x)
	case authz.Decision:
		// encoding/json would turn invalid UTF-8 in a provider's header names
		// into U+FFFD and keep one of the headers that then collide; copy them
		// as they are, for maskBuiltin to escape.
		h := x.Headers
		x.Headers = nil
		out, err := cloneJSON(x)
		if m, ok := out.(map[string]any); ok && len(h) > 0 {
			m["headers"], _ = clone(h)
		}
		return out, err
	}
	return cloneJSON(v)
}

// cloneJSON copies v through encoding/json.
func cloneJSON(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		return nil, err
	}
	return out, nil
}
