package ca

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestIdentityID(t *testing.T) {
	tests := []struct {
		name    string
		ident   Identity
		want    string
		wantErr string
	}{
		{name: "simple", ident: Identity{"default", "web"}, want: "spiffe://example.org/ns/default/sa/web"},
		{name: "dotted service account", ident: Identity{"prod-1", "api.v2"}, want: "spiffe://example.org/ns/prod-1/sa/api.v2"},
		{name: "upper case namespace", ident: Identity{"Default", "web"}, wantErr: `namespace "Default" is not a valid DNS-1123 label`},
		{name: "dot in namespace", ident: Identity{"a.b", "web"}, wantErr: "namespace"},
		{name: "empty service account", ident: Identity{"default", ""}, wantErr: `service account ""`},
		{name: "slash in service account", ident: Identity{"default", "a/b"}, wantErr: "service account"},
		{name: "namespace too long", ident: Identity{strings.Repeat("a", 64), "web"}, wantErr: "at most 63"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tt.ident.ID(testTD)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ID() = %s, %v; want error %q", id, err, tt.wantErr)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("ID() = %s, %v; want %s", id, err, tt.want)
			}
			back, err := IdentityFromID(id)
			if err != nil || back != tt.ident {
				t.Errorf("IdentityFromID(ID()) = %v, %v; want %v", back, err, tt.ident)
			}
		})
	}
}

func TestIdentityFromID(t *testing.T) {
	tests := []struct {
		id      string
		want    Identity
		wantErr string
	}{
		{id: "spiffe://example.org/ns/default/sa/web", want: Identity{"default", "web"}},
		{id: "spiffe://example.org", wantErr: "is not of the form"},
		{id: "spiffe://example.org/ns/default/sa/web/x", wantErr: "is not of the form"},
		{id: "spiffe://example.org/sa/web/ns/default", wantErr: "is not of the form"},
		{id: "spiffe://example.org/ns/Default/sa/web", wantErr: "not a valid DNS-1123 label"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			got, err := IdentityFromID(spiffeid.RequireFromString(tt.id))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("IdentityFromID() = %v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("IdentityFromID() = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if got := ControlPlaneIdentity("mesh"); got != (Identity{"mesh", "rampartd"}) {
		t.Errorf("ControlPlaneIdentity = %v", got)
	}
}
