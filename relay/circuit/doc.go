// Package circuit is pc2's relay for peers that cannot reach each other
// directly (both behind symmetric NATs, or a punch that failed): a node with
// a public address (or a port mapping), and every supernode, forwards the
// UDP packets of the two peers' END-TO-END QUIC connection, under quotas,
// and never sees plaintext.
//
// It exists because hole punching fails for symmetric ↔ symmetric pairs
// (nat-dht.md §A1) and a conversation must still start at once and keep
// going while a direct path is tried (nat-dht.md N4, N7). It follows the
// shape of libp2p's circuit relay v2 (reservations, per-circuit byte and
// duration limits) and Tailscale's DERP (the relay forwards packets of a
// connection whose keys it never holds), but on pc2's terms: packets, not
// streams, so the end-to-end QUIC connection keeps its own congestion
// control and can later move to a direct path without being torn down.
//
// Two planes on one UDP port:
//
//   - Control: each peer holds one QUIC connection to the relay (ALPN
//     "pc2-relay/1", TLS 1.3 certificates bound to the Ed25519 node keys by
//     transport/quicid, so both ends are authenticated for free). On it a
//     peer Reserves (becomes reachable through the relay, refreshed before
//     its TTL ends) and Connects to a reserved peer by node id; the relay
//     asks the target (Incoming → Accept) and hands both a session id. One
//     request per stream, messages of [Msg], length-prefixed.
//   - Data: datagrams of a 9-byte header (type 0x24, 8-byte session id)
//     followed by one packet of the peers' QUIC connection. The first byte
//     is below 0x40, so on a peer these datagrams share its one UDP socket
//     with QUIC (transport/udpmux hands them to [Client.Handle]).
//
// Why the control connection instead of signed datagrams: the peer runs it
// from the same socket as its data, so the address the relay binds for the
// session is the NAT mapping that the QUIC handshake has already proven
// reachable (return routability), which stops an attacker from binding a
// victim's address; the connection also carries keep-alives that hold the
// NAT mapping open, and its loss ends the peer's reservation and sessions.
//
// Forwarding is stateless per packet: one map lookup by session id, a check
// that the source is one of the session's two bound addresses (anything
// else is dropped: no spoofing, no reflection, no amplification since the
// relay sends exactly the bytes it received to the other bound address), a
// token bucket per session and per sending peer, a byte and a duration cap.
// A session over its bytes or duration is cut (both peers are told why);
// over its rate its packets are dropped (QUIC's congestion control backs
// off). Nothing else about one session touches another.
//
// Server.Listen owns its UDP socket and forwards data packets on its read
// loop, in recvmmsg/sendmmsg batches of 32, handing only QUIC packets to
// quic-go: quic-go's own non-QUIC queue holds 32 packets and dropped half
// of a QUIC burst (see relay/README.md).
// On a node's shared socket the relay plugs into transport/udpmux instead:
//
//	srv.Start(mux.Transport(), mux)
//	mux.Handle(udpmux.FirstByte(circuit.TypeData, circuit.TypeData), srv.Handle)
//
// and a peer likewise: circuit.Dial(ctx, mux.Transport(), mux, ...), then
// mux.Handle(..., client.Handle).
//
// The wire formats are hand-written: a fixed 9-byte header on the hot path,
// and eight fixed-layout control messages that parse only in their one
// canonical encoding (round trip fuzzed); a CBOR library would add
// allocations and non-canonical encodings for nothing.
package circuit
