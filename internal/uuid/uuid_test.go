package uuid

import (
	"regexp"
	"testing"
)

var form = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewIsAVersion4UUIDAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		id := New()
		if !form.MatchString(id) {
			t.Fatalf("%q is not a canonical version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("%q handed out twice", id)
		}
		seen[id] = true
	}
}

func BenchmarkNew(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		_ = New()
	}
}
