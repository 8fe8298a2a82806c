// Package packet frames, encrypts and authenticates Boson DHT datagrams
// (shared/protocols/boson.md §2.2):
//
//	v3 (3.0 and 3.1):  senderId[32] ‖ nonce[24] ‖ MAC[16] ‖ XSalsa20(CBOR message)
//	v2 (2.0.x):        senderId[32] ‖ MAC[16] ‖ XSalsa20(CBOR message)
//
// The box key of a pair of nodes is crypto_box_beforenm of their X25519
// keys (derived from the Ed25519 ids), so it is the same in both directions
// and for both framings. A successful MAC check is what authenticates the
// sender id; a packet that fails it is dropped.
//
// It exists apart from the message codec because framing is where the
// cost and the attack surface of the DHT sit: the Curve25519 agreement of a
// new peer costs about as much as thousands of packets of a known one (see
// BenchmarkOpenNewPeer), and the sender id in clear is chosen by whoever
// sends the packet. The Codec therefore
//
//   - caches one context per peer (shared key, nonce state) in a bounded LRU,
//     so memory does not grow with the number of ids seen;
//   - admits a context for an inbound packet only after its MAC verifies,
//     so packets with made-up ids cannot evict real peers;
//   - rejects ids that are not Ed25519 points (about half of random 32-byte
//     strings) in the point decompression, before the X25519 scalar
//     multiplication that costs most;
//   - caps the Curve25519 agreements it performs for unknown inbound senders
//     per second (Config.MaxNewPeersPerSecond), so a flood of fresh ids costs
//     a bounded share of a core while known peers keep being served: beyond
//     the budget an unknown sender is refused before any curve arithmetic,
//     and ids that are not points do not spend it. The node must still
//     throttle per source address before calling Open;
//   - binds each box key to one id: an id and its sign-flipped twin (bit 255)
//     share an X25519 key, so Boson's framing cannot tell them apart, and
//     the twin of a cached peer is refused.
//
// v3 nonces: each peer context starts from 24 random bytes and increments
// (little-endian) per packet sent; a packet whose nonce equals the last one
// accepted from that peer is refused, as Boson 3.x does. v2 uses one fixed
// nonce per node pair, (X25519pk(a) XOR X25519pk(b))[0:24], for every packet
// in both directions: keystream reuse that v2 interoperability forces. The
// node must only use v2 framing with peers that do not answer v3 (OpenAny
// tells which framing a packet used), never between two PC2 nodes.
//
// Size rules: a sealed datagram is at most 1400 bytes on IPv4 and 1200 on
// IPv6 (ErrTooBig, which a node answers with error 205); an inbound one is
// dropped above that limit plus 512 bytes and below 74 (v3) or 61 (v2) bytes.
//
// Open and Seal write into caller buffers and do not allocate for a known
// peer; see the package benchmarks.
package packet
