package decisionlog

import (
	"bytes"
	"encoding/json"
	"testing"
)

// The fast encoder writes exactly what encoding/json writes for an Event, so
// that "the JSON encoding of Event" in the package documentation is the truth.
func TestAppendEventMatchesEncodingJSON(t *testing.T) {
	full := testEvent(t, 1, "/dry?q=1")
	full.Timestamp = t0
	full.Labels = map[string]string{"id": "a", "<b>": "&"}
	full.Erased = []string{"/input/x"}
	full.Masked = []string{"/input/y", "/result/z"}
	full.Seq, full.PrevHash = 42, GenesisHash
	in, err := clone(full.Input)
	if err != nil {
		t.Fatal(err)
	}
	full.Input = in

	tests := []struct {
		name string
		e    Event
	}{
		{name: "zero", e: Event{}},
		{name: "decision", e: full},
		{name: "odd strings", e: Event{
			DecisionID: "a\"b\\c\n\t\r\b\f\x00\x1f<>&\u2028\u2029é\xff\xfe end",
			Labels:     map[string]string{},
			Input: map[string]any{
				"nums":   []any{json.Number("1"), json.Number("-0.5e+10"), json.Number(""), 7, int64(-8), 1.5, 1e21, float32(2.5), uint8(3)},
				"nested": map[string]any{"z": nil, "a": []any{}, "m": map[string]any{}, "t": true, "f": false},
				"nil":    []any(nil),
				"nilmap": map[string]any(nil),
				"\u2028": "key",
			},
			Result:   map[string]string{"b": "2", "a": "1"},
			Bundles:  map[string]BundleInfo{"z": {Revision: "1"}, "a": {}},
			Rampart:  Mesh{Rule: -1, Status: 403, Allowed: true, DryRun: true},
			Seq:      1<<64 - 1,
			PrevHash: "x",
			Hash:     "y",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want bytes.Buffer
			enc := json.NewEncoder(&want)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(&tt.e); err != nil {
				t.Fatal(err)
			}
			got, err := appendEvent(nil, &tt.e)
			if err != nil {
				t.Fatal(err)
			}
			if w := bytes.TrimSuffix(want.Bytes(), []byte("\n")); !bytes.Equal(got, w) {
				t.Errorf("appendEvent:\n%s\nencoding/json:\n%s", got, w)
			}
		})
	}
}

func TestAppendValueRejects(t *testing.T) {
	for _, v := range []any{json.Number("01"), json.Number("1."), json.Number("abc"), map[string]any{"x": func() {}}} {
		if b, err := appendValue(nil, v); err == nil {
			t.Errorf("appendValue(%#v) = %s, want an error", v, b)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "\"\\\n\x00\x7f", "\u2028\u2029", "\xff\xfe\xfd", "é😀<>&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(map[string]any{s: s})
		if err != nil {
			t.Fatal(err)
		}
		// json.Marshal escapes HTML; undo that for the comparison.
		want = bytes.ReplaceAll(want, []byte(`\u003c`), []byte("<"))
		want = bytes.ReplaceAll(want, []byte(`\u003e`), []byte(">"))
		want = bytes.ReplaceAll(want, []byte(`\u0026`), []byte("&"))
		got, err := appendValue(nil, map[string]any{s: s})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("appendValue(%q) = %s, encoding/json %s", s, got, want)
		}
		if _, err := json.Marshal(json.Number(s)); s != "" && validNumber(s) != (err == nil) {
			t.Errorf("validNumber(%q) = %v, but encoding/json says %v", s, validNumber(s), err)
		}
	})
}
