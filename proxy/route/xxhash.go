package route

import (
	"encoding/binary"
	"math/bits"
)

// xxHash64 with seed 0 is the hash Envoy's hash policies apply to header,
// cookie, source address and query parameter values; using the same function
// keeps a request's key identical to the one an Envoy sidecar would compute.
const (
	xxPrime1 uint64 = 0x9E3779B185EBCA87
	xxPrime2 uint64 = 0xC2B2AE3D27D4EB4F
	xxPrime3 uint64 = 0x165667B19E3779F9
	xxPrime4 uint64 = 0x85EBCA77C2B2AE63
	xxPrime5 uint64 = 0x27D4EB2F165667C5
)

func xxRound(acc, input uint64) uint64 {
	acc += input * xxPrime2
	acc = bits.RotateLeft64(acc, 31)
	return acc * xxPrime1
}

func xxMerge(acc, v uint64) uint64 {
	acc ^= xxRound(0, v)
	return acc*xxPrime1 + xxPrime4
}

// xxHash64 returns XXH64(s, seed).
func xxHash64(s string, seed uint64) uint64 {
	n := len(s)
	var h uint64
	if n >= 32 {
		v1 := seed + xxPrime1 + xxPrime2
		v2 := seed + xxPrime2
		v3 := seed
		v4 := seed - xxPrime1
		for len(s) >= 32 {
			v1 = xxRound(v1, binary.LittleEndian.Uint64([]byte(s[0:8])))
			v2 = xxRound(v2, binary.LittleEndian.Uint64([]byte(s[8:16])))
			v3 = xxRound(v3, binary.LittleEndian.Uint64([]byte(s[16:24])))
			v4 = xxRound(v4, binary.LittleEndian.Uint64([]byte(s[24:32])))
			s = s[32:]
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = xxMerge(h, v1)
		h = xxMerge(h, v2)
		h = xxMerge(h, v3)
		h = xxMerge(h, v4)
	} else {
		h = seed + xxPrime5
	}
	h += uint64(n)
	for len(s) >= 8 {
		h ^= xxRound(0, binary.LittleEndian.Uint64([]byte(s[:8])))
		h = bits.RotateLeft64(h, 27)*xxPrime1 + xxPrime4
		s = s[8:]
	}
	if len(s) >= 4 {
		h ^= uint64(binary.LittleEndian.Uint32([]byte(s[:4]))) * xxPrime1
		h = bits.RotateLeft64(h, 23)*xxPrime2 + xxPrime3
		s = s[4:]
	}
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i]) * xxPrime5
		h = bits.RotateLeft64(h, 11) * xxPrime1
	}
	h ^= h >> 33
	h *= xxPrime2
	h ^= h >> 29
	h *= xxPrime3
	h ^= h >> 32
	return h
}
