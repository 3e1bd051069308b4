// Package kubetoken authenticates Kubernetes service-account tokens for the
// CA: a sidecar in a pod presents the token the kubelet projects for its
// service account (with the audience rampartd expects, Istio's "istio-ca" by
// default), and the API server's TokenReview says whose it is. The identity
// is the token's namespace and service account; nothing else in the token is
// trusted.
package kubetoken

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"

	"github.com/rampart-mesh/rampart/ca"
)

// DefaultAudience is the audience Istio's sidecars request for the token
// they send to their CA (the istio-token projected volume).
const DefaultAudience = "istio-ca"

// maxTokenBytes bounds what is sent to the API server; a service-account
// token is a JWT of about a kilobyte.
const maxTokenBytes = 16 << 10

// Anyone who reaches the CA can send a token, and each costs an API call:
// at most maxReviews run at once, a caller waits at most reviewWait for a
// turn, and a review takes at most reviewTimeout. A flood of tokens then
// costs refusals and retries, not a queue that holds every join back.
const (
	maxReviews    = 8
	reviewTimeout = 5 * time.Second
)

// reviewWait is how long a caller waits for a turn (a variable for tests).
var reviewWait = 2 * time.Second

// ErrBusy means every review slot stayed taken: nothing was decided.
var ErrBusy = errors.New("too many token reviews in flight")

// Reviewer checks tokens with TokenReview. Safe for concurrent use.
type Reviewer struct {
	client   authnclient.TokenReviewsGetter
	audience string
	slots    chan struct{}
}

// New returns a Reviewer asking client's API server, for tokens meant for
// audience ("" means DefaultAudience).
func New(client authnclient.TokenReviewsGetter, audience string) *Reviewer {
	if audience == "" {
		audience = DefaultAudience
	}
	return &Reviewer{client: client, audience: audience, slots: make(chan struct{}, maxReviews)}
}

// refused is a refusal of the credential (it matches ca.ErrCredentialRefused).
type refused struct{ msg string }

func (e refused) Error() string        { return e.msg }
func (e refused) Is(target error) bool { return target == ca.ErrCredentialRefused }

// Authenticate returns the service account token belongs to. A token the API
// server does not authenticate for the audience, or one that is not a
// service account's, is refused; a failed review (the API server unreachable,
// RBAC) is an error that refuses nothing.
func (r *Reviewer) Authenticate(ctx context.Context, token string) (ca.Identity, error) {
	if len(token) > maxTokenBytes || !jwtShaped(token) {
		return ca.Identity{}, refused{"malformed service-account token (want a JWT)"}
	}
	wait, cancel := context.WithTimeout(ctx, reviewWait)
	defer cancel()
	select {
	case r.slots <- struct{}{}:
		defer func() { <-r.slots }()
	case <-wait.Done():
		if err := ctx.Err(); err != nil {
			return ca.Identity{}, err // the caller went away
		}
		return ca.Identity{}, ErrBusy
	}
	ctx, cancelReview := context.WithTimeout(ctx, reviewTimeout)
	defer cancelReview()
	res, err := r.client.TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{r.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return ca.Identity{}, fmt.Errorf("token review: %w", err)
	}
	st := res.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return ca.Identity{}, refused{"service-account token refused by the API server: " + reason}
	}
	// The API server answers with the audiences the token is valid for among
	// those asked; one that does not list ours has not checked it.
	if !slices.Contains(st.Audiences, r.audience) {
		return ca.Identity{}, refused{fmt.Sprintf("service-account token is not for audience %q", r.audience)}
	}
	ident, err := identityOf(st.User.Username)
	if err != nil {
		return ca.Identity{}, refused{err.Error()}
	}
	// A service account's token carries its groups; a user of another
	// authenticator named like one does not.
	for _, g := range []string{"system:serviceaccounts", "system:serviceaccounts:" + ident.Namespace} {
		if !slices.Contains(st.User.Groups, g) {
			return ca.Identity{}, refused{fmt.Sprintf("token of %q without group %s: not a service account's", st.User.Username, g)}
		}
	}
	return ident, nil
}

// jwtShaped reports whether token has a JWT's three base64url segments.
func jwtShaped(token string) bool {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return false
		}
	}
	return true
}

// Consume does nothing: a service-account token is not single-use, its
// expiry (set by the kubelet, an hour by default) bounds it.
func (r *Reviewer) Consume(context.Context, string) error { return nil }

// identityOf reads system:serviceaccount:NAMESPACE:NAME.
func identityOf(username string) (ca.Identity, error) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	parts := strings.Split(rest, ":")
	if !ok || len(parts) != 2 {
		return ca.Identity{}, fmt.Errorf("token of %q, not of a service account", username)
	}
	ident := ca.Identity{Namespace: parts[0], ServiceAccount: parts[1]}
	if err := ident.Validate(); err != nil {
		return ca.Identity{}, errors.Join(fmt.Errorf("service account %q", rest), err)
	}
	return ident, nil
}
