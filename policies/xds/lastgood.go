package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/rampart-mesh/rampart/policies/source"
)

// lastGoodFile, in Config.StateDir, holds the cluster objects of the last
// configuration loaded: what a refused object stays at, kept across a
// restart. Without it a restarted rampartd has no last good version of a
// refused security object, and must refuse to start rather than leave it out.
const lastGoodFile = "kube-last-good.json"

type lastGoodDoc struct {
	Version int             `json:"version"`
	Objects []source.Object `json:"objects"`
}

// loadLastGood reads the saved objects; a missing file is none.
func loadLastGood(dir string) (map[string]source.Object, error) {
	if dir == "" {
		return nil, nil
	}
	p := filepath.Join(dir, lastGoodFile)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var doc lastGoodDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if doc.Version != 1 {
		return nil, fmt.Errorf("%s: version %d; this rampartd reads version 1", p, doc.Version)
	}
	out := make(map[string]source.Object, len(doc.Objects))
	for _, o := range doc.Objects {
		out[objectKey(o)] = o
	}
	return out, nil
}

// digestOf summarizes a set of objects, so an unchanged set is not written.
func digestOf(good map[string]source.Object) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(good)) {
		o := good[k]
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00", k, o.APIVersion, o.Spec, o.CreationTimestamp.UnixNano())
		for _, l := range slices.Sorted(maps.Keys(o.Labels)) {
			fmt.Fprintf(h, "l\x00%s\x00%s\x00", l, o.Labels[l])
		}
		for _, a := range slices.Sorted(maps.Keys(o.Annotations)) {
			fmt.Fprintf(h, "a\x00%s\x00%s\x00", a, o.Annotations[a])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// saveLastGood writes the objects atomically (0600: they are the mesh's
// policy).
func saveLastGood(dir string, good map[string]source.Object) error {
	doc := lastGoodDoc{Version: 1, Objects: make([]source.Object, 0, len(good))}
	for _, k := range slices.Sorted(maps.Keys(good)) {
		doc.Objects = append(doc.Objects, good[k])
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, lastGoodFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, lastGoodFile)); err != nil {
		return err
	}
	// The rename is durable once the directory is.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
