// Package message encodes and decodes Boson DHT messages: the CBOR map that
// travels, encrypted, inside one UDP datagram (shared/protocols/boson.md §2).
//
// It exists so that every PC2 component that talks DHT (the node, the
// simulator, tools) agrees with Boson byte for byte. Boson 3.1 ("V3") is the
// native dialect; the v2 field set ("V2", Boson 2.0.x / Carrier 2.0.4) is
// selectable per call because today's public network still speaks it.
//
// # Wire shape
//
//	{y: type|method, t: txid, q|r|e: body, v: version}
//
// written as an indefinite-length map in exactly that order: a 3.x receiver
// rejects a body before "y", and the order matches the golden vectors of
// Boson's CompatibilityTests, which the tests of this package reproduce byte
// for byte. Lists of nodes are definite (v3), node entries indefinite
// arrays [id, ip, port] or [id, ip4, port4, ip6, port6].
//
// # API for a node
//
// A Message is a flat, reusable union of all bodies; the fields that apply
// depend on Type and Method (see each field). The hot path is:
//
//	var m message.Message                 // one per worker, reused
//	err := m.Decode(plaintext, message.V3) // aliases plaintext, no allocation
//	switch m.Method { ... }                // dispatch
//	reply.Respond(&m); reply.Nodes4 = ...
//	out, err := reply.Append(buf[:0], message.V3) // appends, no allocation
//
// Decode returns a *DecodeError carrying the envelope read so far; a node
// answers ErrUnknownMethod with CodeMethodUnknown and drops other failures
// silently, as 3.x does. What stays with the node: token checks, the
// per-response limits (MaxNodesPerResponse, MaxNodesPerSourcePerResponse,
// MaxPeersPerResponse), record validation (dht/record) and the choice of
// dialect per peer.
//
// # Codec choice
//
// The codec is hand-written on dht/internal/cbor rather than built on
// github.com/fxamacker/cbor/v2. Both were measured in one run on the same
// machine doing the same job (dht/cborcmp: a FIND_NODE response with 8 IPv4
// nodes, decoded into Message, re-encoded to Boson's exact bytes); median of
// 6 runs on a loaded 2-core machine:
//
//	                       decode                     encode
//	hand-written (this)    0.54 µs,  0 B,  0 allocs   0.58 µs,   0 B,  0 allocs
//	fxamacker/cbor v2.9.0  5.9 µs, 856 B, 20 allocs   8.4 µs, 488 B, 46 allocs
//
// about 11× faster decoding and 8–14× faster encoding, without allocation.
// fxamacker's struct decoding also cannot see key order (needed to refuse a
// body before "y"), and reproducing Boson's indefinite maps means driving
// its streaming encoder key by key. dht/BENCH.md has the commands.
package message
