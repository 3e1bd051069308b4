package decisionlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// GenesisHash is the prev_hash of the first record of a chain (seq 1).
var GenesisHash = strings.Repeat("0", sha256.Size*2)

const (
	hashMember = `,"hash":"`
	hexLen     = sha256.Size * 2
	// hashTail is the length of the hash value plus the closing `"}`.
	hashTail = hexLen + 2
)

// encodeRecord appends e's record line, sealed with its hash and ending in
// "\n", to dst and returns it with the hash. e.Hash is set.
func encodeRecord(dst []byte, e *Event) ([]byte, string, error) {
	e.Hash = ""
	b, err := appendEvent(dst, e)
	if err != nil {
		return dst, "", fmt.Errorf("encode decision %s: %w", e.DecisionID, err)
	}
	// b is dst + C, C ending in `,"hash":""}`.
	c := b[len(dst):]
	if !bytes.HasSuffix(c, []byte(hashMember+`"}`)) {
		return dst, "", errNotLast
	}
	sum := sha256.Sum256(c)
	e.Hash = hex.EncodeToString(sum[:])
	b = append(b[:len(b)-2], e.Hash...)
	return append(b, '"', '}', '\n'), e.Hash, nil
}

// link is what the chain needs from a record.
type link struct {
	Seq      uint64
	PrevHash string
	Hash     string
}

// parseLine reads one record line (without its "\n"). err says why the line is
// not a record; hashOK says whether its bytes match its hash.
func parseLine(line []byte) (l link, hashOK bool, err error) {
	n := len(line)
	if n < len(hashMember)+hashTail+1 || line[0] != '{' || !bytes.HasSuffix(line, []byte(`"}`)) ||
		!bytes.HasSuffix(line[:n-hashTail], []byte(hashMember)) {
		return l, false, errors.New(`the line does not end with a "hash" member`)
	}
	h := line[n-hashTail : n-2]
	if !isHex(h) {
		return l, false, errors.New("the hash is not 64 lower-case hex digits")
	}
	var rec struct {
		Seq      *uint64 `json:"seq"`
		PrevHash *string `json:"prev_hash"`
	}
	if err := json.Unmarshal(line, &rec); err != nil {
		return l, false, fmt.Errorf("the line is not a JSON record: %w", err)
	}
	if rec.Seq == nil || rec.PrevHash == nil {
		return l, false, errors.New("the record has no seq or prev_hash")
	}
	if *rec.Seq == 0 {
		return l, false, errors.New("the record has seq 0")
	}
	if !isHex([]byte(*rec.PrevHash)) {
		return l, false, errors.New("prev_hash is not 64 lower-case hex digits")
	}
	l = link{Seq: *rec.Seq, PrevHash: *rec.PrevHash, Hash: string(h)}
	d := sha256.New()
	d.Write(line[:n-hashTail])
	d.Write([]byte(`"}`))
	var sum [sha256.Size]byte
	var got [hexLen]byte
	hex.Encode(got[:], d.Sum(sum[:0]))
	return l, string(got[:]) == l.Hash, nil
}

func isHex(b []byte) bool {
	if len(b) != hexLen {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
