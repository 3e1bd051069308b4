package ratelimit

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// buckets are one limit's token buckets by key, at most max of them, least
// recently used first out. Safe for concurrent use.
type buckets struct {
	limit rate.Limit
	burst int
	max   int

	mu       sync.Mutex
	byKey    map[string]*list.Element // → *entry
	lru      list.List                // front: most recently used
	overflow *rate.Limiter            // shared by new keys while every bucket is busy
}

type entry struct {
	key string
	lim *rate.Limiter
}

func newBuckets(limit rate.Limit, burst, max int) *buckets {
	return &buckets{limit: limit, burst: burst, max: max, byKey: map[string]*list.Element{},
		overflow: rate.NewLimiter(limit, burst)}
}

// allow takes a token from key's bucket at now. It reports whether one was
// there and whether the key went to the overflow bucket.
func (b *buckets) allow(key string, now time.Time) (ok, overflow bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, found := b.byKey[key]; found {
		b.lru.MoveToFront(e)
		return e.Value.(*entry).lim.AllowN(now, 1), false
	}
	if b.lru.Len() >= b.max {
		oldest := b.lru.Back()
		old := oldest.Value.(*entry)
		// A bucket that has refilled is the same as a new one: forgetting it
		// loses nothing. A busy one is kept, and the new key shares the
		// overflow bucket with every other key that found no room.
		if old.lim.TokensAt(now) < float64(b.burst) {
			return b.overflow.AllowN(now, 1), true
		}
		b.lru.Remove(oldest)
		delete(b.byKey, old.key)
	}
	lim := rate.NewLimiter(b.limit, b.burst)
	b.byKey[key] = b.lru.PushFront(&entry{key: key, lim: lim})
	return lim.AllowN(now, 1), false
}

// len is the number of keys with a bucket.
func (b *buckets) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lru.Len()
}

// sweep drops every bucket that has refilled by now; it returns how many remain.
func (b *buckets) sweep(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for e := b.lru.Back(); e != nil; {
		prev := e.Prev()
		if en := e.Value.(*entry); en.lim.TokensAt(now) >= float64(b.burst) {
			b.lru.Remove(e)
			delete(b.byKey, en.key)
		}
		e = prev
	}
	return b.lru.Len()
}

func hashKey(k string) string {
	sum := sha256.Sum256([]byte(k))
	return "sha256:" + hex.EncodeToString(sum[:16])
}
