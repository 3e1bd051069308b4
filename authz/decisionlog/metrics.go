package decisionlog

import "github.com/prometheus/client_golang/prometheus"

// Reasons an event is dropped (the reason label of decision_logs_dropped_total).
const (
	DropBufferFull = "buffer_full" // the buffer was full and Lossless is off
	DropPolicy     = "policy"      // data.system.log.drop was true
	DropError      = "error"       // masking, encoding or writing failed
	DropTimeout    = "timeout"     // Lossless: the caller's context ended while Log waited for room
	DropClosed     = "closed"      // Log was called after Run returned
)

type metrics struct {
	written prometheus.Counter
	dropped *prometheus.CounterVec
	bytes   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decision_logs_written_total",
			Help: "Decision-log records written to the log file.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decision_logs_dropped_total",
			Help: "Decision-log events not written, by reason (buffer_full, policy, error, timeout, closed).",
		}, []string{"reason"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "decision_log_bytes_written_total",
			Help: "Bytes of decision-log records written to the log file.",
		}),
	}
	for _, c := range []prometheus.Collector{m.written, m.dropped, m.bytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{DropBufferFull, DropPolicy, DropError, DropTimeout, DropClosed} {
		m.dropped.WithLabelValues(r)
	}
	return m, nil
}
