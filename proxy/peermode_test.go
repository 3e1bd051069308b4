package proxy

import (
	"strings"
	"testing"

	"github.com/rampart-mesh/rampart/proxy/inbound"
)

// peer.json resolved for the app's port and every other: a captured
// sidecar's passthrough to another of the pod's ports meets that port's
// portLevelMtls, or the workload's mode, not the app's port's.
func TestPeerModesPerPort(t *testing.T) {
	pol, err := parsePeerMode([]byte(`{"mode":"STRICT","ports":{"9080":"PERMISSIVE","9081":"DISABLE"}}`), "127.0.0.1:9080")
	if err != nil {
		t.Fatal(err)
	}
	var m peerModes
	m.set(pol)
	for _, tc := range []struct {
		got, want string
	}{
		{m.get(), inbound.ModePermissive},                   // the app's port's portLevelMtls
		{m.forPort(9081), inbound.ModeDisable},              // another port's
		{m.forPort(9082), inbound.ModeStrict},               // the workload's
		{(&peerModes{}).forPort(1), inbound.ModePermissive}, // before any bundle
	} {
		if tc.got != tc.want {
			t.Errorf("mode %s, want %s", tc.got, tc.want)
		}
	}
	for _, bad := range []string{`{"mode":"STRICT","ports":{"x":"STRICT"}}`, `{"mode":"STRICT","ports":{"9081":"LOOSE"}}`, `{"mode":"LOOSE"}`} {
		if _, err := parsePeerMode([]byte(bad), "127.0.0.1:9080"); err == nil || !strings.Contains(err.Error(), "port") && !strings.Contains(err.Error(), "mode") {
			t.Errorf("parsePeerMode(%s) = %v, want an error", bad, err)
		}
	}
}
