package main

import "net/http"

// newRatings returns the ratings service: GET /ratings/{id} answers each
// reviewer's stars as JSON.
func newRatings() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", health)
	mux.HandleFunc("GET /ratings/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		resp := ratingsResponse{ID: id, Ratings: make(map[string]int, len(theReviews))}
		for _, rv := range theReviews {
			resp.Ratings[rv.reviewer] = rv.stars
		}
		writeJSON(w, http.StatusOK, resp)
	})
	return mux
}
