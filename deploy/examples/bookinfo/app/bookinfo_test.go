package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { removeBinary() }))
}

// seen wraps a service and remembers the headers of every request it got.
type seen struct {
	mu      sync.Mutex
	headers []http.Header
}

func (s *seen) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.headers = append(s.headers, r.Header.Clone())
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.headers)
}

// last is the headers of the latest request; it fails the test if there was none.
func (s *seen) last(t *testing.T) http.Header {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.headers) == 0 {
		t.Fatal("the service got no request")
	}
	return s.headers[len(s.headers)-1]
}

type topologyOptions struct {
	version string // reviews version; v1 if empty
	// A service that is down: its address refuses connections.
	detailsDown, reviewsDown, ratingsDown bool
	// ratings, if set, replaces the real ratings service.
	ratings http.Handler
	// reviews, if set, replaces the real reviews service.
	reviews        http.Handler
	ratingsTimeout time.Duration
}

// topology is the four services, in-process, wired together by URL the way
// the mesh wires the processes, with every call recorded.
type topology struct {
	page                      *httptest.Server
	details, reviews, ratings seen
}

func startTopology(t *testing.T, o topologyOptions) *topology {
	t.Helper()
	if o.version == "" {
		o.version = "v1"
	}
	top := &topology{}
	tr := newTransport()
	t.Cleanup(tr.CloseIdleConnections)

	ratings := o.ratings
	if ratings == nil {
		ratings = newRatings()
	}
	ratingsURL := start(t, top.ratings.wrap(ratings), o.ratingsDown)

	reviews := o.reviews
	if reviews == nil {
		rv, err := newReviews(reviewsConfig{Version: o.version, RatingsURL: ratingsURL, RatingsTimeout: o.ratingsTimeout, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		reviews = rv
	}
	reviewsURL := start(t, top.reviews.wrap(reviews), o.reviewsDown)
	detailsURL := start(t, top.details.wrap(newDetails()), o.detailsDown)

	pp, err := newProductPage(productPageConfig{DetailsURL: detailsURL, ReviewsURL: reviewsURL, Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	top.page = httptest.NewServer(pp)
	t.Cleanup(top.page.Close)
	return top
}

// start serves h and returns its URL; a down service's server is closed at
// once, so its URL refuses connections.
func start(t *testing.T, h http.Handler, down bool) string {
	t.Helper()
	srv := httptest.NewServer(h)
	if down {
		srv.Close()
	} else {
		t.Cleanup(srv.Close)
	}
	return srv.URL
}

// get fetches path from srv with the given headers and returns status and body.
func get(t *testing.T, c *http.Client, base, path string, h http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range h {
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (top *topology) getPage(t *testing.T, h http.Header) string {
	t.Helper()
	status, body := get(t, top.page.Client(), top.page.URL, "/productpage", h)
	if status != http.StatusOK {
		t.Fatalf("GET /productpage: status %d, want 200; body:\n%s", status, body)
	}
	return body
}

func assertContains(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q; page:\n%s", w, body)
		}
	}
}

func assertLacks(t *testing.T, body string, unwanted ...string) {
	t.Helper()
	for _, u := range unwanted {
		if strings.Contains(body, u) {
			t.Errorf("page has %q; page:\n%s", u, body)
		}
	}
}

func TestProductPageShowsEachReviewsVersion(t *testing.T) {
	tests := []struct {
		name        string
		version     string
		want        []string
		unwanted    []string
		ratingCalls int
	}{
		{
			name:        "v1 has no stars and does not call ratings",
			version:     "v1",
			want:        []string{"Reviews served by: <code>reviews-v1</code>"},
			unwanted:    []string{"★", "☆", "color: black", "color: red", "reviews-v2", "reviews-v3"},
			ratingCalls: 0,
		},
		{
			name:        "v2 has black stars",
			version:     "v2",
			want:        []string{"Reviews served by: <code>reviews-v2</code>", `style="color: black">★★★★★</p>`, `style="color: black">★★★★☆</p>`},
			unwanted:    []string{"color: red", "reviews-v1", "reviews-v3", ratingsUnavailable},
			ratingCalls: 1,
		},
		{
			name:        "v3 has red stars",
			version:     "v3",
			want:        []string{"Reviews served by: <code>reviews-v3</code>", `style="color: red">★★★★★</p>`, `style="color: red">★★★★☆</p>`},
			unwanted:    []string{"color: black", "reviews-v1", "reviews-v2", ratingsUnavailable},
			ratingCalls: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top := startTopology(t, topologyOptions{version: tt.version})
			page := top.getPage(t, nil)
			assertContains(t, page, tt.want...)
			assertContains(t, page, "The Comedy of Errors", "William Shakespeare", "978-0000000001",
				"Reviewer1", "Reviewer2", theReviews[0].text)
			assertLacks(t, page, tt.unwanted...)
			assertLacks(t, page, detailsUnavailable, reviewsUnavailable)
			if got := top.ratings.count(); got != tt.ratingCalls {
				t.Errorf("ratings got %d calls, want %d", got, tt.ratingCalls)
			}
		})
	}
}

func TestProductPageDegradesWhenAServiceFails(t *testing.T) {
	failing := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "boom", http.StatusServiceUnavailable)
	})
	// slow answers only when the caller has given up.
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	tests := []struct {
		name     string
		opts     topologyOptions
		want     []string
		unwanted []string
	}{
		{
			name:     "ratings unreachable",
			opts:     topologyOptions{version: "v2", ratingsDown: true},
			want:     []string{ratingsUnavailable, "reviews-v2", theReviews[0].text, "William Shakespeare"},
			unwanted: []string{"★", "☆", reviewsUnavailable, detailsUnavailable},
		},
		{
			name:     "ratings answers 503",
			opts:     topologyOptions{version: "v3", ratings: failing},
			want:     []string{ratingsUnavailable, "reviews-v3", theReviews[0].text},
			unwanted: []string{"★", "☆", reviewsUnavailable},
		},
		{
			name:     "ratings slower than the reviews timeout",
			opts:     topologyOptions{version: "v2", ratings: slow, ratingsTimeout: 50 * time.Millisecond},
			want:     []string{ratingsUnavailable, "reviews-v2"},
			unwanted: []string{"★", reviewsUnavailable},
		},
		{
			name:     "details unreachable",
			opts:     topologyOptions{version: "v2", detailsDown: true},
			want:     []string{detailsUnavailable, "reviews-v2", "★★★★★"},
			unwanted: []string{"William Shakespeare", reviewsUnavailable},
		},
		{
			name:     "reviews unreachable",
			opts:     topologyOptions{reviewsDown: true},
			want:     []string{reviewsUnavailable, "William Shakespeare"},
			unwanted: []string{"Reviews served by", theReviews[0].text, detailsUnavailable},
		},
		{
			name:     "reviews answers 503",
			opts:     topologyOptions{reviews: failing},
			want:     []string{reviewsUnavailable, "William Shakespeare"},
			unwanted: []string{"Reviews served by"},
		},
		{
			name:     "everything behind productpage down",
			opts:     topologyOptions{detailsDown: true, reviewsDown: true},
			want:     []string{detailsUnavailable, reviewsUnavailable, "The Comedy of Errors"},
			unwanted: []string{"William Shakespeare"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top := startTopology(t, tt.opts)
			page := top.getPage(t, nil) // getPage insists on 200
			assertContains(t, page, tt.want...)
			assertLacks(t, page, tt.unwanted...)
		})
	}
}

