package opacancel

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// An evaluation still running when its context ends is cancelled with OPA's
// cancellation error; one whose context cannot end runs to its result.
func TestOptionCancelsWithContext(t *testing.T) {
	// 25 million iterations that never match keep the evaluator busy for
	// many seconds in little memory.
	pq, err := rego.New(rego.Query("some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); i * j == -1")).PrepareForEval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	opt, release := Option(ctx)
	_, err = pq.Eval(ctx, opt)
	release()
	var te *topdown.Error
	if !errors.As(err, &te) || te.Code != topdown.CancelErr {
		t.Fatalf("evaluation past its context's end: %v, want a cancellation error", err)
	}

	small, err := rego.New(rego.Query("x := 1 + 1")).PrepareForEval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	opt, release = Option(context.Background())
	rs, err := small.Eval(context.Background(), opt)
	release()
	if err != nil || len(rs) != 1 || rs[0].Bindings["x"] == nil {
		t.Fatalf("evaluation with a context that cannot end: %v %v", rs, err)
	}
}
