// Package ratelimit is the sidecar's local rate limiting: token buckets
// (golang.org/x/time/rate) per limit and key, for the limits rampartd compiles
// from RateLimitPolicy and ships in the policy bundle (authz.RateLimit).
//
// A Limiter holds an immutable set of limits behind an atomic pointer; Build
// validates a new set and Swap publishes it. A limit whose definition is
// unchanged keeps its buckets across updates. Each limit's key space is
// bounded: a bucket that has refilled (so forgetting it loses nothing) is
// evicted to make room, and when every bucket is busy, new keys share one
// overflow bucket, so hostile keys cannot grow memory and are limited together.
//
// Global limits (a rate limit service shared by replicas) are not here yet.
//
// It is data plane: it must not import policies/..., ca/server or ca/jointoken.
package ratelimit
