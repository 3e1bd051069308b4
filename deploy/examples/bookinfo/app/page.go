package main

import (
	"html/template"
	"strings"
)

// pageView is what the product page template renders. Exactly one of Details
// and DetailsError is set, and likewise for the reviews.
type pageView struct {
	Product      product
	User         string // signed-in user, "" if none
	Details      *bookDetails
	DetailsError string
	Reviews      *reviewsView
	ReviewsError string
}

type reviewsView struct {
	Instance string // "reviews-v2"
	Reviews  []reviewView
}

type reviewView struct {
	Reviewer    string
	Text        string
	Stars       string // "★★★★", "" without a rating
	NoStars     string // "☆", the rest of five
	Color       string // one of cssColor's values
	RatingError string
}

// cssColor maps a star colour from reviews to the CSS colour we draw it in; a
// colour we do not know is drawn black rather than passed into the page.
var cssColor = map[string]string{"black": "black", "red": "red"}

const maxStars = 5

func newReviewsView(rv *reviewsResponse) *reviewsView {
	v := &reviewsView{Instance: rv.Instance}
	for _, r := range rv.Reviews {
		rw := reviewView{Reviewer: r.Reviewer, Text: r.Text}
		switch {
		case r.Rating == nil:
		case r.Rating.Error != "":
			rw.RatingError = r.Rating.Error
		default:
			n := min(max(r.Rating.Stars, 0), maxStars)
			rw.Stars = strings.Repeat("★", n)
			rw.NoStars = strings.Repeat("☆", maxStars-n)
			rw.Color = cssColor[r.Rating.Color]
			if rw.Color == "" {
				rw.Color = "black"
			}
		}
		v.Reviews = append(v.Reviews, rw)
	}
	return v
}

// pageTemplates are the HTML pages. html/template escapes everything that comes
// from a request or an upstream: user names, review text, the instance name.
var pageTemplates = template.Must(template.New("").Parse(`
{{define "head"}}<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bookinfo{{with .}} – {{.}}{{end}}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 0 auto; padding: 1rem; color: #222; }
header { display: flex; justify-content: space-between; align-items: center; border-bottom: 1px solid #ccc; padding-bottom: .5rem; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .2rem 1rem .2rem 0; }
blockquote { margin: 1rem 0; padding: .5rem 1rem; border-left: 4px solid #ccc; }
.stars { font-size: 1.4rem; letter-spacing: .1rem; }
.error { color: #a00; }
.served { color: #555; }
</style>
</head>
<body>
{{end}}

{{define "index"}}{{template "head" ""}}
<header><strong>Bookinfo</strong></header>
<h1>Bookinfo</h1>
<p>A small book shop of four services: productpage calls details and reviews, and reviews v2 and v3 call ratings.</p>
<ul>
<li><a href="/productpage">The product page</a></li>
<li><a href="/api/v1/products">/api/v1/products</a>: the products, as JSON</li>
<li><a href="/api/v1/products/0">/api/v1/products/0</a>: a product's details, as JSON</li>
<li><a href="/api/v1/products/0/reviews">/api/v1/products/0/reviews</a>: a product's reviews, as JSON</li>
</ul>
</body>
</html>
{{end}}

{{define "page"}}{{template "head" .Product.Title}}
<header>
<strong>Bookinfo</strong>
{{if .User}}<span>signed in as <b class="user">{{.User}}</b> · <a href="/logout">sign out</a></span>
{{else}}<form method="post" action="/login">
<input name="username" placeholder="user name" required maxlength="64" aria-label="user name">
<input name="password" type="password" placeholder="password (ignored)" aria-label="password">
<button type="submit">Sign in</button>
</form>
{{end}}</header>

<h1>{{.Product.Title}}</h1>
<p>{{.Product.Description}}</p>

<section>
<h2>Book details</h2>
{{with .Details}}<table>
<tr><th>Author</th><td>{{.Author}}</td></tr>
<tr><th>Year</th><td>{{.Year}}</td></tr>
<tr><th>Type</th><td>{{.Type}}</td></tr>
<tr><th>Pages</th><td>{{.Pages}}</td></tr>
<tr><th>Publisher</th><td>{{.Publisher}}</td></tr>
<tr><th>Language</th><td>{{.Language}}</td></tr>
<tr><th>ISBN-10</th><td>{{.ISBN10}}</td></tr>
<tr><th>ISBN-13</th><td>{{.ISBN13}}</td></tr>
</table>
{{else}}<p class="error">{{$.DetailsError}}</p>
{{end}}</section>

<section>
<h2>Book reviews</h2>
{{with .Reviews}}{{range .Reviews}}<blockquote>
<p>{{.Text}}</p>
<footer>— {{.Reviewer}}</footer>
{{if .RatingError}}<p class="error">{{.RatingError}}</p>
{{else if .Color}}<p class="stars" style="color: {{.Color}}">{{.Stars}}{{.NoStars}}</p>
{{end}}</blockquote>
{{end}}<p class="served">Reviews served by: <code>{{.Instance}}</code></p>
{{else}}<p class="error">{{$.ReviewsError}}</p>
{{end}}</section>
</body>
</html>
{{end}}
`))
