package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// ratingsUnavailable is what reviews puts in place of the stars when ratings
// cannot be reached; the page shows it as is.
const ratingsUnavailable = "Ratings service is currently unavailable"

// starColor is each version's star colour; v1 shows no stars and never calls ratings.
var starColor = map[string]string{"v1": "", "v2": "black", "v3": "red"}

// reviewsConfig configures the reviews service.
type reviewsConfig struct {
	// Version is v1, v2 or v3.
	Version string
	// RatingsURL is the ratings service's base URL; defaults to http://ratings:9080.
	RatingsURL string
	// RatingsTimeout bounds each call to ratings; defaults to 2.5s.
	RatingsTimeout time.Duration
	// Transport carries the calls to ratings; defaults to newTransport().
	Transport http.RoundTripper
	// Log gets a line when ratings fails; defaults to discarding.
	Log *slog.Logger
}

type reviews struct {
	instance string // "reviews-v2"
	color    string // "" for v1: no ratings call, no stars
	ratings  upstream
	log      *slog.Logger
	mux      *http.ServeMux
}

var _ http.Handler = (*reviews)(nil)

// newReviews returns the reviews service: GET /reviews/{id} answers the book's
// reviews as JSON, with stars from ratings in v2 (black) and v3 (red).
func newReviews(cfg reviewsConfig) (*reviews, error) {
	color, ok := starColor[cfg.Version]
	if !ok {
		return nil, fmt.Errorf("reviews version %q: want v1, v2 or v3", cfg.Version)
	}
	if cfg.RatingsURL == "" {
		cfg.RatingsURL = defaultRatingsURL
	}
	if cfg.RatingsTimeout == 0 {
		cfg.RatingsTimeout = defaultRatingsTimeout
	}
	if cfg.Transport == nil {
		cfg.Transport = newTransport()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ratings, err := newUpstream("ratings", cfg.RatingsURL, cfg.RatingsTimeout, cfg.Transport)
	if err != nil {
		return nil, err
	}
	s := &reviews{
		instance: "reviews-" + cfg.Version,
		color:    color,
		ratings:  ratings,
		log:      cfg.Log,
		mux:      http.NewServeMux(),
	}
	s.mux.HandleFunc("GET /health", health)
	s.mux.HandleFunc("GET /reviews/{id}", s.get)
	return s, nil
}

func (s *reviews) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *reviews) get(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	resp := reviewsResponse{ID: id, Instance: s.instance}
	for _, rv := range theReviews {
		resp.Reviews = append(resp.Reviews, review{Reviewer: rv.reviewer, Text: rv.text})
	}
	if s.color == "" {
		writeJSON(w, http.StatusOK, resp)
		return
	}

	var rs ratingsResponse
	if err := s.ratings.getJSON(r.Context(), "/ratings/"+strconv.Itoa(id), forwardHeaders(r.Header), &rs); err != nil {
		// A missing ratings service costs the stars, not the reviews.
		s.log.Warn("ratings unavailable", "err", err, "request_id", r.Header.Get("X-Request-Id"))
		for i := range resp.Reviews {
			resp.Reviews[i].Rating = &rating{Error: ratingsUnavailable}
		}
		writeJSON(w, http.StatusOK, resp)
		return
	}
	for i := range resp.Reviews {
		if stars, ok := rs.Ratings[resp.Reviews[i].Reviewer]; ok {
			resp.Reviews[i].Rating = &rating{Stars: stars, Color: s.color}
		}
	}
	writeJSON(w, http.StatusOK, resp)
}
