// Package uuid makes the identifiers the proxy hands out per request and per
// decision (x-request-id, decision_id): random (version 4) UUIDs in their
// canonical text form.
//
// They identify; they do not protect anything, so they come from math/rand/v2's
// per-thread ChaCha8 generator (122 random bits, unpredictable in practice and
// without a system call), not from crypto/rand.
package uuid

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
)

// New returns a new random UUID, e.g. "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f".
func New() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:16], rand.Uint64())
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:36], b[10:16])
	return string(out[:])
}
