package authz

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/rampart-mesh/rampart/authn"
)

// What a bundle's compiled policy reads decides two things per request: how
// little of the input document must be built for it (the fast path), and
// whether its verdict can be remembered. The compiled policies read
// input.rampart (built whole, every field of it keyed below) and the request
// headers; a bundle that names each header it reads with a constant string
// needs only those, so x-request-id and trace headers neither cost input
// building nor split the cache. Anything the analysis does not recognise makes
// every header relevant.

// reads is what a bundle's modules read from the input.
type reads struct {
	allHeaders bool            // some header read the analysis cannot name
	headers    map[string]bool // lower-case names read with a constant key
	// deterministic: no built-in whose result can change between two
	// evaluations of the same input (time, randomness, HTTP, ...).
	deterministic bool
}

var (
	headersRef = ast.MustParseRef("input.attributes.request.http.headers")
	rampartRef = ast.MustParseRef("input.rampart")
	objectGet  = ast.Ref{ast.VarTerm("object"), ast.StringTerm("get")}
)

func analyze(c *ast.Compiler) reads {
	rd := reads{headers: map[string]bool{}, deterministic: true}
	for _, m := range c.Modules {
		ast.WalkExprs(m, func(x *ast.Expr) bool {
			if x.IsCall() {
				if b, ok := ast.BuiltinMap[x.Operator().String()]; ok && b.Nondeterministic {
					rd.deterministic = false
				}
			}
			return false
		})
		ast.WalkTerms(m, func(t *ast.Term) bool {
			if call, ok := t.Value.(ast.Call); ok {
				if b, ok := ast.BuiltinMap[call[0].String()]; ok && b.Nondeterministic {
					rd.deterministic = false
				}
			}
			return false
		})
		rd.visitModule(m)
	}
	return rd
}

// visitModule checks every ref to the input that is not one of the forms the
// fast path serves.
func (rd *reads) visitModule(m *ast.Module) {
	vis := ast.NewGenericVisitor(func(x any) bool {
		switch v := x.(type) {
		case *ast.Expr:
			if v.IsCall() && v.Operator().Equal(objectGet) && len(v.Operands()) == 3 {
				if r, ok := v.Operand(0).Value.(ast.Ref); ok && r.Equal(headersRef) {
					if s, ok := v.Operand(1).Value.(ast.String); ok {
						rd.headers[strings.ToLower(string(s))] = true
						for _, t := range v.Operands()[1:] {
							rd.visit(t)
						}
						return true
					}
				}
			}
		case *ast.Term:
			if call, ok := v.Value.(ast.Call); ok && len(call) == 4 {
				if op, ok := call[0].Value.(ast.Ref); ok && op.Equal(objectGet) {
					if r, ok := call[1].Value.(ast.Ref); ok && r.Equal(headersRef) {
						if s, ok := call[2].Value.(ast.String); ok {
							rd.headers[strings.ToLower(string(s))] = true
							rd.visit(call[3])
							return true
						}
					}
				}
			}
		case ast.Ref:
			rd.ref(v)
			return true
		}
		return false
	})
	vis.Walk(m)
}

func (rd *reads) visit(t *ast.Term) {
	ast.WalkRefs(t, func(r ast.Ref) bool { rd.ref(r); return false })
}

func (rd *reads) ref(r ast.Ref) {
	if !r.HasPrefix(ast.InputRootRef) {
		return
	}
	switch {
	case r.HasPrefix(rampartRef):
	case r.HasPrefix(headersRef) && len(r) > len(headersRef):
		if s, ok := r[len(headersRef)].Value.(ast.String); ok {
			rd.headers[strings.ToLower(string(s))] = true
		} else {
			rd.allHeaders = true
		}
	default:
		// The input as a whole, the headers object as a whole, or a field the
		// fast path does not build: serve every header (the rest reads null).
		rd.allHeaders = true
	}
}

// defaultCacheSize bounds one bundle's remembered verdicts; the set starts
// over when it is full, so hostile variety costs misses, never memory.
const defaultCacheSize = 8192

type cacheKey struct {
	s string
	// auth is the verified token's record; the authenticator hands out the same
	// pointer for the same token while it caches it, and a key holding it keeps
	// it alive, so a pointer is never reused for other claims.
	auth *authn.RequestAuth
}

type verdictCache struct {
	size         int
	hits, misses *atomic.Uint64 // the engine's
	mu           sync.RWMutex
	m            map[cacheKey]*result
}

func newVerdictCache(size int, hits, misses *atomic.Uint64) *verdictCache {
	return &verdictCache{size: size, hits: hits, misses: misses, m: map[cacheKey]*result{}}
}

func (c *verdictCache) get(k cacheKey) *result {
	c.mu.RLock()
	r := c.m[k]
	c.mu.RUnlock()
	if r != nil {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return r
}

// CacheStats reports the verdict cache's hits and misses since the engine was
// made, over all its bundles (both 0 while the cache is off).
func (e *Engine) CacheStats() (hits, misses uint64) {
	return e.hits.Load(), e.misses.Load()
}

func (c *verdictCache) put(k cacheKey, r *result) {
	c.mu.Lock()
	if len(c.m) >= c.size {
		c.m = make(map[cacheKey]*result, c.size)
	}
	c.m[k] = r
	c.mu.Unlock()
}

// key is everything the fast-path input holds for r: the fields of
// input.rampart and the headers the bundle reads.
func (rd *reads) key(r *Request, path string) string {
	var b strings.Builder
	b.Grow(128 + len(path) + len(r.Host) + len(r.SourcePrincipal))
	for _, s := range []string{r.Protocol, r.SourcePrincipal, r.SourceIP, r.RemoteIP, r.DestinationIP, r.SNI, r.Method, r.fastHost(), path} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	b.WriteString(strconv.Itoa(r.DestinationPort))
	if rd.allHeaders || rd.headers[":path"] {
		// :path carries the query, which path does not.
		b.WriteByte(0)
		b.WriteString(r.Path)
	}
	for _, h := range r.Headers {
		n := strings.ToLower(h.Name)
		if rd.allHeaders || rd.headers[n] {
			b.WriteByte(0)
			b.WriteString(n)
			b.WriteByte(1)
			b.WriteString(h.Value)
		}
	}
	return b.String()
}
