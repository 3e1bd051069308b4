package upstream

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/utils/clock"
)

// outlierConfig is outlier_detection with Envoy's defaults filled in. Success
// rate and failure percentage ejection are not implemented; the consecutive
// error detectors are.
type outlierConfig struct {
	consecutive5xx, enforcing5xx         uint32
	consecutiveGateway, enforcingGateway uint32
	split                                bool // split_external_local_origin_errors
	consecutiveLocal, enforcingLocal     uint32
	interval, baseEjection, maxEjection  time.Duration
	maxEjectionPercent                   uint32
	alwaysEjectOne                       bool
}

func parseOutlier(od *clusterv3.OutlierDetection) (*outlierConfig, error) {
	o := &outlierConfig{
		consecutive5xx:     value(od.GetConsecutive_5Xx(), 5),
		enforcing5xx:       value(od.GetEnforcingConsecutive_5Xx(), 100),
		consecutiveGateway: value(od.GetConsecutiveGatewayFailure(), 5),
		enforcingGateway:   value(od.GetEnforcingConsecutiveGatewayFailure(), 0),
		split:              od.GetSplitExternalLocalOriginErrors(),
		consecutiveLocal:   value(od.GetConsecutiveLocalOriginFailure(), 5),
		enforcingLocal:     value(od.GetEnforcingConsecutiveLocalOriginFailure(), 100),
		interval:           10 * time.Second,
		baseEjection:       30 * time.Second,
		maxEjection:        300 * time.Second,
		maxEjectionPercent: value(od.GetMaxEjectionPercent(), 10),
		alwaysEjectOne:     od.GetAlwaysEjectOneHost().GetValue(),
	}
	for _, p := range []struct {
		name string
		v    uint32
	}{
		{"enforcing_consecutive_5xx", o.enforcing5xx},
		{"enforcing_consecutive_gateway_failure", o.enforcingGateway},
		{"enforcing_consecutive_local_origin_failure", o.enforcingLocal},
		{"max_ejection_percent", o.maxEjectionPercent},
	} {
		if p.v > 100 {
			return nil, fmt.Errorf("%s: %d is not a percentage", p.name, p.v)
		}
	}
	if d := od.GetInterval(); d != nil {
		v, err := duration(d, "interval")
		if err != nil {
			return nil, err
		}
		if v > 0 {
			o.interval = v
		}
	}
	if d := od.GetBaseEjectionTime(); d != nil {
		v, err := duration(d, "base_ejection_time")
		if err != nil {
			return nil, err
		}
		if v > 0 {
			o.baseEjection = v
		}
	}
	if d := od.GetMaxEjectionTime(); d != nil {
		v, err := duration(d, "max_ejection_time")
		if err != nil {
			return nil, err
		}
		if v > 0 {
			o.maxEjection = v
		}
	}
	// Envoy: the cap is max_ejection_time or base_ejection_time, whichever is larger.
	o.maxEjection = max(o.maxEjection, o.baseEjection)
	return o, nil
}

func value(v *wrapperspb.UInt32Value, def uint32) uint32 {
	if v == nil {
		return def
	}
	return v.GetValue()
}

// outlier ejects hosts of one cluster that fail in a row, and lets them back
// when their ejection time has passed.
//
// Ejection is immediate when a host reaches a threshold, as in Envoy. Return
// to service is checked when hosts are picked rather than on an interval
// timer (the package runs no goroutines), so a host returns as soon as its
// ejection time has passed instead of at the next sweep. The interval still
// drives the decay of the ejection multiplier: every interval a returned host
// goes without being ejected again takes one off it.
//
// max_ejection_percent is enforced as current Envoy does: an ejection that
// would take the ejected share above it is refused, unless always_eject_one_host
// is set and nothing is ejected yet. (Envoy before 1.31 always allowed the
// first ejection; with the default 10% a cluster of fewer than ten hosts now
// never ejects unless max_ejection_percent is raised, as Istio users do.)
type outlier struct {
	cfg      *outlierConfig
	clock    clock.PassiveClock
	log      *slog.Logger
	cluster  string
	hosts    *atomic.Pointer[endpointSet] // the cluster's current endpoints
	ejection prometheus.Counter

	ejected atomic.Int64 // hosts ejected now, among the current endpoints
	mu      sync.Mutex   // serializes ejection decisions and returns
}

// response records an HTTP response from hs.
func (o *outlier) response(hs *hostState, code int) {
	if o.cfg.split && hs.consLocal.Load() != 0 {
		hs.consLocal.Store(0)
	}
	if code < 500 {
		if hs.cons5xx.Load() != 0 {
			hs.cons5xx.Store(0)
		}
		if hs.consGateway.Load() != 0 {
			hs.consGateway.Store(0)
		}
		return
	}
	o.failure(hs, code == 502 || code == 503 || code == 504)
}

