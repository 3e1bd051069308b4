package route

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Names of the HTTP filters whose per-route configuration this package reads
// from typed_per_filter_config.
const (
	FaultFilter = "envoy.filters.http.fault"
	CorsFilter  = "envoy.filters.http.cors"
)

// Fraction is a probability, Numerator/Denominator, as Envoy's
// FractionalPercent (denominator 100, 10,000 or 1,000,000).
type Fraction struct {
	Numerator, Denominator uint32
}

// Hit reports whether an event with this probability happens for a uniform
// random rnd: rnd % Denominator < Numerator, as Envoy's featureEnabled. A
// numerator above the denominator always hits; the zero Fraction never does.
func (f Fraction) Hit(rnd uint64) bool {
	if f.Denominator == 0 {
		return false
	}
	return rnd%uint64(f.Denominator) < uint64(f.Numerator)
}

var always = Fraction{Numerator: 100, Denominator: 100}

func fraction(p *typev3.FractionalPercent) (Fraction, error) {
	if p == nil {
		return Fraction{Denominator: 100}, nil
	}
	switch p.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		return Fraction{p.GetNumerator(), 100}, nil
	case typev3.FractionalPercent_TEN_THOUSAND:
		return Fraction{p.GetNumerator(), 10_000}, nil
	case typev3.FractionalPercent_MILLION:
		return Fraction{p.GetNumerator(), 1_000_000}, nil
	}
	return Fraction{}, fmt.Errorf("unknown denominator %d", p.GetDenominator())
}

// runtimeFraction is a RuntimeFractionalPercent's default value (there is no
// runtime here); absent means always.
func runtimeFraction(p *corev3.RuntimeFractionalPercent) (Fraction, error) {
	if p == nil {
		return always, nil
	}
	if p.GetDefaultValue() == nil {
		return Fraction{}, errors.New("default_value is missing")
	}
	return fraction(p.GetDefaultValue())
}

// Fault is a route's fault injection: the most specific
// typed_per_filter_config["envoy.filters.http.fault"] (an
// envoy.extensions.filters.http.fault.v3.HTTPFault) of the route, its virtual
// host or its route configuration. A percentage that is not set is 0%, as in
// Envoy.
type Fault struct {
	Delay        time.Duration // fixed_delay; 0 when no delay is configured
	DelayPercent Fraction
	// The abort: an HTTP status, or (AbortGRPC) a gRPC status sent in a
	// trailers-only response.
	AbortStatus     int
	AbortGRPC       bool
	AbortGRPCStatus int
	AbortPercent    Fraction
	AbortBody       string // Envoy's default is "fault filter abort"
	MaxActive       uint32 // max_active_faults; 0 is unlimited
	active          *atomic.Int64
}

// Enter reports whether a fault may be injected into one more request, and
// counts it active until Leave; past MaxActive it is not (Envoy's
// faults_overflow: the request goes on unfaulted).
func (f *Fault) Enter() bool {
	if f.active == nil {
		f.active = new(atomic.Int64) // a Fault built in code, not compiled
	}
	if n := f.active.Add(1); f.MaxActive > 0 && n > int64(f.MaxActive) {
		f.active.Add(-1)
		return false
	}
	return true
}

// Leave ends a fault Enter let in.
func (f *Fault) Leave() { f.active.Add(-1) }

// ShouldDelay reports, for a uniform random rnd, whether this request is
// delayed (by f.Delay).
func (f *Fault) ShouldDelay(rnd uint64) bool {
	return f != nil && f.Delay > 0 && f.DelayPercent.Hit(rnd)
}

// ShouldAbort reports, for a uniform random rnd (drawn independently of
// ShouldDelay's), whether this request is aborted.
func (f *Fault) ShouldAbort(rnd uint64) bool {
	return f != nil && (f.AbortStatus != 0 || f.AbortGRPC) && f.AbortPercent.Hit(rnd)
}

