// Package opacancel ties an OPA evaluation's cancellation to a context
// without the goroutine OPA otherwise starts for every evaluation to watch
// the context. On the request path that goroutine was a spawn, a channel and
// often a scheduler wake-up per first-seen decision.
package opacancel

import (
	"context"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// never is shared by evaluations whose context cannot end: nothing cancels it.
var never = topdown.NewCancel()

// Option returns the evaluation option that cancels the evaluation when ctx
// ends, as OPA's own watcher does, and the function that releases the watch
// once the evaluation has returned.
func Option(ctx context.Context) (rego.EvalOption, func()) {
	if ctx.Done() == nil {
		return rego.EvalExternalCancel(never), func() {}
	}
	c := topdown.NewCancel()
	stop := context.AfterFunc(ctx, c.Cancel)
	return rego.EvalExternalCancel(c), func() { stop() }
}
