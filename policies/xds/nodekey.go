package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Bounds on what one identity's proxies can make rampartd remember: node ids
// ("<SPIFFE ID>~<name>", the name the proxy's word) and, under one node id,
// workload variants (labels). Each is a compiled bundle and a snapshot; past
// the bounds a new stream is refused.
const (
	maxNodesPerIdentity = 64
	maxVariantsPerNode  = 16
)

// nodeKeys names the proxies rampartd keeps state for. Replicas of one
// workload share a node id and one entry; proxies that share a node id but
// not their workload (two deployments under one service account and name,
// or a rollout that changed labels) each get their own: the first under the
// node id itself, the others under "<node id>~<hash of name and labels>".
// The snapshot caches find a request's entry through ID (cachev3.NodeHash).
type nodeKeys struct {
	mu   sync.Mutex
	byID map[string]map[string]string // node id → variant → key
}

// variant is what a node's metadata makes it compile to.
func variant(n *corev3.Node) string {
	md := n.GetMetadata().GetFields()
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%t\x00", md["NAME"].GetStringValue(), md["GENERATOR"].GetStringValue(), md["ROUTER"].GetBoolValue())
	labels := md["LABELS"].GetStructValue().GetFields()
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fmt.Fprintf(h, "%s\x00%s\x00", k, labels[k].GetStringValue())
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// assign returns n's key, naming it when it is new; it refuses a node past
// the bounds. A new variant takes over the key of one no proxy is connected
// under (idle), the node id's own first: a rollout that changed the labels
// keeps its name. The caller holds the server's lock (idle reads its state).
func (k *nodeKeys) assign(n *corev3.Node, identity string, idle func(key string) bool) (key string, err error) {
	id, v := n.GetId(), variant(n)
	k.mu.Lock()
	defer k.mu.Unlock()
	vs := k.byID[id]
	if key, ok := vs[v]; ok {
		return key, nil
	}
	olds := slices.Sorted(maps.Keys(vs))
	slices.SortStableFunc(olds, func(a, b string) int { // the node id's own key first
		switch {
		case vs[a] == id:
			return -1
		case vs[b] == id:
			return 1
		}
		return 0
	})
	for _, old := range olds {
		if key := vs[old]; idle(key) {
			delete(vs, old)
			vs[v] = key
			return key, nil
		}
	}
	if len(vs) >= maxVariantsPerNode {
		return "", fmt.Errorf("node id %q has %d workload variants (labels) already; give each workload its own name", id, len(vs))
	}
	if vs == nil {
		ids := 0
		for other := range k.byID {
			if idPart, _, _ := strings.Cut(other, "~"); idPart == identity {
				ids++
			}
		}
		if ids >= maxNodesPerIdentity {
			return "", fmt.Errorf("identity %s has %d node ids already", identity, ids)
		}
		if k.byID == nil {
			k.byID = map[string]map[string]string{}
		}
		vs = map[string]string{}
		k.byID[id] = vs
	}
	key = id
	if len(vs) > 0 {
		key = id + "~" + v
	}
	vs[v] = key
	return key, nil
}

// forget drops a key; a later stream with its metadata is named afresh.
func (k *nodeKeys) forget(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, vs := range k.byID {
		for v, kk := range vs {
			if kk == key {
				delete(vs, v)
			}
		}
		if len(vs) == 0 {
			delete(k.byID, id)
		}
	}
}

// ID is the key of a request's node, for the snapshot caches. Every stream's
// node is assigned in onRequest before its first watch; one that is not
// (cannot happen) gets a key no snapshot is filed under.
func (k *nodeKeys) ID(n *corev3.Node) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.byID[n.GetId()][variant(n)]; ok {
		return key
	}
	return "\x00unassigned\x00" + n.GetId()
}

// sweep drops the keys used reports unused.
func (k *nodeKeys) sweep(used func(key string) bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, vs := range k.byID {
		for v, key := range vs {
			if !used(key) {
				delete(vs, v)
			}
		}
		if len(vs) == 0 {
			delete(k.byID, id)
		}
	}
}
