package compile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/rampart-mesh/rampart/policies/source"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// decodeIstioSpec decodes o's spec into m the way istiod receives it: the API
// server prunes the fields a CRD's schema does not declare, and istio/api's
// unmarshalers skip unknown fields (AllowUnknownFields), so a stray or misspelt
// field is dropped and the rest of the object stays in force. Each dropped
// field gets an unknownCode error finding with its path. What is left must
// decode strictly: a wrong type or an unknown enum value, which the API server
// refuses, gets a schemaCode finding and ok is false.
func decodeIstioSpec(o source.Object, m proto.Message, schemaCode, unknownCode string) (fs []Finding, ok bool) {
	if len(o.Spec) == 0 || string(o.Spec) == "null" {
		return nil, true
	}
	err := protojson.Unmarshal(o.Spec, m)
	if err == nil {
		return nil, true
	}
	pruned, dropped := pruneUnknown(o.Spec, m.ProtoReflect().Descriptor(), "spec")
	for _, d := range dropped {
		if o.File == clusterFile {
			// The API server kept it, so the cluster's CRD declares it: an
			// Istio newer than the istio.io/api this build links.
			fs = append(fs, newFinding(o, SeverityError, unknownCode, d.path,
				"%s has no field %q in the Istio API this Rampart was built with, but the cluster's CRD keeps it (a newer Istio): enforced without it, the object could allow more than it says; remove the field or upgrade Rampart",
				o.Kind, d.name))
			continue
		}
		fs = append(fs, newFinding(o, SeverityError, unknownCode, d.path,
			"%s has no field %q here: Kubernetes prunes it and istiod ignores it, so the rest of the object is enforced without it; correct its name or remove it",
			o.Kind, d.name))
	}
	if len(dropped) > 0 {
		proto.Reset(m)
		err = protojson.Unmarshal(pruned, m)
	}
	if err != nil {
		where, why := schemaError(pruned, m.ProtoReflect().Descriptor(), "spec", err)
		return append(fs, newFinding(o, SeverityError, schemaCode, where, "%s", why)), false
	}
	return fs, true
}

// schemaError finds, in js (a JSON object for a message md that does not
// decode), the field that makes it fail: each field is decoded alone, and one
// that fails alone is searched further when it is a message (or a list or
// map of them). It returns the field's path under path and the decoder's
// error without its position in the JSON (the JSON is re-marshalled, so a
// position in it would point nowhere in the user's file). When no field fails
// alone (say, two fields of one oneof), it is the object's, and err.
func schemaError(js []byte, md protoreflect.MessageDescriptor, path string, err error) (string, string) {
	if p, e := failingField(js, md, path); e != nil {
		return p, cleanProtoErr(e)
	}
	return path, cleanProtoErr(err)
}

func failingField(js []byte, md protoreflect.MessageDescriptor, path string) (string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(js, &obj); err != nil || obj == nil {
		return path, protojson.Unmarshal(js, dynamicpb.NewMessage(md))
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		one, _ := json.Marshal(map[string]json.RawMessage{k: obj[k]})
		err := protojson.Unmarshal(one, dynamicpb.NewMessage(md))
		if err == nil {
			continue
		}
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		at := path + "." + k
		if fd != nil {
			if want := shapeOf(fd); want != "" && !hasShape(obj[k], want) {
				return at, fmt.Errorf("want %s, got %s", want, jsonKind(obj[k]))
			}
		}
		if fd == nil || fd.Kind() != protoreflect.MessageKind && !(fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind) {
			return at, err
		}
		switch {
		case fd.IsMap():
			vd := fd.MapValue()
			var m map[string]json.RawMessage
			if json.Unmarshal(obj[k], &m) != nil || vd.Kind() != protoreflect.MessageKind || wellKnown(vd.Message()) {
				return at, err
			}
			for _, mk := range slices.Sorted(maps.Keys(m)) {
				if p, e := failingField(m[mk], vd.Message(), fmt.Sprintf("%s[%s]", at, mk)); e != nil {
					return p, e
				}
			}
		case wellKnown(fd.Message()):
			return at, err
		case fd.IsList():
			var l []json.RawMessage
			if json.Unmarshal(obj[k], &l) != nil {
				return at, err
			}
			for i, e := range l {
				if p, ferr := failingField(e, fd.Message(), fmt.Sprintf("%s[%d]", at, i)); ferr != nil {
					return p, ferr
				}
			}
		default:
			if p, e := failingField(obj[k], fd.Message(), at); e != nil {
				return p, e
			}
		}
		return at, err
	}
	return path, nil
}

