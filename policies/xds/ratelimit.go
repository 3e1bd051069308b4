package xds

import (
	"encoding/json"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/policies/compile"
	"github.com/rampart-mesh/rampart/policies/source"
)

// rateLimitFindings validates every RateLimitPolicy; reload refuses a change
// with an error among them, as it does for networking findings.
func rateLimitFindings(objs []source.Object) []compile.Finding {
	_, fs := compile.DecodeRateLimitPolicies(objs, "default")
	return fs
}

// rateLimits returns the limits that apply to wl and their JSON, which goes
// into the bundle revision so a changed limit is a new bundle.
func rateLimits(objs []source.Object, mesh compile.Mesh, wl compile.Workload) ([]authz.RateLimit, []byte, error) {
	pols, _ := compile.DecodeRateLimitPolicies(objs, "default")
	rls := compile.RateLimits(pols, mesh, wl)
	js, err := json.Marshal(rls)
	return rls, js, err
}