// signIn posts the login form with a cookie-keeping client and returns the
// client and the page it was redirected to.
func signIn(t *testing.T, top *topology, user string) (*http.Client, string) {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: top.page.Client().Transport, Jar: jar}
	resp, err := c.PostForm(top.page.URL+"/login", url.Values{"username": {user}, "password": {"ignored"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/productpage" {
		t.Fatalf("login as %q: ended at %s with status %d, want /productpage and 200; body:\n%s", user, resp.Request.URL.Path, resp.StatusCode, body)
	}
	return c, string(body)
}

func TestEndUserReachesEveryService(t *testing.T) {
	tests := []struct {
		name   string
		signIn string // user to sign in as, if any
		header string // end-user header on the incoming request, if any
		want   string // end-user the services behind productpage must see; "" for none
	}{
		{name: "from the session", signIn: "jason", want: "jason"},
		{name: "from the incoming header", header: "jason", want: "jason"},
		{name: "the session wins over the header", signIn: "jason", header: "mallory", want: "jason"},
		{name: "nobody", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top := startTopology(t, topologyOptions{version: "v3"})
			c := top.page.Client()
			if tt.signIn != "" {
				var page string
				c, page = signIn(t, top, tt.signIn)
				assertContains(t, page, `signed in as <b class="user">`+tt.signIn+`</b>`, `href="/logout"`)
			}
			h := http.Header{}
			if tt.header != "" {
				h.Set("end-user", tt.header)
			}
			status, _ := get(t, c, top.page.URL, "/productpage", h)
			if status != http.StatusOK {
				t.Fatalf("GET /productpage: status %d", status)
			}
			for _, svc := range []struct {
				name string
				seen *seen
			}{{"details", &top.details}, {"reviews", &top.reviews}, {"ratings", &top.ratings}} {
				if got := svc.seen.last(t).Get("end-user"); got != tt.want {
					t.Errorf("%s saw end-user %q, want %q", svc.name, got, tt.want)
				}
			}
		})
	}
}

