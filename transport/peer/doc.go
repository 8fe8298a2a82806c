// Package peer is the node-to-node stream API for plugins:
// Dial(ctx, id, protocol) and Listen(protocol) over one end-to-end,
// mutually authenticated QUIC connection per pair of nodes, whichever path
// carries it: a relay (relay/circuit) or a direct path found by hole
// punching (transport/punch), with the connection moving between the two
// without breaking its streams.
//
// It exists because the pieces below it each solve one part: the relay
// connects any two nodes at once, punching finds a cheaper path for most
// NAT pairs, but a plugin wants neither to know which nor to reconnect when
// the path changes (nat-dht.md N4, N7: "start on the relay, upgrade to
// direct, fall back to the relay").
//
// # One stable remote address per peer
//
// quic-go migrates a connection only from the client side and only to a
// new local socket. So the connections of this package run on a
// quic.Transport of their own, over a PacketConn whose remote addresses are
// virtual: one [Addr] per peer node id. QUIC sees one remote address for
// its whole life; below it, each packet goes on the peer's current route:
//
//   - direct: one datagram 0x25 ‖ QUIC packet on the node's shared UDP
//     socket (transport/udpmux) to the peer's punched address. The first
//     byte keeps the packet out of the quic-go transport that shares the
//     socket (the tunnel's), so it reaches this package's handler, which
//     maps the source address to the peer whose direct route it is and drops
//     datagrams from anyone else.
//   - relay: the relay's data datagram, 0x24 ‖ session ‖ QUIC packet
//     (relay/circuit), on a session the relay set up for the two peers.
//
// QUIC packets stay at 1280 bytes (no path MTU discovery: the PacketConn is
// not a UDP socket), which fits both framings on every path.
//
// # Path management
//
// Dial resolves the peer (a [Resolver]: its relays and direct candidates,
// from the DHT in pc2), connects to one of the peer's relays and asks it for
// a session (the relay asks the peer, which accepts: that is the
// signalling), and runs the QUIC handshake over it; streams work at once.
// Then both sides try to go direct: offer, answer and sync of
// transport/punch travel on a control stream of the same end-to-end
// connection (authenticated and private), and both punch from the shared
// socket. A side whose punch succeeds sends direct from then on.
//
// A direct route is declared dead when a packet sent on it has had no
// answer on it for DeadAfter (500 ms), or when the peer's packets arrive
// through the relay although nothing came direct for a while (the peer has
// fallen back). The route falls back to the relay (a new session if the old
// one ended), a few empty QUIC datagrams go out on it so that their
// acknowledgements make QUIC declare the packets of the dead path lost and
// retransmit them at once (instead of at its backed-off probe timeout), and
// no stream byte is lost;
// the dialing side then retries the punch with backoff (2 s doubling to
// 60 s) and upgrades again when it succeeds. Idle connections send one QUIC
// keep-alive per 25 s, which holds the NAT mapping of the path in use; the
// relay session is kept with one 1-byte datagram per 25 s while direct.
//
// Each stream starts with a header naming the protocol (see header.go) and
// the acceptor's one-byte status, so Dial fails with [ErrNoProtocol] when
// the peer does not listen.
//
// Not done: birthday probing (a hard, symmetric side would need extra
// sockets, so such pairs stay on the relay) and TCP paths.
package peer
