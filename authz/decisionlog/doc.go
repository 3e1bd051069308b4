// Package decisionlog owns the sidecar's tamper-evident audit log of
// authorization decisions: the event (OPA's decision-log event plus Rampart's
// mesh fields), which decisions are logged, masking and dropping (built-in
// rules plus an optional OPA "package system.log" policy, with OPA's
// semantics), a hash-chained JSON Lines file with size-based rotation, and
// Verify, which checks a set of files offline.
//
// It imports authz for the Decision type only, and must not import anything
// under proxy/, policies/ or cmd/.
//
// # Pipeline
//
// Log enqueues an Event on a bounded buffer and returns; Run is the only
// writer. For each event Run, in order: takes a private copy of input (and,
// with a policy, of result); applies the built-in masks (the authorization and
// proxy-authorization request headers become "<redacted>", and the signature of
// anything that looks like a JWT becomes "<redacted>", in input, result, the
// result's headers, member names, and the mesh reason and request id alike;
// each recorded in masked); evaluates data.system.log.drop with the event as input (true: the
// event is not logged); evaluates data.system.log.mask on the same input and
// applies its rules in order (a JSON-pointer string erases that field and is
// recorded in erased; {"op": "upsert", "path", "value"} sets it and is recorded
// in masked; {"op": "remove", "path"} erases it). Paths must start with /input
// or /result; a path that does not exist is skipped. A policy that fails to
// evaluate, or yields a malformed rule, drops the event (reason "error") rather
// than risk logging what it should have hidden — as OPA does. The policy may
// not call http.send or net.lookup_ip_addr: it runs on the writer for every
// event. Unlike OPA, path
// segments are RFC 6901 JSON-pointer segments ("~1" is "/", "~0" is "~"), not
// URL-escaped ones.
//
// # Record format and hash chain
//
// Each file is JSON Lines: one record per line, UTF-8, terminated by "\n". A
// record is the JSON encoding of Event: compact, top-level members in the
// order of Event's fields, ending with "seq", "prev_hash" and "hash"; nested
// objects have their keys sorted; no HTML escaping. Because "hash" is always
// the last member, every line L (without its "\n") ends with
//
//	,"hash":"H"}
//
// where H is 64 lower-case hex digits. The record's canonical form C is L with
// H removed — the record's JSON with hash set to "", ending in ,"hash":""} —
// and
//
//	H         = hex(SHA-256(C))
//	prev_hash = H of the previous record; 64 "0" characters for seq 1
//	seq       = the previous record's seq + 1; the first record has seq 1
//
// The hash covers the bytes as written, so a verifier needs no JSON
// canonicalization. For one file, in Python:
//
//	import hashlib, json, sys
//	prev = None
//	for n, l in enumerate(open(sys.argv[1], "rb"), 1):
//	    l = l.rstrip(b"\n")
//	    assert l[:-66].endswith(b',"hash":"'), n
//	    h = l[-66:-2].decode()
//	    assert hashlib.sha256(l[:-66] + b'"}').hexdigest() == h, n
//	    r = json.loads(l)
//	    assert prev is None or (r["seq"], r["prev_hash"]) == (prev[0] + 1, prev[1]), n
//	    prev = (r["seq"], h)
//
// The chain continues across rotation: the first record of a new file links to
// the last record of the file rotated before it, and seq keeps counting. On
// restart Run reads the last record of the newest file and continues from it.
// A current file that ends in a torn line (a crash mid-write) is rotated aside
// whole and the chain continues from its last complete record; one whose last
// line is not a record is rotated aside and a new chain starts at seq 1. Verify
// across the files reports a torn line followed by a record that continues the
// chain from the last complete one as a note (VerifyReport.Torn) and goes on
// checking; any other damage is a break where it is. A write error
// while running makes Run reopen the file and continue from what reached it.
//
// What the chain can and cannot show: any change to a record, a record
// deleted, inserted or moved between the first and last record verified, and a
// torn final line. It cannot show that the newest records were removed, nor
// that the oldest file was deleted (rotation does that too), nor a rewrite of
// the tail by someone who recomputes every later hash. Anchor Logger.Head (seq
// and hash) somewhere the writer of the file cannot change, and compare it with
// VerifyReport.LastSeq and LastHash.
package decisionlog