// wellKnown: google.protobuf types have JSON forms of their own (a Duration
// is a string, a Struct any object); they are judged whole.
func wellKnown(md protoreflect.MessageDescriptor) bool {
	return strings.HasPrefix(string(md.FullName()), "google.protobuf.")
}

// shapeOf is the JSON shape a field needs: "a list" or "an object" (for a
// message or a map, well-known types aside), else "".
func shapeOf(fd protoreflect.FieldDescriptor) string {
	switch {
	case fd.IsList():
		return "a list"
	case fd.IsMap():
		return "an object"
	case fd.Kind() == protoreflect.MessageKind && !wellKnown(fd.Message()):
		return "an object"
	}
	return ""
}

func hasShape(raw json.RawMessage, want string) bool {
	b := bytes.TrimSpace(raw)
	if len(b) == 0 || string(b) == "null" {
		return true // protojson reads null as unset
	}
	return want == "a list" && b[0] == '[' || want == "an object" && b[0] == '{'
}

func jsonKind(raw json.RawMessage) string {
	b := bytes.TrimSpace(raw)
	switch {
	case len(b) == 0:
		return "nothing"
	case b[0] == '[':
		return "a list"
	case b[0] == '{':
		return "an object"
	case b[0] == '"':
		return "a string " + string(b)
	case string(b) == "true" || string(b) == "false":
		return "a boolean"
	}
	return "a number " + string(b)
}

// protoErrPos is protojson's "proto: " prefix and its "(line 1:45)"
// positions.
var protoErrPos = regexp.MustCompile(`\s*\(line \d+:\d+\)`)

func cleanProtoErr(err error) string {
	msg := strings.TrimSpace(strings.TrimPrefix(protoErrPos.ReplaceAllString(err.Error(), ""), "proto:"))
	return strings.TrimSpace(strings.TrimPrefix(msg, ":"))
}

// clusterFile is the File of the objects policies/source/kube reads from a
// cluster (kube.File; compile does not import the client).
const clusterFile = "kubernetes"

// droppedField is a field pruneUnknown removed: its path and its name.
type droppedField struct{ path, name string }

// pruneUnknown removes from js, a JSON object for a message of type md, every
// field md does not declare (by JSON or proto name, as protojson accepts), at
// any depth. It returns the pruned JSON and the paths of the removed fields
// under path, e.g. spec.rules[0].to[0].operation.pathz. JSON of the wrong
// shape is left alone for the decoder to refuse.
func pruneUnknown(js []byte, md protoreflect.MessageDescriptor, path string) ([]byte, []droppedField) {
	var dropped []droppedField
	out, changed := pruneMessage(js, md, path, &dropped)
	if !changed {
		return js, nil
	}
	return out, dropped
}

func pruneMessage(raw []byte, md protoreflect.MessageDescriptor, path string, dropped *[]droppedField) ([]byte, bool) {
	// Well-known types have their own JSON forms (a Struct takes any key).
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return raw, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return raw, false
	}
	changed := false
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fd == nil {
			*dropped = append(*dropped, droppedField{path: path + "." + k, name: k})
			delete(obj, k)
			changed = true
			continue
		}
		if v, ok := pruneField(obj[k], fd, path+"."+k, dropped); ok {
			obj[k] = v
			changed = true
		}
	}
	if !changed {
		return raw, false
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return raw, false
	}
	return out, true
}

func pruneField(raw []byte, fd protoreflect.FieldDescriptor, path string, dropped *[]droppedField) ([]byte, bool) {
	switch {
	case fd.IsMap():
		vd := fd.MapValue()
		if vd.Kind() != protoreflect.MessageKind {
			return raw, false
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return raw, false
		}
		changed := false
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if v, ok := pruneMessage(m[k], vd.Message(), fmt.Sprintf("%s[%s]", path, k), dropped); ok {
				m[k] = v
				changed = true
			}
		}
		return remarshal(raw, m, changed)
	case fd.Kind() != protoreflect.MessageKind:
		return raw, false
	case fd.IsList():
		var l []json.RawMessage
		if err := json.Unmarshal(raw, &l); err != nil {
			return raw, false
		}
		changed := false
		for i := range l {
			if v, ok := pruneMessage(l[i], fd.Message(), fmt.Sprintf("%s[%d]", path, i), dropped); ok {
				l[i] = v
				changed = true
			}
		}
		return remarshal(raw, l, changed)
	}
	return pruneMessage(raw, fd.Message(), path, dropped)
}

func remarshal(raw []byte, v any, changed bool) ([]byte, bool) {
	if !changed {
		return raw, false
	}
	out, err := json.Marshal(v)
	if err != nil {
		return raw, false
	}
	return out, true
}
