package xds

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/types/known/structpb"
)

// onlyBDeny is a DENY on /admin for app=b workloads of foo.
const onlyBDeny = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-b, namespace: foo}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`

func keysNode(id, app string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"NAME": "default", "LABELS": map[string]any{"app": app}})
	return &corev3.Node{Id: id, Metadata: md}
}

// A push begun for the workload that held a key (a reload's) that ends after
// another workload took the key over files nothing: the new proxy is never
// served the old workload's policy.
func TestNoStalePushAfterTakeover(t *testing.T) {
	x := loadedServer(t, onlyBDeny)
	const cert = "spiffe://cluster.local/ns/foo/sa/default"
	const id = cert + "~default"
	x.mu.Lock()
	x.streams[1] = &stream{certID: cert}
	x.mu.Unlock()
	if err := x.onRequest(1, &discovery.DiscoveryRequest{Node: keysNode(id, "a"), TypeUrl: resource.ExtensionConfigType}); err != nil {
		t.Fatal(err)
	}
	x.onClosed(1, nil)

	// A reload changed the configuration: a new policy for app=a. Its push to
	// the key (still app=a's) is compiling.
	extra, err := source.Parse("extra.yaml", []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-a, namespace: foo}
spec:
  selector: {matchLabels: {app: a}}
  rules: [{to: [{operation: {paths: ["/only-a"]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	x.mu.Lock()
	nA := x.nodes[id]
	x.objs = append(append([]source.Object{}, x.objs...), extra...)
	objs := x.objs
	release := make(chan struct{})
	b := &built{wl: nA.workload}
	x.built = map[string]*built{builtKey(nA): b}
	x.mu.Unlock()
	started := make(chan struct{})
	go b.once.Do(func() { // the compile of app=a's new bundle, slow
		close(started)
		<-release
		defer b.done.Store(true)
		b.wb, b.err = Compile(objs, x.cfg.Mesh, nA.workload)
		if b.err != nil {
			return
		}
		if b.ext, b.err = b.wb.Extension(); b.err != nil {
			return
		}
		nw := x.net
		if nw == nil {
			b.err = errors.New("nil net")
			return
		}
		if b.out, b.err = compileFor(nA)(nw, x.cfg.Mesh, nA.workload); b.err != nil {
			return
		}
		b.version, b.err = snapshotVersion(b.wb.Revision, b.out)
	})
	<-started
	pushed := make(chan error)
	go func() { pushed <- x.push(id, time.Now()) }() // reload's loop
	time.Sleep(200 * time.Millisecond)

	// Meanwhile the relabelled pod (app=b) connects and takes the key over.
	x.mu.Lock()
	x.streams[2] = &stream{certID: cert}
	x.mu.Unlock()
	if err := x.onRequest(2, &discovery.DiscoveryRequest{Node: keysNode(id, "b"), TypeUrl: resource.ExtensionConfigType}); err != nil {
		t.Fatal(err)
	}
	if k := x.streams[2].nodeKey; k != id {
		t.Fatalf("key %q", k)
	}
	x.mu.Lock()
	bSent := x.nodes[id].sent
	x.mu.Unlock()
	close(release)
	if err := <-pushed; err != nil {
		t.Fatal(err)
	}
	snap, err := x.cache.GetSnapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	if v := snap.GetVersion(resource.ExtensionConfigType); v != bSent {
		t.Fatalf("key %s now holds a snapshot of version %s, not app=b's %s (status says sent %s): the app=b proxy is served app=a's bundle", id, v, bSent, x.nodes[id].sent)
	}
}

// Two proxies of one node id with different labels whose first requests race
// (rampartd restarted during a rollout) must end under two keys, each stream
// counted on its own workload's node.
func TestConcurrentFirstRequestsGetOwnKeys(t *testing.T) {
	x := loadedServer(t, onlyBDeny)
	const cert = "spiffe://cluster.local/ns/foo/sa/default"
	for i := 0; i < 300; i++ {
		id := fmt.Sprintf("%s~w%d", cert, i%60)
		s1, s2 := int64(10*i+1), int64(10*i+2)
		x.mu.Lock()
		x.streams[s1] = &stream{certID: cert}
		x.streams[s2] = &stream{certID: cert}
		x.mu.Unlock()
		var wg sync.WaitGroup
		var e1, e2 error
		wg.Add(2)
		go func() {
			defer wg.Done()
			e1 = x.onRequest(s1, &discovery.DiscoveryRequest{Node: keysNode(id, "a"), TypeUrl: resource.ExtensionConfigType})
		}()
		go func() {
			defer wg.Done()
			e2 = x.onRequest(s2, &discovery.DiscoveryRequest{Node: keysNode(id, "b"), TypeUrl: resource.ExtensionConfigType})
		}()
		wg.Wait()
		x.mu.Lock()
		k1, k2 := x.streams[s1].nodeKey, x.streams[s2].nodeKey
		x.mu.Unlock()
		if e1 == nil && e2 == nil && k1 == k2 {
			x.mu.Lock()
			n := x.nodes[k1]
			x.mu.Unlock()
			x.mu.Lock()
			wl := x.nodes[k1].workload.Labels["app"]
			x.mu.Unlock()
			t.Fatalf("the app=a stream's watches are filed under %q, whose node is app=%s; iteration %d: both streams (app=a, app=b) accepted under one key %q; node there: labels %v, streams %d; ID(a)=%q ID(b)=%q",
				x.keys.ID(keysNode(id, "a")), wl, i, k1, n.workload.Labels, n.streams, x.keys.ID(keysNode(id, "a")), x.keys.ID(keysNode(id, "b")))
		}
		x.onClosed(s1, nil)
		x.onClosed(s2, nil)
		x.forgetGone(time.Now().Add(time.Hour + time.Duration(i)*time.Second))
	}
}

// A key named for a request that is then refused (here: a stream whose later
// request names another node id) has no node entry; forgetGone drops it too,
// so such keys cannot lock an identity out of new node ids.
func TestOrphanKeysForgotten(t *testing.T) {
	x := statusServer(t)
	const cert = "spiffe://cluster.local/ns/foo/sa/web"
	open := func(sid int64, name string) error {
		x.mu.Lock()
		x.streams[sid] = &stream{certID: cert}
		x.mu.Unlock()
		md, _ := structpb.NewStruct(map[string]any{"NAME": name})
		return x.onRequest(sid, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: cert + "~" + name, Metadata: md}, TypeUrl: resource.ExtensionConfigType})
	}
	// Each of two streams: a first request, then requests naming other node ids.
	o := 0
	for sid := int64(1); sid <= 2; sid++ {
		if err := open(sid, fmt.Sprintf("first%d", sid)); err != nil {
			t.Fatal(err)
		}
		for range maxNodesPerIdentity {
			md, _ := structpb.NewStruct(map[string]any{"NAME": fmt.Sprintf("o%d", o)})
			err := x.onRequest(sid, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("%s~o%d", cert, o), Metadata: md}, TypeUrl: resource.ClusterType})
			o++
			if err == nil {
				t.Fatal("node change accepted")
			}
		}
		x.onClosed(sid, nil)
		x.forgetGone(time.Now().Add(time.Duration(sid) * time.Hour))
	}
	x.keys.mu.Lock()
	left := len(x.keys.byID)
	x.keys.mu.Unlock()
	if err := open(3, "legit-a"); err != nil {
		t.Fatal(err)
	}
	if err := open(4, "legit-b"); err != nil {
		t.Fatalf("an hour after the orphaning streams closed, %d node ids no proxy uses are still kept, and a second workload of the identity is refused: %v", left, err)
	}
}
