package upstream

import (
	"hash/fnv"
	"math/rand/v2"
	"slices"
)

// ringPointsPerWeight is how many points a host gets on the hash ring per
// unit of load_balancing_weight. It does not depend on the number of hosts,
// so adding or removing a host leaves every other host's points where they
// were.
const ringPointsPerWeight = 256

// ring is a consistent-hash ring (Karger et al.), used for both RING_HASH and
// MAGLEV. Maglev's lookup table is a faster structure with the same promises
// (stickiness, minimal movement); one implementation keeps one behaviour.
type ring struct {
	points []uint64 // sorted
	hosts  []*host  // hosts[i] owns points[i]
}

func newRing(hosts []*host, maxPoints int) *ring {
	if len(hosts) == 0 {
		return nil
	}
	var total uint64
	for _, h := range hosts {
		total += uint64(h.ep.Weight)
	}
	scaled := total*ringPointsPerWeight > uint64(maxPoints)
	type point struct {
		hash uint64
		host *host
	}
	var pts []point
	for _, h := range hosts {
		n := uint64(h.ep.Weight) * ringPointsPerWeight
		if scaled {
			n = max(1, uint64(h.ep.Weight)*uint64(maxPoints)/total)
		}
		base := hashString(h.ep.Address)
		for i := range n {
			pts = append(pts, point{mix64(base + i*0x9e3779b97f4a7c15), h})
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	r := &ring{points: make([]uint64, len(pts)), hosts: make([]*host, len(pts))}
	for i, p := range pts {
		r.points[i], r.hosts[i] = p.hash, p.host
	}
	return r
}

// pick returns the owner of the first point at or after key, walking on past
// hosts f does not accept (ejected, unhealthy, already tried), so that only
// their keys move.
func (r *ring) pick(key uint64, f *filter) *host {
	i, _ := slices.BinarySearch(r.points, mix64(key))
	n := len(r.points)
	for j := range n {
		h := r.hosts[(i+j)%n]
		if f == nil || f.ok(h) {
			return h
		}
	}
	return nil
}

func hashString(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// mix64 is SplitMix64's finalizer: it spreads keys that differ in few bits
// (sequential ids, say) over the whole ring.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// filter is which hosts of a level a pick may take when not all may.
type filter struct {
	now     int64 // unix ns, for ejection times
	panic   bool  // take unhealthy and ejected hosts too
	exclude []string
}

func (f *filter) ok(h *host) bool {
	if !f.panic && !h.usable(f.now) {
		return false
	}
	return f.exclude == nil || !slices.Contains(f.exclude, h.ep.Address)
}

// pick chooses a host for o, or nil when the cluster has none to offer.
//
// Priorities: the lowest priority that has a usable host serves. Panic mode
// (healthy_panic_threshold, 50% by default) looks at all hosts: when fewer
// than that share are usable, the lowest priority serves from all its hosts,
// usable or not, as Envoy does when every priority is in panic. Locality
// weights and Envoy's overprovisioning factor are not modelled.
func (c *Cluster) pick(o *Request) *host {
	es := c.eps
	if len(es.all) == 0 {
		return nil
	}
	if es.allHealthy && c.pool.ejected() == 0 && len(o.Exclude) == 0 {
		lv := &es.levels[0]
		return c.choose(lv, lv.hosts, o, nil)
	}
	f := filter{now: c.pool.m.cfg.Clock.Now().UnixNano()}
	total, usable, first, expired := 0, 0, -1, false
	for li := range es.levels {
		for _, h := range es.levels[li].hosts {
			total++
			if h.usable(f.now) {
				usable++
				if first < 0 {
					first = li
				}
			}
			if u := h.state.ejectedUntil.Load(); u != 0 && u <= f.now {
				expired = true
			}
		}
	}
	if expired {
		c.pool.outlier.sweep()
	}
	var lv *level
	switch {
	case float64(usable)*100 < c.cfg.panicThreshold*float64(total):
		f.panic = true
		lv = &es.levels[0]
	case first < 0:
		return nil
	default:
		lv = &es.levels[first]
	}
	var buf [16]*host
	cands := buf[:0]
	for _, h := range lv.hosts {
		if f.panic || h.usable(f.now) {
			cands = append(cands, h)
		}
	}
	// Avoid hosts earlier attempts tried, unless that leaves none.
	if len(o.Exclude) > 0 {
		kept := 0
		for _, h := range cands {
			if !slices.Contains(o.Exclude, h.ep.Address) {
				kept++
			}
		}
		if kept > 0 && kept < len(cands) {
			f.exclude = o.Exclude
			cands = slices.DeleteFunc(cands, func(h *host) bool { return slices.Contains(o.Exclude, h.ep.Address) })
		}
	}
	return c.choose(lv, cands, o, &f)
}

// choose applies the cluster's lb_policy to cands, the hosts of lv that may
// be picked (all of them when f is nil).
func (c *Cluster) choose(lv *level, cands []*host, o *Request, f *filter) *host {
	switch c.cfg.lb {
	case lbHash:
		if o.HasHash && lv.ring != nil {
			if h := lv.ring.pick(o.HashKey, f); h != nil {
				return h
			}
		}
		return cands[rand.IntN(len(cands))]
	case lbRandom:
		if !lv.weighted {
			return cands[rand.IntN(len(cands))]
		}
		var total uint64
		for _, h := range cands {
			total += uint64(h.ep.Weight)
		}
		r := rand.Uint64N(total)
		for _, h := range cands {
			if r < uint64(h.ep.Weight) {
				return h
			}
			r -= uint64(h.ep.Weight)
		}
		return cands[len(cands)-1]
	case lbLeastRequest:
		return c.leastRequest(cands)
	default:
		if !lv.weighted {
			return cands[(c.pool.rr.Add(1)-1)%uint64(len(cands))]
		}
		return c.pool.smoothWeighted(cands)
	}
}

// leastRequest picks the host with the fewest requests in flight relative to
// its weight among choiceCount random hosts (power of two choices), or among
// all of them when there are no more than that; ties go to whichever was
// looked at first, from a random start.
func (c *Cluster) leastRequest(cands []*host) *host {
	n := len(cands)
	better := func(a, b *host) bool {
		return (a.state.active.Load()+1)*int64(b.ep.Weight) < (b.state.active.Load()+1)*int64(a.ep.Weight)
	}
	var best *host
	if n <= c.cfg.choiceCount {
		start := rand.IntN(n)
		for i := range n {
			if h := cands[(start+i)%n]; best == nil || better(h, best) {
				best = h
			}
		}
		return best
	}
	for range c.cfg.choiceCount {
		if h := cands[rand.IntN(n)]; best == nil || better(h, best) {
			best = h
		}
	}
	return best
}

// smoothWeighted is weighted round robin that interleaves (nginx's smooth
// variant): every host gains its weight, the richest is picked and pays the
// total.
func (p *pool) smoothWeighted(cands []*host) *host {
	p.lbMu.Lock()
	defer p.lbMu.Unlock()
	var best *host
	var total int64
	for _, h := range cands {
		h.state.cw += int64(h.ep.Weight)
		total += int64(h.ep.Weight)
		if best == nil || h.state.cw > best.state.cw {
			best = h
		}
	}
	best.state.cw -= total
	return best
}
