package authn

// RequestAuth is the end-user identity a validated JWT proved.
type RequestAuth struct {
	// Principal is "<iss>/<sub>", Istio's request principal.
	Principal string
	Issuer    string
	Subject   string
	// Audiences is the aud claim as a list.
	Audiences []string
	// Presenter is the azp claim.
	Presenter string
	// Claims is the whole payload.
	Claims map[string]any
}