func TestLogoutEndsTheSession(t *testing.T) {
	top := startTopology(t, topologyOptions{version: "v2"})
	c, _ := signIn(t, top, "jason")
	status, page := get(t, c, top.page.URL, "/logout", nil) // follows the redirect
	if status != http.StatusOK {
		t.Fatalf("GET /logout: status %d", status)
	}
	assertContains(t, page, `<form method="post" action="/login">`)
	assertLacks(t, page, "signed in as")
	if got := top.reviews.last(t).Get("end-user"); got != "" {
		t.Errorf("after logout reviews saw end-user %q, want none", got)
	}
}

func TestTracingHeadersPropagateEndToEnd(t *testing.T) {
	top := startTopology(t, topologyOptions{version: "v2"})
	in := http.Header{
		"x-request-id":      {"7d3f1c2a-request"},
		"traceparent":       {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"tracestate":        {"rampart=abc"},
		"x-b3-traceid":      {"80f198ee56343ba864fe8b2a57d3eff7"},
		"x-b3-spanid":       {"e457b5a2e4d86bd1"},
		"x-b3-parentspanid": {"05e3ac9a4f6e3b90"},
		"x-b3-sampled":      {"1"},
		"b3":                {"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"},
		"sw8":               {"1-abc-def"},
		"user-agent":        {"bookinfo-test/1"},
		"x-not-propagated":  {"nope"},
		"cookie":            {"tracking=1"},
	}
	top.getPage(t, in)
	for _, svc := range []struct {
		name string
		seen *seen
	}{{"details", &top.details}, {"reviews", &top.reviews}, {"ratings (two hops away)", &top.ratings}} {
		got := svc.seen.last(t)
		for k, want := range in {
			if k == "x-not-propagated" || k == "cookie" {
				if v := got.Get(k); v != "" {
					t.Errorf("%s saw %s: %q; it must not be forwarded", svc.name, k, v)
				}
				continue
			}
			if diff := cmp.Diff(want, got.Values(k)); diff != "" {
				t.Errorf("%s header %s (-sent +seen):\n%s", svc.name, k, diff)
			}
		}
	}
}

func TestPageEscapesHostileInput(t *testing.T) {
	const hostile = `<script>alert("pwned")</script>`
	const escaped = `&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;`

	t.Run("user name", func(t *testing.T) {
		top := startTopology(t, topologyOptions{version: "v2"})
		_, page := signIn(t, top, hostile)
		assertContains(t, page, `signed in as <b class="user">`+escaped+`</b>`)
		assertLacks(t, page, "<script")
		// Escaping is for the page only: the services behind get the name itself.
		if got := top.ratings.last(t).Get("end-user"); got != hostile {
			t.Errorf("ratings saw end-user %q, want %q", got, hostile)
		}
	})

	t.Run("what an upstream answers", func(t *testing.T) {
		evil := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, reviewsResponse{
				Instance: hostile,
				Reviews: []review{{
					Reviewer: `<img src=x onerror=alert(1)>`,
					Text:     hostile,
					Rating:   &rating{Stars: 3, Color: `red;background:url(javascript:alert(1))`},
				}},
			})
		})
		top := startTopology(t, topologyOptions{reviews: evil})
		page := top.getPage(t, nil)
		assertContains(t, page, "Reviews served by: <code>"+escaped+"</code>", "&lt;img src=x onerror=alert(1)&gt;",
			`style="color: black">★★★☆☆</p>`) // an unknown colour is drawn black
		assertLacks(t, page, "<script", "<img", "javascript:")
	})
}

