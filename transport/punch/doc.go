// Package punch opens direct paths between two nodes behind NATs: UDP hole
// punching by synchronized simultaneous send with peer-reflexive learning,
// birthday probing when exactly one side is behind a symmetric
// (destination-dependent, random-port) NAT, and TCP simultaneous open with
// listen+connect on one port.
//
// It exists because a relayed connection costs a relay's bandwidth and adds
// latency, and most NAT pairs can be traversed directly when both sides send
// at the same moment to the right addresses (nat-dht.md §A1). The package
// holds only the algorithms: sockets come in through the small [PacketConn]
// interface (so the attempt can run on the node's shared QUIC socket), and
// the rendezvous that exchanges candidates, tokens and the measured RTT comes
// in through [Signal] (the NAT lab's rendezvous server today, the
// supernode's signalling later).
//
// One attempt:
//
//  1. Both sides learn their reflexive address (STUN or the lab's probe
//     server) and whether their mapping depends on the destination ("hard").
//  2. [Negotiate]: the initiator sends an [Offer] (attempt id, a fresh 32-byte
//     token, candidates), the responder answers with its own; the initiator
//     measures the round trip, sends Sync carrying it and waits RTT/2, the
//     responder starts when Sync arrives (the DCUtR timing), so both first
//     punches leave at about the same moment.
//  3. [PunchUDP]: both send authenticated punches to every candidate on a
//     bounded schedule, acknowledge every valid punch to its observed source
//     and add that source to their targets (peer-reflexive learning). When one
//     side is hard and no path has appeared after a few RTTs, the hard side
//     opens up to 256 extra sockets that punch toward the easy side, and the
//     easy side probes random ports of the hard side's address at no more than
//     200 packets/s, stopping after 2,048 probes (birthday paradox: 99.9%).
//  4. [PunchTCP] is the TCP alternative: listen and connect on one port
//     (SO_REUSEADDR/SO_REUSEPORT) at the agreed moment, then an authenticated
//     hello on the connection.
//
// Every punch carries the attempt id and an HMAC tag keyed by the attempt's
// token, so stray packets, packets of other attempts and forgeries are
// ignored; a side also ignores packets claiming its own role (reflections).
//
// Hand-written rather than taken from pion/ice or go-libp2p's holepunch:
// ICE's paced STUN checks and nomination have no birthday probing and no
// listen+connect TCP, libp2p's code is bound to its host and streams, and
// here the attempt must run on PC2's shared socket through two small
// interfaces, with a fixed 36-byte packet that the socket demultiplexes by
// its first byte.
package punch
