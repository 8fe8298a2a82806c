// Package record holds the data the Boson DHT stores for others: values
// (immutable, signed mutable, encrypted) and peer records, in their v3.1
// form and in the v2 form today's public network still speaks.
//
// It exists apart from the message codec because records outlive messages:
// a value arrives in a STORE_VALUE, is checked, stored, served in FIND_VALUE
// responses and re-announced, and every step must agree on the same bytes to
// hash and sign. Keeping the digests, signatures, size limits and store rules
// in one place (shared/protocols/boson.md §4) means the RPC layer, storage and
// the applications that publish names and peer records cannot drift apart.
//
// What is signed (all signatures are pure Ed25519; "BE" is big-endian):
//
//	v3.1 signed value     Sign_k( SHA-256( k ‖ seq:int32 BE ‖ v ) )
//	v3.1 encrypted value  Sign_k( SHA-256( k ‖ rec ‖ n ‖ seq:int32 BE ‖ v ) ), v = box(plain, n)
//	v3.1 peer, node part  os  = Sign_o( SHA-256( id ‖ o ‖ f:int64 BE ‖ seq:int32 BE ) )
//	v3.1 peer             sig = Sign_id( SHA-256( id ‖ seq ‖ [o ‖ os] ‖ f ‖ utf8(e) ‖ [ex] ) )
//	v2 mutable value      Sign_k( [rec] ‖ n ‖ seq:int32 BE ‖ v )        (raw bytes, k not included)
//	v2 peer               Sign_id( nodeId ‖ origin ‖ port:uint16 BE ‖ [utf8(alt)] )
//
// Value ids: immutable SHA-256(v) in both versions; mutable k in v3.1 and
// SHA-256(k ‖ n) in v2.
//
// Decoding (the CBOR map forms and the fields that messages carry) checks
// structure only: lengths, required fields, which fields may appear
// together. Validate and ValidateV2 check what a storing node must check
// before accepting: size limits, ids and signatures. Byte slices of a
// decoded record alias the input; Clone before keeping one.
package record