func TestLoginRejectsBadUserNames(t *testing.T) {
	tests := []struct {
		name string
		user string
	}{
		{name: "empty", user: ""},
		{name: "blank", user: "   "},
		{name: "control character", user: "jason\r\nX-Injected: 1"},
		{name: "too long", user: strings.Repeat("a", maxUserLen+1)},
		{name: "not UTF-8", user: "jas\xffon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top := startTopology(t, topologyOptions{})
			resp, err := top.page.Client().PostForm(top.page.URL+"/login", url.Values{"username": {tt.user}})
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status %d, want 400", resp.StatusCode)
			}
			if c := resp.Cookies(); len(c) != 0 {
				t.Errorf("got cookies %v, want none", c)
			}
		})
	}
}

func TestAPI(t *testing.T) {
	tests := []struct {
		name       string
		opts       topologyOptions
		path       string
		wantStatus int
		want       string // JSON
	}{
		{
			name:       "products",
			path:       "/api/v1/products",
			wantStatus: http.StatusOK,
			want:       `[{"id":0,"title":"The Comedy of Errors","description":"` + theProduct.Description + `"}]`,
		},
		{
			name:       "details",
			path:       "/api/v1/products/3",
			wantStatus: http.StatusOK,
			want: `{"id":3,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,
				"publisher":"Rampart Press","language":"English","ISBN-10":"0000000001","ISBN-13":"978-0000000001"}`,
		},
		{
			name:       "reviews v3",
			opts:       topologyOptions{version: "v3"},
			path:       "/api/v1/products/3/reviews",
			wantStatus: http.StatusOK,
			want: `{"id":3,"instance":"reviews-v3","reviews":[
				{"reviewer":"Reviewer1","text":"` + theReviews[0].text + `","rating":{"stars":5,"color":"red"}},
				{"reviewer":"Reviewer2","text":"` + theReviews[1].text + `","rating":{"stars":4,"color":"red"}}]}`,
		},
		{
			name:       "details down",
			opts:       topologyOptions{detailsDown: true},
			path:       "/api/v1/products/0",
			wantStatus: http.StatusServiceUnavailable,
			want:       `{"error":"` + detailsUnavailable + `"}`,
		},
		{
			name:       "reviews down",
			opts:       topologyOptions{reviewsDown: true},
			path:       "/api/v1/products/0/reviews",
			wantStatus: http.StatusServiceUnavailable,
			want:       `{"error":"` + reviewsUnavailable + `"}`,
		},
		{
			name:       "bad id",
			path:       "/api/v1/products/one",
			wantStatus: http.StatusBadRequest,
			want:       `{"error":"product id \"one\" is not a non-negative integer"}`,
		},
		{
			name:       "health",
			path:       "/health",
			wantStatus: http.StatusOK,
			want:       `{"status":"ok"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top := startTopology(t, tt.opts)
			status, body := get(t, top.page.Client(), top.page.URL, tt.path, nil)
			if status != tt.wantStatus {
				t.Errorf("status %d, want %d", status, tt.wantStatus)
			}
			assertJSON(t, body, tt.want)
		})
	}
}

// TestServiceAnswers pins the JSON each backend service answers, key for key.
func TestServiceAnswers(t *testing.T) {
	v1, err := newReviews(reviewsConfig{Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	// ratingsURL refuses connections.
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	tr := newTransport()
	defer tr.CloseIdleConnections()
	v2Down, err := newReviews(reviewsConfig{Version: "v2", RatingsURL: down.URL, Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		svc        http.Handler
		path       string
		wantStatus int
		want       string
	}{
		{
			name: "details", svc: newDetails(), path: "/details/0", wantStatus: http.StatusOK,
			want: `{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,
				"publisher":"Rampart Press","language":"English","ISBN-10":"0000000001","ISBN-13":"978-0000000001"}`,
		},
		{
			name: "ratings", svc: newRatings(), path: "/ratings/5", wantStatus: http.StatusOK,
			want: `{"id":5,"ratings":{"Reviewer1":5,"Reviewer2":4}}`,
		},
		{
			name: "reviews v1", svc: v1, path: "/reviews/0", wantStatus: http.StatusOK,
			want: `{"id":0,"instance":"reviews-v1","reviews":[
				{"reviewer":"Reviewer1","text":"` + theReviews[0].text + `"},
				{"reviewer":"Reviewer2","text":"` + theReviews[1].text + `"}]}`,
		},
		{
			name: "reviews v2 without ratings", svc: v2Down, path: "/reviews/0", wantStatus: http.StatusOK,
			want: `{"id":0,"instance":"reviews-v2","reviews":[
				{"reviewer":"Reviewer1","text":"` + theReviews[0].text + `","rating":{"error":"Ratings service is currently unavailable"}},
				{"reviewer":"Reviewer2","text":"` + theReviews[1].text + `","rating":{"error":"Ratings service is currently unavailable"}}]}`,
		},
		{
			name: "details health", svc: newDetails(), path: "/health", wantStatus: http.StatusOK,
			want: `{"status":"ok"}`,
		},
		{
			name: "ratings health", svc: newRatings(), path: "/health", wantStatus: http.StatusOK,
			want: `{"status":"ok"}`,
		},
		{
			name: "reviews health", svc: v1, path: "/health", wantStatus: http.StatusOK,
			want: `{"status":"ok"}`,
		},
		{
			name: "negative id", svc: newRatings(), path: "/ratings/-1", wantStatus: http.StatusBadRequest,
			want: `{"error":"product id \"-1\" is not a non-negative integer"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tt.svc.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if rec.Code != tt.wantStatus {
				t.Errorf("status %d, want %d", rec.Code, tt.wantStatus)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			assertJSON(t, rec.Body.String(), tt.want)
		})
	}
}

// assertJSON compares JSON documents by value, so key order and spacing do not matter.
func assertJSON(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("answer is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad test: want is not JSON: %v", err)
	}
	if diff := cmp.Diff(w, g); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		build   func() error
		wantErr string
	}{
		{
			name:    "unknown reviews version",
			build:   func() error { _, err := newReviews(reviewsConfig{Version: "v4"}); return err },
			wantErr: `reviews version "v4": want v1, v2 or v3`,
		},
		{
			name: "ratings URL without a host",
			build: func() error {
				_, err := newReviews(reviewsConfig{Version: "v2", RatingsURL: "http://"})
				return err
			},
			wantErr: `ratings URL "http://": want http://host:port`,
		},
		{
			name:    "details URL of another scheme",
			build:   func() error { _, err := newProductPage(productPageConfig{DetailsURL: "ftp://details"}); return err },
			wantErr: `details URL "ftp://details"`,
		},
		{
			name:    "negative timeout",
			build:   func() error { _, err := newProductPage(productPageConfig{Timeout: -time.Second}); return err },
			wantErr: "details timeout -1s: must be positive",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.build()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
