package grpcreply

import (
	"net/http/httptest"
	"testing"
)

func TestStatusFor(t *testing.T) {
	for code, want := range map[int]int{400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14, 418: 2, 500: 2} {
		if got := StatusFor(code); got != want {
			t.Errorf("HTTP %d → gRPC %d, want %d (Envoy's httpToGrpcStatus)", code, got, want)
		}
	}
}

func TestWrite(t *testing.T) {
	w := httptest.NewRecorder()
	w.Header().Set("Content-Length", "12")
	Write(w, 14, "upstream connect error 100%\n")
	h := w.Result().Header
	if w.Code != 200 || h.Get("Content-Type") != "application/grpc" || h.Get("Grpc-Status") != "14" ||
		h.Get("Grpc-Message") != "upstream connect error 100%25%0A" || h.Get("Content-Length") != "" || w.Body.Len() != 0 {
		t.Fatalf("%d %v body %q", w.Code, h, w.Body.String())
	}
	w = httptest.NewRecorder()
	Write(w, 7, "")
	if _, ok := w.Result().Header["Grpc-Message"]; ok {
		t.Fatal("an empty message is sent")
	}
}
