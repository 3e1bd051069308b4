package main

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// The sample serves one book, whatever id is asked for, as the original does.
// The id is echoed so callers can see it travelled.

// product is what productpage lists.
type product struct {
	ID          int    `json:"id"`
	Title       string `json:"title"`
	Description string `json:"description"`
}

var theProduct = product{
	ID:    0,
	Title: "The Comedy of Errors",
	Description: "A farce of mistaken identity: two pairs of identical twins, parted in a shipwreck, " +
		"turn up in the same city on the same day, and nobody can tell who is who.",
}

// bookDetails is the details service's answer.
type bookDetails struct {
	ID        int    `json:"id"`
	Author    string `json:"author"`
	Year      int    `json:"year"`
	Type      string `json:"type"`
	Pages     int    `json:"pages"`
	Publisher string `json:"publisher"`
	Language  string `json:"language"`
	ISBN10    string `json:"ISBN-10"`
	ISBN13    string `json:"ISBN-13"`
}

func detailsFor(id int) bookDetails {
	return bookDetails{
		ID:        id,
		Author:    "William Shakespeare",
		Year:      1595,
		Type:      "paperback",
		Pages:     200,
		Publisher: "Rampart Press",
		Language:  "English",
		ISBN10:    "0000000001",
		ISBN13:    "978-0000000001",
	}
}

// The reviewers, their words, and the stars they gave (the ratings service's data).
var theReviews = []struct {
	reviewer, text string
	stars          int
}{
	{"Reviewer1", "Two sets of twins and one very confused town: the farce still lands four centuries on.", 5},
	{"Reviewer2", "Quick and funny, though it trades depth for pace next to the later plays.", 4},
}

// ratingsResponse is the ratings service's answer.
type ratingsResponse struct {
	ID      int            `json:"id"`
	Ratings map[string]int `json:"ratings"`
}

// reviewsResponse is the reviews service's answer.
type reviewsResponse struct {
	ID       int      `json:"id"`
	Instance string   `json:"instance"` // "reviews-v2": which version answered
	Reviews  []review `json:"reviews"`
}

type review struct {
	Reviewer string  `json:"reviewer"`
	Text     string  `json:"text"`
	Rating   *rating `json:"rating,omitempty"` // absent in v1
}

// rating is either stars and a colour, or, when ratings could not be reached, an error.
type rating struct {
	Stars int    `json:"stars,omitempty"`
	Color string `json:"color,omitempty"`
	Error string `json:"error,omitempty"`
}

// errorResponse is every service's JSON answer to a request it cannot serve.
type errorResponse struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

// pathID reads the {id} path value, answering 400 itself when it is not a
// non-negative integer.
func pathID(w http.ResponseWriter, r *http.Request) (int, bool) {
	s := r.PathValue("id")
	id, err := strconv.Atoi(s)
	if err != nil || id < 0 {
		writeJSON(w, http.StatusBadRequest, errorResponse{Error: "product id " + strconv.Quote(s) + " is not a non-negative integer"})
		return 0, false
	}
	return id, true
}

func health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
