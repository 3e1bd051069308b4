package authz

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// A hand-written policy module in the compiled shape, so these tests exercise the
// engine without the compiler.
func testBundle(rev, allowPath string) Bundle {
	policy := `package rampart.policy

import rego.v1

hits contains {"action": "allow", "policy": "foo/allow", "rule": 0, "dry_run": false} if input.rampart.request.path == "` + allowPath + `"

hits contains {"action": "deny", "policy": "foo/deny", "rule": 0, "dry_run": false} if input.rampart.request.path == "/admin"

hits contains {"action": "deny", "policy": "foo/dry", "rule": 1, "dry_run": true} if input.rampart.request.method == "DELETE"

hits contains {"action": "audit", "policy": "foo/audit", "rule": 0, "dry_run": false} if input.rampart.request.method == "PUT"

allow_policies := {"foo/allow"}

dry_run_allow_policies := set()
`
	return Bundle{Revision: rev, Modules: map[string]string{"policy.rego": policy}}
}

func httpReq(method, path string) *Request {
	return &Request{Protocol: ProtocolHTTP, Method: method, Path: path, SourceIP: "10.0.0.1", DestinationIP: "10.0.0.2", DestinationPort: 80}
}

func TestEngineDecisions(t *testing.T) {
	ctx := context.Background()
	e := New(Config{})
	if d := e.Decide(ctx, httpReq("GET", "/ok")); d.Allowed || d.Status != 403 || !strings.Contains(d.Reason, "no authorization bundle") {
		t.Fatalf("before any bundle: %+v; want a denial", d)
	}
	if err := e.Load(ctx, testBundle("r1", "/ok")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		req           *Request
		allowed       bool
		status        int
		policy        string
		dryRunAllowed bool
		audit         int
	}{
		{"allowed", httpReq("GET", "/ok"), true, 200, "foo/allow", true, 0},
		{"no ALLOW rule matches", httpReq("GET", "/other"), false, 403, "", true, 0},
		{"DENY wins", httpReq("GET", "/admin"), false, 403, "foo/deny", true, 0},
		{"dry-run DENY recorded, not enforced", httpReq("DELETE", "/ok"), true, 200, "foo/allow", false, 0},
		{"AUDIT recorded, no effect", httpReq("PUT", "/ok"), true, 200, "foo/allow", true, 1},
		{"query string is not part of the path", httpReq("GET", "/ok?x=/admin"), true, 200, "foo/allow", true, 0},
		{"dot segments normalized before matching", httpReq("GET", "/public/../admin"), false, 403, "foo/deny", true, 0},
		{"lower-case method is a bad request", httpReq("get", "/ok"), false, 400, "", true, 0},
		{"NUL in the path is a bad request", httpReq("GET", "/ok%00"), false, 400, "", true, 0},
		{"TCP denial has no HTTP status", &Request{Protocol: ProtocolTCP, DestinationPort: 5432}, false, 0, "", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.Decide(ctx, tc.req)
			if d.Allowed != tc.allowed || d.Status != tc.status || d.Policy != tc.policy {
				t.Fatalf("got allowed=%t status=%d policy=%q (%s); want %t %d %q", d.Allowed, d.Status, d.Policy, d.Reason, tc.allowed, tc.status, tc.policy)
			}
			wantStage := "policy"
			if tc.status == 400 {
				wantStage = "request"
			}
			if d.Stage != wantStage {
				t.Fatalf("stage %q, want %q", d.Stage, wantStage)
			}
			if d.DryRun.Allowed != tc.dryRunAllowed || len(d.Audit) != tc.audit {
				t.Fatalf("dry-run %+v audit %v", d.DryRun, d.Audit)
			}
			if len(d.DecisionID) != 36 || d.Revision != "r1" {
				t.Fatalf("decision id %q revision %q", d.DecisionID, d.Revision)
			}
			if !d.Allowed && d.Status == 403 {
				want := "rbac_access_denied_matched_policy[none]"
				if d.Policy != "" {
					want = "rbac_access_denied_matched_policy[" + d.Policy + "]"
				}
				if d.ResponseCodeDetail() != want {
					t.Fatalf("detail %q, want %q", d.ResponseCodeDetail(), want)
				}
			}
		})
	}
}

