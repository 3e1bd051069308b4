package main

import "net/http"

// newDetails returns the details service: GET /details/{id} answers the book's
// details as JSON.
func newDetails() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", health)
	mux.HandleFunc("GET /details/{id}", func(w http.ResponseWriter, r *http.Request) {
		if id, ok := pathID(w, r); ok {
			writeJSON(w, http.StatusOK, detailsFor(id))
		}
	})
	return mux
}
