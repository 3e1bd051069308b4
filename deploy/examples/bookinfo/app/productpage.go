package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// The messages the page shows in place of a part it could not get.
const (
	detailsUnavailable = "Sorry, product details are currently unavailable for this book."
	reviewsUnavailable = "Sorry, product reviews are currently unavailable for this book."
)

// sessionCookie holds the signed-in user's name, base64url-encoded so any name
// survives the cookie syntax. It is not signed: as in the original sample the
// password is ignored, so the cookie proves nothing a forged end-user header
// would not. Mesh policy, not this app, is what authenticates users.
const sessionCookie = "session"

// maxUserLen bounds a user name, in bytes.
const maxUserLen = 64

// productPageConfig configures productpage.
type productPageConfig struct {
	// DetailsURL is the details service's base URL; defaults to http://details:9080.
	DetailsURL string
	// ReviewsURL is the reviews service's base URL; defaults to http://reviews:9080.
	ReviewsURL string
	// Timeout bounds each call to details or reviews; defaults to 3s.
	Timeout time.Duration
	// Transport carries the calls to details and reviews; defaults to newTransport().
	Transport http.RoundTripper
	// Log gets a line when an upstream fails; defaults to discarding.
	Log *slog.Logger
}

type productPage struct {
	details upstream
	reviews upstream
	log     *slog.Logger
	mux     *http.ServeMux
}

var _ http.Handler = (*productPage)(nil)

// newProductPage returns productpage: the HTML page at /productpage, a JSON API
// under /api/v1/products, and sign-in with /login and /logout.
func newProductPage(cfg productPageConfig) (*productPage, error) {
	if cfg.DetailsURL == "" {
		cfg.DetailsURL = defaultDetailsURL
	}
	if cfg.ReviewsURL == "" {
		cfg.ReviewsURL = defaultReviewsURL
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = defaultProductPageTimeout
	}
	if cfg.Transport == nil {
		cfg.Transport = newTransport()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	details, err := newUpstream("details", cfg.DetailsURL, cfg.Timeout, cfg.Transport)
	if err != nil {
		return nil, err
	}
	reviews, err := newUpstream("reviews", cfg.ReviewsURL, cfg.Timeout, cfg.Transport)
	if err != nil {
		return nil, err
	}
	p := &productPage{details: details, reviews: reviews, log: cfg.Log, mux: http.NewServeMux()}
	p.mux.HandleFunc("GET /{$}", p.index)
	p.mux.HandleFunc("GET /health", health)
	p.mux.HandleFunc("GET /productpage", p.page)
	p.mux.HandleFunc("POST /login", p.login)
	p.mux.HandleFunc("GET /logout", p.logout)
	p.mux.HandleFunc("GET /api/v1/products", p.apiProducts)
	p.mux.HandleFunc("GET /api/v1/products/{id}", p.apiDetails)
	p.mux.HandleFunc("GET /api/v1/products/{id}/reviews", p.apiReviews)
	return p, nil
}

func (p *productPage) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.mux.ServeHTTP(w, r) }

// forwardHeaders is the propagated headers of r plus end-user: the session's
// user if someone signed in, else whatever end-user r came with (so
// curl -H 'end-user: jason' works).
func (p *productPage) forwardHeaders(r *http.Request) http.Header {
	h := forwardHeaders(r.Header)
	if user := sessionUser(r); user != "" {
		h.Set(headerEndUser, user)
	}
	return h
}

func (p *productPage) getDetails(ctx context.Context, id int, h http.Header) (*bookDetails, error) {
	var d bookDetails
	if err := p.details.getJSON(ctx, "/details/"+strconv.Itoa(id), h, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

func (p *productPage) getReviews(ctx context.Context, id int, h http.Header) (*reviewsResponse, error) {
	var rv reviewsResponse
	if err := p.reviews.getJSON(ctx, "/reviews/"+strconv.Itoa(id), h, &rv); err != nil {
		return nil, err
	}
	return &rv, nil
}

func (p *productPage) index(w http.ResponseWriter, r *http.Request) {
	p.render(w, r, "index", nil)
}

// page renders the product page. A part that could not be fetched is replaced by
// an apology; the page itself is still a 200.
func (p *productPage) page(w http.ResponseWriter, r *http.Request) {
	h := p.forwardHeaders(r)
	var (
		wg      sync.WaitGroup
		details *bookDetails
		reviews *reviewsResponse
		dErr    error
		rErr    error
	)
	wg.Go(func() { details, dErr = p.getDetails(r.Context(), theProduct.ID, h) })
	wg.Go(func() { reviews, rErr = p.getReviews(r.Context(), theProduct.ID, h) })
	wg.Wait()

	v := pageView{Product: theProduct, User: sessionUser(r), Details: details}
	if dErr != nil {
		p.log.Warn("details unavailable", "err", dErr, "request_id", r.Header.Get("X-Request-Id"))
		v.DetailsError = detailsUnavailable
	}
	if rErr != nil {
		p.log.Warn("reviews unavailable", "err", rErr, "request_id", r.Header.Get("X-Request-Id"))
		v.ReviewsError = reviewsUnavailable
	} else {
		v.Reviews = newReviewsView(reviews)
	}
	p.render(w, r, "page", v)
}

func (p *productPage) render(w http.ResponseWriter, r *http.Request, name string, data any) {
	// Render to a buffer first so that a template error is a clean 500, not half a page.
	var b bytes.Buffer
	if err := pageTemplates.ExecuteTemplate(&b, name, data); err != nil {
		p.log.Error("render page", "template", name, "err", err, "request_id", r.Header.Get("X-Request-Id"))
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

// login signs a user in: the password is ignored, as in the original sample.
func (p *productPage) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	user := strings.TrimSpace(r.PostFormValue("username"))
	if !validUser(user) {
		http.Error(w, fmt.Sprintf("user name must be 1 to %d bytes of printable UTF-8", maxUserLen), http.StatusBadRequest)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     sessionCookie,
		Value:    base64.RawURLEncoding.EncodeToString([]byte(user)),
		Path:     "/",
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
	http.Redirect(w, r, "/productpage", http.StatusSeeOther)
}

func (p *productPage) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, "/productpage", http.StatusSeeOther)
}

// sessionUser is the signed-in user's name, or "" when there is no valid session.
func sessionUser(r *http.Request) string {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil || !validUser(string(b)) {
		return ""
	}
	return string(b)
}

// validUser reports whether name can be a user name: it has to travel as an
// HTTP header value, so no control characters.
func validUser(name string) bool {
	if name == "" || len(name) > maxUserLen || !utf8.ValidString(name) {
		return false
	}
	return !strings.ContainsFunc(name, unicode.IsControl)
}

func (p *productPage) apiProducts(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, []product{theProduct})
}

func (p *productPage) apiDetails(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	d, err := p.getDetails(r.Context(), id, p.forwardHeaders(r))
	if err != nil {
		p.log.Warn("details unavailable", "err", err, "request_id", r.Header.Get("X-Request-Id"))
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: detailsUnavailable})
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (p *productPage) apiReviews(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	rv, err := p.getReviews(r.Context(), id, p.forwardHeaders(r))
	if err != nil {
		p.log.Warn("reviews unavailable", "err", err, "request_id", r.Header.Get("X-Request-Id"))
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: reviewsUnavailable})
		return
	}
	writeJSON(w, http.StatusOK, rv)
}