// A bundle that does not compile is refused and the previous one stays in force.
func TestEngineKeepsLastGoodBundle(t *testing.T) {
	ctx := context.Background()
	e := New(Config{})
	if err := e.Load(ctx, testBundle("good", "/ok")); err != nil {
		t.Fatal(err)
	}
	bad := Bundle{Revision: "bad", Modules: map[string]string{"p.rego": "package rampart.policy\n\nhits := {"}}
	if err := e.Load(ctx, bad); err == nil {
		t.Fatal("a bundle that does not parse was loaded")
	}
	unused := Bundle{Revision: "bad2", Modules: map[string]string{"p.rego": "package rampart.policy\n\nimport rego.v1\n\nhits := set() if {\n\tinput.x == 1\n\ty := 1\n}\n"}}
	err := e.Load(ctx, unused)
	if err == nil {
		t.Fatal("a bundle that fails the strict compile (unused variable) was loaded")
	}
	// The error points at the expression's own line (7), not at its rule's
	// (5): a bundle that fails is compiled again with every location.
	if !strings.Contains(err.Error(), "p.rego:7:") {
		t.Fatalf("compile error without the term's position: %v", err)
	}
	if d := e.Decide(ctx, httpReq("GET", "/ok")); !d.Allowed || d.Revision != "good" {
		t.Fatalf("after refused loads: %+v", d)
	}
}

// An evaluation error or an undefined or malformed result denies.
func TestEngineFailsClosed(t *testing.T) {
	ctx := context.Background()
	const head = "package rampart.policy\n\nimport rego.v1\n\nallow_policies := set()\n\ndry_run_allow_policies := set()\n\n"
	for _, tc := range []struct{ name, module string }{
		{"undefined hits", head + "hits := {1} if input.nothing\n"},
		{"malformed hits", head + "hits := {1, 2}\n"},
		{"unknown action", head + "hits := {{\"action\": \"maybe\", \"policy\": \"a/b\", \"rule\": 0, \"dry_run\": false}}\n"},
		{"conflicting values at runtime", head + "x := 1 if input.rampart.l7\n\nx := 2 if input.rampart.l7\n\nhits := {{\"action\": \"allow\", \"policy\": \"a/b\", \"rule\": x, \"dry_run\": false}}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := New(Config{})
			if err := e.Load(ctx, Bundle{Revision: "x", Modules: map[string]string{"p.rego": tc.module}}); err != nil {
				t.Fatal(err)
			}
			d := e.Decide(ctx, httpReq("GET", "/"))
			if d.Allowed || d.Status != 403 || !strings.HasPrefix(d.Reason, "error") {
				t.Fatalf("got %+v; want a denial with an error reason", d)
			}
		})
	}
}

// Requests racing a bundle swap see the old bundle or the new one, never a mix.
func TestEngineAtomicSwap(t *testing.T) {
	ctx := context.Background()
	e := New(Config{})
	if err := e.Load(ctx, testBundle("a", "/a")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var bad, total atomic.Int64
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := e.Decide(ctx, httpReq("GET", "/a"))
				total.Add(1)
				// Bundle a allows /a; bundle b allows only /b.
				if (d.Revision == "a") != d.Allowed {
					bad.Add(1)
				}
			}
		}()
	}
	for i := range 20 {
		rev, path := "a", "/a"
		if i%2 == 0 {
			rev, path = "b", "/b"
		}
		if err := e.Load(ctx, testBundle(rev, path)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if n := bad.Load(); n > 0 {
		t.Fatalf("%d of %d decisions mixed one bundle's revision with another's rules", n, total.Load())
	}
	if total.Load() == 0 {
		t.Fatal("no decisions raced the swaps")
	}
}

// Requests share their connection's part of the input (connItemsCache): from
// many goroutines at once, each decision still follows its own peer.
func TestEngineConnectionItemsSharedSafely(t *testing.T) {
	ctx := context.Background()
	e := New(Config{CacheSize: -1}) // every request evaluated
	policy := `package rampart.policy

import rego.v1

hits contains {"action": "allow", "policy": "foo/good", "rule": 0, "dry_run": false} if {
	input.rampart.source.namespace == "good"
	input.rampart.destination.port == 8080
}

allow_policies := {"foo/good"}

dry_run_allow_policies := set()
`
	if err := e.Load(ctx, Bundle{Revision: "c1", Modules: map[string]string{"policy.rego": policy}}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				ns := []string{"good", "bad"}[(g+i)%2]
				port := []int{8080, 9090}[(i/2)%2]
				r := &Request{Protocol: ProtocolHTTP, Method: "GET", Path: "/x", SourceIP: "10.0.0.1", DestinationIP: "10.0.0.2",
					DestinationPort: port, SourcePrincipal: "spiffe://cluster.local/ns/" + ns + "/sa/client"}
				if d := e.Decide(ctx, r); d.Allowed != (ns == "good" && port == 8080) {
					wrong.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := wrong.Load(); n != 0 {
		t.Fatalf("%d decisions followed another request's peer", n)
	}
}
