package route

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Cors is a route's CORS policy. Envoy's CORS filter takes each field from
// the most specific policy that sets it: typed_per_filter_config
// ["envoy.filters.http.cors"] (envoy.extensions.filters.http.cors.v3.CorsPolicy)
// of the route, then its virtual host, then its route configuration; only when
// none of those exists, the deprecated cors field of the route action, then
// of the virtual host. Enabled and Shadow come from the most specific policy.
type Cors struct {
	AllowOrigins                 []StringMatcher
	AllowMethods                 string
	AllowHeaders                 string
	ExposeHeaders                string
	MaxAge                       string
	AllowCredentials             bool
	AllowPrivateNetworkAccess    bool
	ForwardNotMatchingPreflights bool     // Envoy's default is true
	Enabled                      Fraction // filter_enabled; 100% when unset
	Shadow                       Fraction // shadow_enabled; 0% when unset
}

// AllowsOrigin reports whether origin matches one of AllowOrigins.
func (c *Cors) AllowsOrigin(origin string) bool {
	if c == nil {
		return false
	}
	for i := range c.AllowOrigins {
		if c.AllowOrigins[i].Match(origin) {
			return true
		}
	}
	return false
}

// corsFields is what the two CorsPolicy messages (the route's deprecated one
// and the CORS filter's) have in common.
type corsFields interface {
	GetAllowOriginStringMatch() []*matcherv3.StringMatcher
	GetAllowMethods() string
	GetAllowHeaders() string
	GetExposeHeaders() string
	GetMaxAge() string
	GetAllowCredentials() *wrapperspb.BoolValue
	GetFilterEnabled() *corev3.RuntimeFractionalPercent
	GetShadowEnabled() *corev3.RuntimeFractionalPercent
	GetAllowPrivateNetworkAccess() *wrapperspb.BoolValue
	GetForwardNotMatchingPreflights() *wrapperspb.BoolValue
}

var (
	_ corsFields = (*routev3.CorsPolicy)(nil)
	_ corsFields = (*corsv3.CorsPolicy)(nil)
)

type corsSource struct {
	field  string
	policy corsFields
}

// mergeCors builds the effective policy from sources, most specific first.
func mergeCors(at loc, sources []corsSource) (*Cors, error) {
	if len(sources) == 0 {
		return nil, nil
	}
	c := &Cors{ForwardNotMatchingPreflights: true}
	var err error
	if c.Enabled, err = runtimeFraction(sources[0].policy.GetFilterEnabled()); err != nil {
		return nil, at.err(sources[0].field+".filter_enabled", err)
	}
	c.Shadow = Fraction{Denominator: 100}
	if s := sources[0].policy.GetShadowEnabled(); s != nil {
		if c.Shadow, err = runtimeFraction(s); err != nil {
			return nil, at.err(sources[0].field+".shadow_enabled", err)
		}
	}
	var origins, methods, headers, expose, maxAge, creds, pna, fwd bool
	for _, s := range sources {
		p := s.policy
		if !origins && len(p.GetAllowOriginStringMatch()) > 0 {
			origins = true
			for i, m := range p.GetAllowOriginStringMatch() {
				sm, err := compileStringMatcher(m)
				if err != nil {
					return nil, at.err(fmt.Sprintf("%s.allow_origin_string_match[%d]", s.field, i), err)
				}
				c.AllowOrigins = append(c.AllowOrigins, sm)
			}
		}
		setString(&methods, &c.AllowMethods, p.GetAllowMethods())
		setString(&headers, &c.AllowHeaders, p.GetAllowHeaders())
		setString(&expose, &c.ExposeHeaders, p.GetExposeHeaders())
		setString(&maxAge, &c.MaxAge, p.GetMaxAge())
		setBool(&creds, &c.AllowCredentials, p.GetAllowCredentials())
		setBool(&pna, &c.AllowPrivateNetworkAccess, p.GetAllowPrivateNetworkAccess())
		setBool(&fwd, &c.ForwardNotMatchingPreflights, p.GetForwardNotMatchingPreflights())
	}
	return c, nil
}

func setString(done *bool, dst *string, v string) {
	if !*done && v != "" {
		*dst, *done = v, true
	}
}

func setBool(done *bool, dst *bool, v *wrapperspb.BoolValue) {
	if !*done && v != nil {
		*dst, *done = v.GetValue(), true
	}
}
