package authz

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LoadBundleDir reads every .rego file under dir into a Bundle (what `rampartctl
// authz compile --out DIR` writes: the workload's compiled policy and the Rego
// library). The revision is the directory's .revision file, if any.
func LoadBundleDir(dir string) (Bundle, error) {
	// A writer replaces the files first and .revision last: read the revision
	// before and after the modules, and again if it moved meanwhile.
	for range 5 {
		before, _ := os.ReadFile(filepath.Join(dir, ".revision"))
		b, err := loadBundleDir(dir)
		after, _ := os.ReadFile(filepath.Join(dir, ".revision"))
		if err != nil || string(before) == string(after) {
			return b, err
		}
	}
	return Bundle{}, fmt.Errorf("authz bundle %s keeps changing while being read", dir)
}

func loadBundleDir(dir string) (Bundle, error) {
	b := Bundle{Modules: map[string]string{}}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".rego") || strings.HasSuffix(path, "_test.rego") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		b.Modules[filepath.ToSlash(rel)] = string(data)
		return nil
	})
	if err != nil {
		return b, fmt.Errorf("authz bundle %s: %w", dir, err)
	}
	if len(b.Modules) == 0 {
		return b, fmt.Errorf("authz bundle %s: no .rego files", dir)
	}
	b.Revision = BundleDirRevision(dir)
	return b, nil
}

// BundleDirRevision is the revision of the bundle directory dir: its
// .revision file, or "dir:DIR" without one.
func BundleDirRevision(dir string) string {
	if rev, err := os.ReadFile(filepath.Join(dir, ".revision")); err == nil {
		return strings.TrimSpace(string(rev))
	}
	return "dir:" + dir
}
