package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// File is the source.Object File of every object read from the Kubernetes API.
const File = "kubernetes"

// ErrRunning is returned by a second call to Run: a Source's informers run once.
var ErrRunning = errors.New("kube source is already running")

// Config configures a Source.
type Config struct {
	// Kube is the Kubernetes clientset (Services, EndpointSlices, Pods, Namespaces).
	Kube kubernetes.Interface
	// Dynamic is the client for the custom kinds: Istio's
	// (security.istio.io/v1 and networking.istio.io/v1, read as the API server
	// stores them, so a field this build does not know is seen) and Rampart's
	// own (policy.rampart.dev RateLimitPolicy; CRDs in deploy/crds).
	Dynamic dynamic.Interface
	// Namespace limits every namespaced informer to one namespace; "" watches all.
	// With a namespace set, only that Namespace object is watched, so the source
	// needs no cluster-wide list/watch permission.
	Namespace string
	// RootNamespace is the mesh's root namespace: with Namespace set (and
	// another), its Istio objects are watched too, since mesh-wide policies
	// (AuthorizationPolicy, PeerAuthentication, RequestAuthentication, the
	// default Sidecar) live there and apply to Namespace's workloads.
	RootNamespace string
	// Resync is the informers' resync period; 0 turns resync off. A resync
	// replays the cache and does not call OnChange.
	Resync time.Duration
	Log    *slog.Logger
	// OnChange is called after the caches change: once when they have all
	// synced, then after every add, update or delete. Calls come from informer
	// goroutines, possibly several at once and in bursts; the caller debounces
	// and must not block. Nil means no notifications.
	OnChange func()
}

// Source is the Kubernetes config source. Its views are safe to read from any
// goroutine while Run runs.
type Source struct {
	cfg Config
	log *slog.Logger

	kube informers.SharedInformerFactory
	nss  informers.SharedInformerFactory // Namespaces, possibly narrowed to cfg.Namespace
	dyn  dynamicinformer.DynamicSharedInformerFactory
	root dynamicinformer.DynamicSharedInformerFactory // Istio kinds in the root namespace, with Config.Namespace; else nil

	services   cache.SharedIndexInformer
	slices     cache.SharedIndexInformer
	pods       cache.SharedIndexInformer
	namespaces cache.SharedIndexInformer
	crdKinds   []crdKind // Istio's, the root namespace's Istio kinds, Rampart's

	running atomic.Bool
	synced  atomic.Bool
	// absent holds the kinds the API server does not serve (their CRD is not
	// installed): there can be no such objects, so their caches count as
	// synced and empty until the CRD appears and the informer lists it.
	absent sync.Map // kind → true
}

// New builds a Source and its informers. It starts nothing: Run does.
func New(cfg Config) (*Source, error) {
	if cfg.Kube == nil {
		return nil, errors.New("kube source: Config.Kube (a Kubernetes clientset) is required")
	}
	if cfg.Dynamic == nil {
		return nil, errors.New("kube source: Config.Dynamic (a dynamic client, for Istio's and Rampart's kinds) is required")
	}
	if cfg.Resync < 0 {
		return nil, fmt.Errorf("kube source: Config.Resync %v is negative; use 0 to turn resync off", cfg.Resync)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Source{cfg: cfg, log: cfg.Log.With("component", "kube-source")}

	s.kube = informers.NewSharedInformerFactoryWithOptions(cfg.Kube, cfg.Resync, informers.WithNamespace(cfg.Namespace))
	nsOpts := []informers.SharedInformerOption{}
	if cfg.Namespace != "" {
		nsOpts = append(nsOpts, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.Namespace).String()
		}))
	}
	s.nss = informers.NewSharedInformerFactoryWithOptions(cfg.Kube, cfg.Resync, nsOpts...)
	s.dyn = dynamicinformer.NewFilteredDynamicSharedInformerFactory(cfg.Dynamic, cfg.Resync, cfg.Namespace, nil)

	s.services = s.kube.Core().V1().Services().Informer()
	s.slices = s.kube.Discovery().V1().EndpointSlices().Informer()
	s.pods = s.kube.Core().V1().Pods().Informer()
	s.namespaces = s.nss.Core().V1().Namespaces().Informer()
	if err := s.slices.AddIndexers(cache.Indexers{byService: sliceService}); err != nil {
		return nil, fmt.Errorf("kube source: index endpoint slices: %w", err)
	}
	s.crdKinds = istioKinds(s.dyn)
	if cfg.Namespace != "" && cfg.RootNamespace != "" && cfg.RootNamespace != cfg.Namespace {
		s.root = dynamicinformer.NewFilteredDynamicSharedInformerFactory(cfg.Dynamic, cfg.Resync, cfg.RootNamespace, nil)
		s.crdKinds = append(s.crdKinds, istioKinds(s.root)...)
	}
	s.crdKinds = append(s.crdKinds, rampartKinds(s.dyn)...)

	type watched struct {
		kind string
		inf  cache.SharedIndexInformer
	}
	all := []watched{{"Service", s.services}, {"EndpointSlice", s.slices}, {"Pod", s.pods}, {"Namespace", s.namespaces}}
	for _, k := range s.crdKinds {
		all = append(all, watched{k.kind, k.informer})
	}
	for _, i := range all {
		if _, err := i.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { s.changed() },
			UpdateFunc: s.updated,
			DeleteFunc: func(any) { s.changed() },
		}); err != nil {
			return nil, fmt.Errorf("kube source: watch %s: %w", i.kind, err)
		}
		kind := i.kind
		if err := i.inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			s.watchError(kind, err)
		}); err != nil {
			return nil, fmt.Errorf("kube source: watch %s: %w", i.kind, err)
		}
		if err := i.inf.SetTransform(trim); err != nil {
			return nil, fmt.Errorf("kube source: watch %s: %w", i.kind, err)
		}
	}
	return s, nil
}

