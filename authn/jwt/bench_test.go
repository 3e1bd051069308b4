package jwt

import (
	"context"
	"fmt"
	"testing"

	clocktesting "k8s.io/utils/clock/testing"
)

// BenchmarkAuthenticate measures one request with a valid token in
// Authorization: cached (a token seen before) and uncached (cache disabled, so
// every request parses and checks the signature).
func BenchmarkAuthenticate(b *testing.B) {
	for _, k := range []*signingKey{keyRS("k1", rsa1), keyES("e1", ec1)} {
		for _, cacheSize := range []int{DefaultTokenCacheSize, -1} {
			name := fmt.Sprintf("%s/cached", k.alg)
			if cacheSize < 0 {
				name = fmt.Sprintf("%s/uncached", k.alg)
			}
			b.Run(name, func(b *testing.B) {
				r := inlineRule(b, issA, k)
				r.Audiences = []string{"rampart"}
				a, err := New(Config{Rules: []Rule{r}, TokenCacheSize: cacheSize, Clock: clocktesting.NewFakeClock(t0)})
				if err != nil {
					b.Fatal(err)
				}
				req := bearer(sign(b, k, k.kid, claims(issA, "scope", "read write", "groups", []string{"a", "b"})))
				ctx := context.Background()
				if res := a.Authenticate(ctx, req); res.Status != 0 {
					b.Fatalf("status %d (%s)", res.Status, res.Reason)
				}
				b.ReportAllocs()
				for b.Loop() {
					if res := a.Authenticate(ctx, req); res.Auth == nil {
						b.Fatal(res.Reason)
					}
				}
			})
		}
	}
}
