package kubetoken

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/rampart-mesh/rampart/ca"
)

// reviewer answers every TokenReview with status (or err), and records the
// audiences asked for.
func reviewer(t *testing.T, status authnv1.TokenReviewStatus, err error) (*Reviewer, *[]string) {
	t.Helper()
	cs := fake.NewClientset()
	var asked []string
	cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		asked = tr.Spec.Audiences
		if err != nil {
			return true, nil, err
		}
		out := tr.DeepCopy()
		out.Status = status
		return true, out, nil
	})
	return New(cs.AuthenticationV1(), ""), &asked
}

func TestAuthenticate(t *testing.T) {
	sa := func(user string, aud ...string) authnv1.TokenReviewStatus {
		ns := strings.Split(user+"::", ":")[2]
		return authnv1.TokenReviewStatus{Authenticated: true, Audiences: aud,
			User: authnv1.UserInfo{Username: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}}
	}
	for _, tc := range []struct {
		name    string
		status  authnv1.TokenReviewStatus
		apiErr  error
		token   string
		want    ca.Identity
		refused string // "" when the review must fail without refusing
	}{
		{name: "a service account's token", status: sa("system:serviceaccount:bar:sleep", "istio-ca"), want: ca.Identity{Namespace: "bar", ServiceAccount: "sleep"}},
		{name: "not authenticated", status: authnv1.TokenReviewStatus{Error: "token expired"}, refused: "refused by the API server: token expired"},
		{name: "authenticated for other audiences", status: sa("system:serviceaccount:bar:sleep", "api"), refused: `not for audience "istio-ca"`},
		{name: "no audiences in the answer", status: sa("system:serviceaccount:bar:sleep"), refused: `not for audience "istio-ca"`},
		{name: "a user's token", status: sa("alice", "istio-ca"), refused: `"alice", not of a service account`},
		{name: "a name with a colon too many", status: sa("system:serviceaccount:bar:sleep:x", "istio-ca"), refused: "not of a service account"},
		{name: "an invalid namespace", status: sa("system:serviceaccount:Bar_1:sleep", "istio-ca"), refused: "service account"},
		{name: "an oversized token", token: strings.Repeat("a", maxTokenBytes+1), refused: "malformed"},
		{name: "not a JWT", token: "garbage-token", refused: "want a JWT"},
		{name: "a user named like a service account", status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"},
			User: authnv1.UserInfo{Username: "system:serviceaccount:prod:payments", Groups: []string{"system:authenticated"}}}, refused: "without group system:serviceaccounts"},
		{name: "the API server fails", apiErr: errors.New("connection refused")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, asked := reviewer(t, tc.status, tc.apiErr)
			tok := tc.token
			if tok == "" {
				tok = "eyJhbGciOi.eHh4.c2ln"
			}
			got, err := r.Authenticate(t.Context(), tok)
			switch {
			case tc.want != (ca.Identity{}):
				if err != nil || got != tc.want {
					t.Fatalf("Authenticate = %v, %v; want %v", got, err, tc.want)
				}
				if len(*asked) != 1 || (*asked)[0] != DefaultAudience {
					t.Errorf("the review asked for audiences %v, want [%s]", *asked, DefaultAudience)
				}
			case tc.refused != "":
				if !errors.Is(err, ca.ErrCredentialRefused) || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("Authenticate = %v, %v; want a refusal containing %q", got, err, tc.refused)
				}
			default:
				if err == nil || errors.Is(err, ca.ErrCredentialRefused) {
					t.Fatalf("Authenticate = %v, %v; want an error that refuses nothing (the client may retry)", got, err)
				}
			}
		})
	}
}

func TestConsumeSpendsNothing(t *testing.T) {
	r, _ := reviewer(t, authnv1.TokenReviewStatus{}, nil)
	if err := r.Consume(t.Context(), "tok"); err != nil {
		t.Fatal(err)
	}
}

// reviews is a TokenReview client that runs review for every call,
// concurrently (client-go's fake serialises its reactors).
type reviews func(*authnv1.TokenReview) (*authnv1.TokenReview, error)

func (f reviews) TokenReviews() authnclient.TokenReviewInterface { return f }
func (f reviews) Create(_ context.Context, tr *authnv1.TokenReview, _ metav1.CreateOptions) (*authnv1.TokenReview, error) {
	return f(tr)
}

// Reviews run at most maxReviews at once; a caller that finds no turn within
// reviewWait gets ErrBusy (nothing decided), so a flood of tokens cannot queue
// every join behind it.
func TestReviewsAreBounded(t *testing.T) {
	defer func(w time.Duration) { reviewWait = w }(reviewWait)
	reviewWait = 50 * time.Millisecond
	release := make(chan struct{})
	started := make(chan struct{}, maxReviews+1)
	r := New(reviews(func(*authnv1.TokenReview) (*authnv1.TokenReview, error) {
		started <- struct{}{}
		<-release
		return nil, errors.New("released")
	}), "")
	done := make(chan error, maxReviews)
	for range maxReviews {
		go func() { _, err := r.Authenticate(t.Context(), "a.b.c"); done <- err }()
	}
	for range maxReviews {
		<-started
	}
	if _, err := r.Authenticate(t.Context(), "a.b.c"); !errors.Is(err, ErrBusy) || errors.Is(err, ca.ErrCredentialRefused) {
		t.Errorf("a review past the bound = %v, want ErrBusy (not a refusal)", err)
	}
	close(release)
	for range maxReviews {
		<-done
	}
}
