package upstream

import (
	"context"
	"slices"
	"sync"
)

// slots is the connection breaker for HTTP/1.1, where a request holds a
// connection of its own until its response is read: max_connections bounds
// the requests in flight, and max_pending_requests bounds those waiting for a
// connection to free up. Beyond both, a request overflows at once.
//
// Envoy counts connections, not requests, and lets each host's pool have one
// connection past the limit; counting the requests that hold them is the same
// bound without a race against net/http's pool. Idle connections are capped
// separately (MaxIdleConnsPerHost), so the cluster can briefly hold more open
// connections than max_connections, as Envoy can.
type slots struct {
	mu         sync.Mutex
	used       int64
	max        int64
	maxPending int64
	waiters    []chan struct{} // FIFO; a waiter's channel is closed to hand it a slot
}

// acquire takes a slot, waiting as a pending request if allowed. It returns
// ErrOverflow when the pending queue is full, or ctx's error.
func (s *slots) acquire(ctx context.Context) error {
	s.mu.Lock()
	if s.used < s.max {
		s.used++
		s.mu.Unlock()
		return nil
	}
	if int64(len(s.waiters)) >= s.maxPending {
		s.mu.Unlock()
		return ErrOverflow
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		if i := slices.Index(s.waiters, ch); i >= 0 {
			s.waiters = slices.Delete(s.waiters, i, i+1)
			s.mu.Unlock()
			return ctx.Err()
		}
		s.mu.Unlock()
		// The slot was handed over as ctx ended: pass it on.
		s.release()
		return ctx.Err()
	}
}

// release frees a slot, handing it to the oldest waiter if there is one.
func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiters) > 0 {
		ch := s.waiters[0]
		s.waiters = slices.Delete(s.waiters, 0, 1)
		close(ch)
		return
	}
	s.used--
}

// pending is the number of requests waiting for a slot.
func (s *slots) pending() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.waiters))
}
