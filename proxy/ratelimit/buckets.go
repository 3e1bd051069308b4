package ratelimit

import (
	"container/heap"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// buckets are one limit's token buckets by key, at most max of them. They
// are kept ordered by the time each will be full again, so the bucket that
// refilled first is found in O(1) and making room costs O(log n): every
// refilled bucket can make room, not only the least recently used one. Safe
// for concurrent use.
type buckets struct {
	limit rate.Limit
	burst int
	max   int

	mu       sync.Mutex
	byKey    map[string]*entry
	byFull   fullHeap      // min-heap on fullAt, then least recently used
	seq      uint64        // use counter, the tie-break between equal fullAt
	overflow *rate.Limiter // shared by new keys while every bucket is busy
}

type entry struct {
	key    string
	lim    *rate.Limiter
	fullAt time.Time // when lim has burst tokens again
	used   uint64    // seq at the last use
	index  int       // in byFull
}

func newBuckets(limit rate.Limit, burst, max int) *buckets {
	return &buckets{limit: limit, burst: burst, max: max, byKey: map[string]*entry{},
		overflow: rate.NewLimiter(limit, burst)}
}

// allow takes a token from key's bucket at now. It reports whether one was
// there and whether the key went to the overflow bucket.
func (b *buckets) allow(key string, now time.Time) (ok, overflow bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	if e, found := b.byKey[key]; found {
		ok = e.lim.AllowN(now, 1)
		b.touch(e, now)
		heap.Fix(&b.byFull, e.index)
		return ok, false
	}
	if len(b.byFull) >= b.max {
		// A bucket that has refilled is the same as a new one: forgetting it
		// loses nothing. When none has, every one is kept, and the new key
		// shares the overflow bucket with every other key that found no room.
		first := b.byFull[0]
		if first.fullAt.After(now) {
			return b.overflow.AllowN(now, 1), true
		}
		heap.Pop(&b.byFull)
		delete(b.byKey, first.key)
	}
	e := &entry{key: key, lim: rate.NewLimiter(b.limit, b.burst)}
	ok = e.lim.AllowN(now, 1)
	b.touch(e, now)
	b.byKey[key] = e
	heap.Push(&b.byFull, e)
	return ok, false
}

// touch records a use of e at now: its fullAt from the tokens left.
func (b *buckets) touch(e *entry, now time.Time) {
	e.used = b.seq
	missing := float64(b.burst) - e.lim.TokensAt(now)
	if missing <= 0 {
		e.fullAt = now
		return
	}
	// Round up, so a bucket is never taken for full a nanosecond early; a
	// refill longer than time.Duration holds (a tiny rate and a huge burst)
	// is as good as never.
	ns := math.Ceil(missing / float64(b.limit) * float64(time.Second))
	if ns >= math.MaxInt64/2 {
		ns = math.MaxInt64 / 2
	}
	e.fullAt = now.Add(time.Duration(ns))
}

// len is the number of keys with a bucket.
func (b *buckets) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.byFull)
}

// sweep drops every bucket that has refilled by now; it returns how many remain.
func (b *buckets) sweep(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.byFull) > 0 && !b.byFull[0].fullAt.After(now) {
		e := heap.Pop(&b.byFull).(*entry)
		delete(b.byKey, e.key)
	}
	return len(b.byFull)
}

// fullHeap orders buckets by when they are full again, then least recently
// used first (container/heap).
type fullHeap []*entry

func (h fullHeap) Len() int { return len(h) }
func (h fullHeap) Less(i, j int) bool {
	if !h[i].fullAt.Equal(h[j].fullAt) {
		return h[i].fullAt.Before(h[j].fullAt)
	}
	return h[i].used < h[j].used
}
func (h fullHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *fullHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *fullHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

func hashKey(k string) string {
	sum := sha256.Sum256([]byte(k))
	return "sha256:" + hex.EncodeToString(sum[:16])
}
