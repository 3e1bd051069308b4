package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"

	"github.com/rampart-mesh/rampart/test/internal/kubeapi"
	"github.com/rampart-mesh/rampart/test/internal/procs"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

var authorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}

// kubeEndpoint is the httpbin Pod's address in the cluster. The API server
// refuses loopback addresses in EndpointSlices, so it is a documentation
// address (RFC 5737): rampartd only reads it into its registry; no traffic
// goes to it.
const kubeEndpoint = "192.0.2.10"

// The kube tier: rampartd --kubeconfig against a real kube-apiserver and etcd
// (test/internal/kubeapi), with Istio's CRDs as istio.io/api ships them and
// Rampart's from deploy/crds. A Service, EndpointSlice and Pod reach the
// registry; an AuthorizationPolicy created and then edited in the cluster is
// enforced by a real sidecar; and an AuthorizationPolicy that uses a field a
// newer Istio's CRD declares (the API server keeps it, this build does not
// know it) is refused alone, at its last good version, never enforced without
// the field.
func TestKubeSource(t *testing.T) {
	if testing.Short() {
		t.Skip("the kube tier starts etcd and kube-apiserver; not in -short")
	}
	api := kubeapi.Start(t)
	api.InstallCRDs(t, kubeapi.IstioCRDs(t))
	api.InstallCRDs(t, kubeapi.RampartCRDs(t)...)
	kc, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	dc := api.Dynamic(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	for _, ns := range []string{"foo", "bar"} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// httpbin as a cluster would hold it: a Service, its Pod (a sidecar beside
	// the app; nothing schedules it, so the test writes its status) and the
	// EndpointSlice the endpoint controller would write.
	if _, err := kc.CoreV1().Services("foo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "httpbin"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "httpbin"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 8000, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := kc.CoreV1().Pods("foo").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "httpbin-0", Labels: map[string]string{"app": "httpbin", "version": "v1"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "httpbin",
			Containers:         []corev1.Container{{Name: "httpbin", Image: "httpbin"}, {Name: "rampart-sidecar", Image: "rampart-sidecar"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      kubeEndpoint,
		PodIPs:     []corev1.PodIP{{IP: kubeEndpoint}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := kc.CoreV1().Pods("foo").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.DiscoveryV1().EndpointSlices("foo").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "httpbin-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: "httpbin"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{kubeEndpoint},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "foo", Name: "httpbin-0"},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	aps := dc.Resource(authorizationPolicies).Namespace("foo")
	policy := func(paths, extra string) *unstructured.Unstructured {
		t.Helper()
		var obj map[string]any
		doc := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: [%q]%s}}]
`, paths, extra)
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		return &unstructured.Unstructured{Object: obj}
	}
	// update replaces allow-sleep's spec with want's, from its current
	// version, and returns what the API server stored (with dryRun, what it
	// would store).
	update := func(want *unstructured.Unstructured, dryRun bool) *unstructured.Unstructured {
		t.Helper()
		cur, err := aps.Get(ctx, "allow-sleep", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Object["spec"] = want.Object["spec"]
		opts := metav1.UpdateOptions{}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		got, err := aps.Update(ctx, cur, opts)
		if err != nil {
			t.Fatalf("update AuthorizationPolicy foo/allow-sleep: %v", err)
		}
		return got
	}
	if _, err := aps.Create(ctx, policy("/get*", ""), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// rampartd runs as its service account, under the ClusterRole shipped in
	// deploy/kube and nothing more. Before the role is bound, the API server
	// refuses its lists, and rampartd says so and waits rather than serve a
	// partial view.
	monitoring := procs.FreeAddr(t)
	m := startMesh(t, "--kubeconfig", api.RampartdKubeconfig, "--monitoring-listen", monitoring)
	m.rampartd.WaitLog(t, `cannot list resource \"pods\"`, 30*time.Second)
	if strings.Contains(m.rampartd.Output(), "caches synced") {
		t.Fatalf("rampartd synced its caches without the right to list them:\n%s", m.rampartd.Output())
	}
	api.Apply(t, kubeapi.RepoFile("deploy/kube/rampartd-rbac.yaml"))
	m.rampartd.WaitLog(t, "caches synced", 60*time.Second)

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "app: %s", r.URL.Path) }))
	defer app.Close()
	inboundAddr := procs.FreeAddr(t)
	procs.Start(t, m.dir, "sidecar-httpbin", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", m.token(t, "foo", "httpbin"), "--inbound-listen", inboundAddr, "--inbound-protocol", "http",
		"--app", strings.TrimPrefix(app.URL, "http://"), "--labels", "app=httpbin,version=v1", "--metrics-listen", "")
	procs.WaitTCP(t, inboundAddr, 20*time.Second)
	// sleep joins as a pod in a cluster does, with its service account's
	// token for Istio's CA audience (what the kubelet projects), which
	// rampartd has the API server review; no join token.
	if _, err := kc.CoreV1().ServiceAccounts("bar").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sleep"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	saToken := func(audience string) string {
		t.Helper()
		tr, err := kc.CoreV1().ServiceAccounts("bar").CreateToken(ctx, "sleep", &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](3600)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(m.dir, "sleep-"+audience+".token")
		if err := os.WriteFile(p, []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A token for another audience is refused, and says why.
	wrongAud := procs.Start(t, m.dir, "sidecar-wrong-audience", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", saToken("somewhere-else"), "--namespace", "bar", "--service-account", "sleep",
		"--outbound-listen", procs.FreeAddr(t), "--metrics-listen", "")
	wrongAud.WaitLog(t, "service-account token refused by the API server", 20*time.Second)
	wrongAud.Stop(t)
	sock := m.dir + "/sleep.sock"
	procs.Start(t, m.dir, "sidecar-sleep", "rampart-sidecar", "--control-plane", m.cp, "--root-cert", m.root,
		"--token-file", saToken("istio-ca"), "--namespace", "bar", "--service-account", "sleep", "--workload-api-socket", sock,
		"--outbound-listen", procs.FreeAddr(t), "--metrics-listen", "")
	procs.Eventually(t, 20*time.Second, "workload API socket "+sock, func() bool { _, err := os.Stat(sock); return err == nil })
	status := statusVia(t, sock, inboundAddr)

	// The cluster's policy is enforced: sleep may GET /get*, nothing else.
	procs.Eventually(t, 20*time.Second, "the cluster's AuthorizationPolicy allows /get", func() bool { return status("/get") == 200 })
	if got := status("/status/200"); got != 403 {
		t.Fatalf("/status/200 under the first policy: %d, want 403", got)
	}
	if out := procs.Run(t, "rampartctl", "proxy-config", "foo/httpbin", "policy", "--state-dir", m.state); !strings.Contains(out, "# AuthorizationPolicy foo/allow-sleep (ALLOW)") || !strings.Contains(out, "/get") {
		t.Fatalf("proxy-config foo/httpbin policy:\n%s", out)
	}
	// The Service, its EndpointSlice and its Pod are in the registry: sleep's
	// sidecar has the service's cluster, with the endpoint in the mesh (the
	// Pod runs a sidecar).
	procs.Eventually(t, 10*time.Second, "sleep's endpoints hold httpbin's Pod", func() bool {
		out := procs.Run(t, "rampartctl", "proxy-config", "bar/sleep", "endpoints", "--state-dir", m.state)
		return strings.Contains(out, "httpbin.foo.svc.cluster.local") && strings.Contains(out, kubeEndpoint+":8080")
	})

	// An edit in the cluster takes effect: only /status* now.
	update(policy("/status*", ""), false)
	procs.Eventually(t, 10*time.Second, "the edited policy denies /get", func() bool { return status("/get") == 403 })
	if got := status("/status/200"); got != 200 {
		t.Fatalf("/status/200 under the edited policy: %d, want 200", got)
	}

	// Version skew: the cluster's CRD is a newer Istio's, declaring a field
	// under spec.rules[].to[].operation that this build does not know. The
	// API server keeps the field; rampartd must refuse that object alone,
	// keep its last good version in force, and not enforce it without the
	// field (which would allow /get/secret here).
	//
	// The API server serves a changed CRD from new storage at once, but its
	// old storage's watch cache goes on sending events, decoded with the old
	// schema (the field pruned), to the watches already open (rampartd's
	// informer's among them) until it is torn down, which ends them all; the
	// watchers then come back on the new storage. An object written in that
	// window reaches rampartd pruned, as if the operator had applied it
	// before upgrading the CRD. So the policy is applied only after a watch
	// opened before the change has been ended.
	oldWatch, err := aps.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer oldWatch.Stop()
	crd, err := dc.Resource(kubeapi.CRDs).Get(ctx, "authorizationpolicies.security.istio.io", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	for i := range versions {
		v := versions[i].(map[string]any)
		opPath := []string{"schema", "openAPIV3Schema", "properties", "spec", "properties", "rules", "items", "properties", "to", "items", "properties", "operation", "properties"}
		props, ok, _ := unstructured.NestedMap(v, opPath...)
		if !ok || props["notPaths"] == nil {
			t.Fatalf("CRD version %v: no spec.rules[].to[].operation.notPaths in the schema; Istio's CRD layout changed", v["name"])
		}
		props["futureNotPaths"] = map[string]any{"type": "array", "items": map[string]any{"type": "string"}}
		if err := unstructured.SetNestedMap(v, props, opPath...); err != nil {
			t.Fatal(err)
		}
		versions[i] = v
	}
	if err := unstructured.SetNestedSlice(crd.Object, versions, "spec", "versions"); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Resource(kubeapi.CRDs).Update(ctx, crd, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("declare futureNotPaths in the AuthorizationPolicy CRD: %v", err)
	}
	api.WaitEstablished(t, "authorizationpolicies.security.istio.io")
	drained := time.After(2 * time.Minute)
	for open := true; open; {
		select {
		case _, open = <-oldWatch.ResultChan():
		case <-drained:
			t.Fatal("the API server kept serving a watch from before the CRD change for 2 minutes")
		}
	}
	// The API server takes the new schema a moment later; until then it
	// prunes the field, and rampartd would rightly load the pruned policy. A
	// dry run shows when the field is kept, without storing anything.
	skewed := policy("/get*", `, futureNotPaths: ["/get/secret"]`)
	keeps := func(u *unstructured.Unstructured) bool {
		rules, _, _ := unstructured.NestedSlice(u.Object, "spec", "rules")
		return strings.Contains(fmt.Sprint(rules), "futureNotPaths")
	}
	procs.Eventually(t, 30*time.Second, "the API server keeps futureNotPaths", func() bool { return keeps(update(skewed, true)) })
	if !keeps(update(skewed, false)) {
		t.Fatal("the API server pruned futureNotPaths from the stored policy")
	}
	// Beside it, a valid change to another object still goes through.
	if _, err := aps.Create(ctx, denyTeapot(t), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	procs.Eventually(t, 10*time.Second, "the new DENY policy beside the refused one takes effect", func() bool { return status("/status/418") == 403 })
	m.rampartd.WaitLog(t, "a cluster object's change is refused; it stays at its last good version", 10*time.Second)
	var refusal string
	for _, line := range strings.Split(m.rampartd.Output(), "\n") {
		if strings.Contains(line, "a cluster object's change is refused") {
			refusal = line
		}
	}
	if !strings.Contains(refusal, "AuthorizationPolicy foo/allow-sleep") || !strings.Contains(refusal, "spec.rules[0].to[0].operation.futureNotPaths") {
		t.Errorf("the refusal does not name the object and its field:\n%s", refusal)
	}
	// The last good version (/status*) is still in force; the refused one
	// (/get* but not /get/secret) is not enforced, with or without its field.
	for path, want := range map[string]int{"/status/200": 200, "/get": 403, "/get/secret": 403} {
		if got := status(path); got != want {
			t.Errorf("%s with the refused version in the cluster: %d, want %d (the last good version)", path, got, want)
		}
	}
	if got := sampleValue(t, monitoring, `rampart_xds_config_rejected_total{reason="invalid_object"}`); got != "1" {
		t.Errorf(`rampart_xds_config_rejected_total{reason="invalid_object"} = %q, want 1`, got)
	}
	if out := procs.Run(t, "rampartctl", "proxy-config", "foo/httpbin", "policy", "--state-dir", m.state); !strings.Contains(out, "/status") || strings.Contains(out, "/get/secret") {
		t.Errorf("proxy-config foo/httpbin policy after the refusal:\n%s", out)
	}

	// Without the unknown field the object loads again.
	update(policy("/get*", ""), false)
	procs.Eventually(t, 10*time.Second, "the fixed policy allows /get", func() bool { return status("/get") == 200 })
}

func denyTeapot(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-teapot, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/status/418"]}}]}]
`), &obj); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// sampleValue returns the value of one sample (name with its labels, as exposed)
// on addr's /metrics, or "" if there is none.
func sampleValue(t *testing.T, addr, sample string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
