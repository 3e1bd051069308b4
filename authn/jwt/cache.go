package jwt

import (
	"crypto/sha256"
	"sync"

	"github.com/rampart-mesh/rampart/authn"
)

// tokenCache remembers tokens whose signature verified and whose audience is
// allowed, keyed by SHA-256 of the token, so the same token is not verified
// twice. Entries carry exp/nbf (re-checked on every hit), the rule that accepted
// the token and that rule's key generation (a key rotation re-verifies).
type tokenCache struct {
	max int

	mu sync.RWMutex
	m  map[[sha256.Size]byte]*cacheEntry
}

type cacheEntry struct {
	rule     int
	gen      uint64
	exp, nbf int64 // unix seconds
	hasExp   bool
	hasNbf   bool
	auth     *authn.RequestAuth
	set      []Header // the rule's output headers for this token
}

func newTokenCache(max int) *tokenCache {
	if max <= 0 {
		return nil
	}
	return &tokenCache{max: max, m: make(map[[sha256.Size]byte]*cacheEntry)}
}

func (c *tokenCache) get(k [sha256.Size]byte) *cacheEntry {
	if c == nil {
		return nil
	}
	c.mu.RLock()
	e := c.m[k]
	c.mu.RUnlock()
	return e
}

func (c *tokenCache) del(k [sha256.Size]byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

// put adds e. When full it drops expired entries, then if still full an
// arbitrary tenth of the rest (Go map order), which bounds memory without
// bookkeeping on the read path.
func (c *tokenCache) put(k [sha256.Size]byte, e *cacheEntry, now int64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for key, old := range c.m {
			if old.hasExp && old.exp < now {
				delete(c.m, key)
			}
		}
		for key := range c.m {
			if len(c.m) < c.max-c.max/10 {
				break
			}
			delete(c.m, key)
		}
	}
	c.m[k] = e
}

func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
