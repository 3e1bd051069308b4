package server

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/rampart-mesh/rampart/ca"
)

// AdminHandler serves the CA's operator endpoints on rampartd's admin socket:
//
//	GET  /ca/status  the rotation phase and roots (JSON ca.Status)
//	POST /ca/rotate  start a root rotation (409 if one is in progress)
//	GET  /ca/bundle  the SPIFFE bundle
func AdminHandler(a *ca.Authority) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ca/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, a.Status())
	})
	mux.HandleFunc("POST /ca/rotate", func(w http.ResponseWriter, _ *http.Request) {
		st, err := a.Rotate()
		switch {
		case errors.Is(err, ca.ErrRotationInProgress), errors.Is(err, ca.ErrExternalCA):
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		default:
			writeJSON(w, http.StatusOK, st)
		}
	})
	mux.HandleFunc("GET /ca/bundle", func(w http.ResponseWriter, _ *http.Request) {
		data, err := a.Bundle().Marshal()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(data)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
