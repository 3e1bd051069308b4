package kube

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestTrimKeepsWhatTheRegistryReads(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "reviews-v2-1", Namespace: "default", ResourceVersion: "42",
			Labels:        map[string]string{"app": "reviews", "version": "v2"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "bookinfo-reviews",
			InitContainers:     []corev1.Container{{Name: "rampart-sidecar", Image: "rampart/sidecar", RestartPolicy: &always}},
			Containers: []corev1.Container{{
				Name: "reviews", Image: "bookinfo/reviews",
				Env: []corev1.EnvVar{{Name: "LOG_DIR", Value: "/tmp/logs"}},
			}},
			Volumes: []corev1.Volume{{Name: "tmp"}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.0.0.22",
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, Message: "all containers ready"},
			},
		},
	}
	out, err := trim(pod.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Pod)
	if got.ManagedFields != nil || got.Spec.Volumes != nil || got.Spec.Containers[0].Env != nil || len(got.Status.Conditions) != 1 {
		t.Errorf("trim kept what it should drop: %+v", got)
	}
	if inMesh(got) != inMesh(pod) || podReady(got) != podReady(pod) || !inMesh(got) || !podReady(got) {
		t.Error("trim changed what inMesh or podReady see")
	}
	if got.Spec.ServiceAccountName != "bookinfo-reviews" || got.Labels["version"] != "v2" || got.ResourceVersion != "42" {
		t.Errorf("trim lost identity: %+v", got.ObjectMeta)
	}
	again, _ := trim(got.DeepCopy())
	if diff := cmp.Diff(got, again); diff != "" {
		t.Errorf("trim is not idempotent (-once +twice):\n%s", diff)
	}
}