func compileFault(at loc, field string, a *anypb.Any) (*Fault, error) {
	hf := &faultv3.HTTPFault{}
	if err := unmarshalAny(a, hf); err != nil {
		return nil, at.err(field, err)
	}
	switch {
	case hf.GetUpstreamCluster() != "":
		return nil, at.unsupported(field+".upstream_cluster", "faults restricted to an upstream cluster")
	case len(hf.GetHeaders()) > 0:
		return nil, at.unsupported(field+".headers", "faults restricted by headers (use the route match)")
	case len(hf.GetDownstreamNodes()) > 0:
		return nil, at.unsupported(field+".downstream_nodes", "faults restricted to downstream nodes")
	case hf.GetResponseRateLimit() != nil:
		return nil, at.unsupported(field+".response_rate_limit", "response rate-limit faults")
	}
	f := &Fault{AbortBody: "fault filter abort", MaxActive: hf.GetMaxActiveFaults().GetValue(), active: new(atomic.Int64)}
	var err error
	if d := hf.GetDelay(); d != nil {
		switch s := d.GetFaultDelaySecifier().(type) {
		case *faultcommonv3.FaultDelay_FixedDelay:
			if f.Delay, err = duration(s.FixedDelay); err != nil || f.Delay <= 0 {
				return nil, at.err(field+".delay.fixed_delay", orErr(err, errors.New("must be greater than 0")))
			}
		case *faultcommonv3.FaultDelay_HeaderDelay_:
			return nil, at.unsupported(field+".delay.header_delay", "header-controlled delays")
		default:
			return nil, at.errf(field+".delay", "no delay type: set fixed_delay")
		}
		if f.DelayPercent, err = fraction(d.GetPercentage()); err != nil {
			return nil, at.err(field+".delay.percentage", err)
		}
	}
	if ab := hf.GetAbort(); ab != nil {
		switch s := ab.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			if s.HttpStatus < 200 || s.HttpStatus > 599 {
				return nil, at.errf(field+".abort.http_status", "%d is not in [200, 600)", s.HttpStatus)
			}
			f.AbortStatus = int(s.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			f.AbortGRPC, f.AbortGRPCStatus = true, int(s.GrpcStatus)
		case *faultv3.FaultAbort_HeaderAbort_:
			return nil, at.unsupported(field+".abort.header_abort", "header-controlled aborts")
		default:
			return nil, at.errf(field+".abort", "no error type: set http_status or grpc_status")
		}
		if f.AbortPercent, err = fraction(ab.GetPercentage()); err != nil {
			return nil, at.err(field+".abort.percentage", err)
		}
		if ab.GetResponseBody() != "" {
			f.AbortBody = ab.GetResponseBody()
		}
	}
	if hf.GetDelay() == nil && hf.GetAbort() == nil {
		return nil, nil
	}
	return f, nil
}

const filterConfigName = "envoy.config.route.v3.FilterConfig"

// perFilter is one level's typed_per_filter_config entry for a filter,
// unwrapped from a FilterConfig if it is one.
type perFilter struct {
	field    string
	cfg      *anypb.Any // nil when the level only disables or enables the filter
	disabled *bool      // set only by a FilterConfig wrapper
}

// lookupPerFilter reads key from each level's typed_per_filter_config, most
// specific level first, and reports whether the filter is disabled for the
// route (the most specific FilterConfig wrapper with an opinion decides).
func lookupPerFilter(at loc, key string, levels []filterLevel) ([]perFilter, bool, error) {
	var out []perFilter
	disabled, decided := false, false
	for _, l := range levels {
		a, ok := l.configs[key]
		if !ok {
			continue
		}
		pf := perFilter{field: fmt.Sprintf("%styped_per_filter_config[%q]", l.prefix, key), cfg: a}
		if typeName(a) == filterConfigName {
			fc := &routev3.FilterConfig{}
			if err := unmarshalAny(a, fc); err != nil {
				return nil, false, at.err(pf.field, err)
			}
			d := fc.GetDisabled()
			pf.cfg, pf.disabled = fc.GetConfig(), &d
			pf.field += ".config"
			if !decided {
				disabled, decided = d, true
			}
		}
		if pf.cfg != nil {
			out = append(out, pf)
		}
	}
	return out, disabled, nil
}

type filterLevel struct {
	prefix  string // field prefix ("" for the innermost object named by loc)
	configs map[string]*anypb.Any
}

// typeName is the message name of an Any's type URL (what follows the last "/").
func typeName(a *anypb.Any) string {
	u := a.GetTypeUrl()
	return u[strings.LastIndexByte(u, '/')+1:]
}

func unmarshalAny(a *anypb.Any, m proto.Message) error {
	want := string(m.ProtoReflect().Descriptor().FullName())
	if typeName(a) != want {
		return fmt.Errorf("type %q: want %s", a.GetTypeUrl(), want)
	}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return fmt.Errorf("decode %s: %w", a.GetTypeUrl(), err)
	}
	return nil
}
