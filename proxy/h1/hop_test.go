package h1

import (
	"net/http"
	"reflect"
	"testing"
)

func TestRemoveHopHeaders(t *testing.T) {
	h := http.Header{
		"Connection": {"X-Secret, keep-alive", "x-other"}, "X-Secret": {"1"}, "X-Other": {"2"},
		"Keep-Alive": {"timeout=5"}, "Te": {"trailers"}, "Upgrade": {"websocket"}, "Transfer-Encoding": {"chunked"},
		"Proxy-Authorization": {"Basic x"}, "X-Kept": {"yes"},
	}
	RemoveHopHeaders(h)
	if want := (http.Header{"X-Kept": {"yes"}}); !reflect.DeepEqual(h, want) {
		t.Fatalf("left %v, want %v", h, want)
	}
}