// Run starts the informers, waits for their caches to sync, calls OnChange
// once, and serves changes until ctx ends. It returns nil when ctx ends (also
// before the caches have synced) and ErrRunning if called a second time.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		// Shutdown waits for every informer goroutine, handlers included.
		s.kube.Shutdown()
		s.nss.Shutdown()
		s.dyn.Shutdown()
		if s.root != nil {
			s.root.Shutdown()
		}
	}()
	s.kube.Start(ctx.Done())
	s.nss.Start(ctx.Done())
	s.dyn.Start(ctx.Done())
	if s.root != nil {
		s.root.Start(ctx.Done())
	}

	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), s.hasSyncedFuncs()...) {
		return nil // only when ctx ended
	}
	s.synced.Store(true)
	s.log.Info("caches synced", "namespace", s.cfg.Namespace, "root_namespace", s.cfg.RootNamespace, "took", time.Since(start).Round(time.Millisecond))
	s.changed()
	<-ctx.Done()
	return nil
}

// HasSynced reports whether every cache has synced; the views are empty or
// partial until it has.
func (s *Source) HasSynced() bool { return s.synced.Load() }

func (s *Source) hasSyncedFuncs() []cache.InformerSynced {
	out := []cache.InformerSynced{s.services.HasSynced, s.slices.HasSynced, s.pods.HasSynced, s.namespaces.HasSynced}
	for _, k := range s.crdKinds {
		out = append(out, s.syncedOrAbsent(k.kind, k.informer))
	}
	return out
}

// syncedOrAbsent is inf's HasSynced, true also while the API server says the
// kind does not exist.
func (s *Source) syncedOrAbsent(kind string, inf cache.SharedIndexInformer) cache.InformerSynced {
	return func() bool {
		_, absent := s.absent.Load(kind)
		return inf.HasSynced() || absent
	}
}

// watchError logs why a cache is not syncing or lost its watch (a missing CRD,
// RBAC, an unreachable API server) where the operator looks. The reflector
// retries on its own; a watch that ends normally is not worth a warning.
func (s *Source) watchError(kind string, err error) {
	switch {
	case errors.Is(err, io.EOF), apierrors.IsResourceExpired(err), apierrors.IsGone(err):
		s.log.Debug("watch closed; relisting", "kind", kind, "err", err)
	case apierrors.IsNotFound(err) && kind != "Service" && kind != "EndpointSlice" && kind != "Pod" && kind != "Namespace":
		// A custom resource the cluster does not serve: its CRD is not
		// installed, so there are no such objects. Waiting for its cache
		// would hold every other config back; the informer keeps retrying
		// and reads the objects once the CRD is installed.
		if _, seen := s.absent.LoadOrStore(kind, true); !seen {
			s.log.Warn("the cluster does not serve this kind (its CRD is not installed): none are read until it is", "kind", kind,
				"hint", "Rampart's own CRDs are in deploy/crds; Istio's come with Istio's base chart", "err", err)
		}
	default:
		s.log.Warn("list/watch failed; retrying", "kind", kind, "err", err)
	}
}

func (s *Source) changed() {
	// Before the sync, adds are the initial listing; the one call after the
	// sync covers them.
	if s.synced.Load() && s.cfg.OnChange != nil {
		s.cfg.OnChange()
	}
}

func (s *Source) updated(old, cur any) {
	o, err1 := meta.Accessor(old)
	c, err2 := meta.Accessor(cur)
	if err1 == nil && err2 == nil && o.GetResourceVersion() == c.GetResourceVersion() && o.GetResourceVersion() != "" && !contentDiffers(old, cur) {
		return // a resync, not a change
	}
	s.changed()
}

// contentDiffers reports whether two versions of a custom object with the
// same resourceVersion differ in what the source reads. It happens: after a
// CRD changes, the API server's watch cache may first send an object pruned
// by the old schema, and the relist then the whole object under the same
// resourceVersion; that must count as a change.
func contentDiffers(old, cur any) bool {
	o, ok1 := old.(*unstructured.Unstructured)
	c, ok2 := cur.(*unstructured.Unstructured)
	if !ok1 || !ok2 {
		return false
	}
	return !equality.Semantic.DeepEqual(o.Object["spec"], c.Object["spec"]) ||
		!equality.Semantic.DeepEqual(o.GetLabels(), c.GetLabels()) ||
		!equality.Semantic.DeepEqual(o.GetAnnotations(), c.GetAnnotations())
}