// localFailure records a connect failure, reset or timeout on hs. Without
// split_external_local_origin_errors these count as a 503 (or 504), so they
// feed both the 5xx and the gateway-failure detectors.
func (o *outlier) localFailure(hs *hostState) {
	if !o.cfg.split {
		o.failure(hs, true)
		return
	}
	if n := hs.consLocal.Add(1); o.cfg.consecutiveLocal > 0 && n >= o.cfg.consecutiveLocal {
		o.detect(hs, o.cfg.enforcingLocal, "consecutive_local_origin_failure", &hs.consLocal)
	}
}

// localSuccess records a connection made to hs.
func (o *outlier) localSuccess(hs *hostState) {
	if o.cfg.split && hs.consLocal.Load() != 0 {
		hs.consLocal.Store(0)
	}
}

func (o *outlier) failure(hs *hostState, gateway bool) {
	n5 := hs.cons5xx.Add(1)
	var ng uint32
	if gateway {
		ng = hs.consGateway.Add(1)
	} else if hs.consGateway.Load() != 0 {
		hs.consGateway.Store(0)
	}
	if o.cfg.consecutive5xx > 0 && n5 >= o.cfg.consecutive5xx {
		o.detect(hs, o.cfg.enforcing5xx, "consecutive_5xx", &hs.cons5xx)
	}
	if gateway && o.cfg.consecutiveGateway > 0 && ng >= o.cfg.consecutiveGateway {
		o.detect(hs, o.cfg.enforcingGateway, "consecutive_gateway_failure", &hs.consGateway)
	}
}

// detect acts on a host that reached a threshold: eject it if the detector is
// enforcing and max_ejection_percent allows. A detector that does not enforce
// starts its count again, leaving the others' alone.
func (o *outlier) detect(hs *hostState, enforcing uint32, reason string, count *atomic.Uint32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.clock.Now()
	if u := hs.ejectedUntil.Load(); u != 0 && u > now.UnixNano() {
		return // already out
	}
	if enforcing < 100 && rand.Uint32N(100) >= enforcing {
		count.Store(0)
		return
	}
	o.sweepLocked(now)
	total := int64(len(o.hosts.Load().all))
	ejected := o.ejected.Load()
	if total == 0 {
		return
	}
	if (ejected+1)*100 > int64(o.cfg.maxEjectionPercent)*total && !(o.cfg.alwaysEjectOne && ejected == 0) {
		// Keep the counters: the next failure tries again, and succeeds once
		// another host has come back.
		return
	}
	if !hs.returned.IsZero() {
		decay := int(now.Sub(hs.returned) / o.cfg.interval)
		hs.ejections = max(0, hs.ejections-decay)
	}
	hs.ejections++
	d := min(o.cfg.baseEjection*time.Duration(hs.ejections), o.cfg.maxEjection)
	hs.ejectedUntil.Store(now.Add(d).UnixNano())
	hs.resetCounters()
	o.ejected.Add(1)
	o.ejection.Inc()
	o.log.Info("host ejected", "cluster", o.cluster, "host", hs.addr, "reason", reason, "for", d, "times", hs.ejections)
}

// sweep returns hosts whose ejection time has passed. Picking already treats
// them as in service; this keeps the ejected count true.
func (o *outlier) sweep() {
	if !o.mu.TryLock() {
		return // someone else is at it
	}
	defer o.mu.Unlock()
	o.sweepLocked(o.clock.Now())
}

func (o *outlier) sweepLocked(now time.Time) {
	if o.ejected.Load() == 0 {
		return
	}
	n := now.UnixNano()
	for _, h := range o.hosts.Load().all {
		hs := h.state
		if u := hs.ejectedUntil.Load(); u != 0 && u <= n && hs.ejectedUntil.CompareAndSwap(u, 0) {
			hs.returned = time.Unix(0, u)
			o.ejected.Add(-1)
			o.log.Info("host returned to service", "cluster", o.cluster, "host", hs.addr)
		}
	}
}

// recount sets the ejected count from the current endpoints after an update
// removed or added hosts.
func (o *outlier) recount() {
	o.mu.Lock()
	defer o.mu.Unlock()
	var n int64
	seen := map[*hostState]bool{}
	for _, h := range o.hosts.Load().all {
		if !seen[h.state] && h.state.ejectedUntil.Load() != 0 {
			n++
		}
		seen[h.state] = true
	}
	o.ejected.Store(n)
}
