// Package mesh federates supernodes: several supernodes serve the same
// name suffixes, share their registrations, forward visitors to the
// supernode that holds a node's tunnel, and stop sending visitors to a
// supernode that died.
//
// It exists because one supernode is one point of failure and one place a
// node's tunnel can be: with a mesh, a name registered at A resolves and
// serves through B and C, and when A dies its nodes are served through
// the supernodes they also hold tunnels to.
//
// Shape:
//
//   - Discovery: each supernode announces itself in the DHT as a peer
//     record under SupernodesID (a key every supernode computes), signed by
//     its own node key, its payload the Announcement (mesh, tunnel and SNI
//     endpoints, public addresses, served suffixes). Only supernodes listed
//     in the "peers" section are admitted; with no list, every supernode
//     announced in the DHT is (an open federation).
//   - Connections: one QUIC connection per pair (ALPN pc2-mesh/1, TLS 1.3
//     bound to the node keys by transport/quicid, so both ends know whom
//     they talk to). Both sides dial; when two connections exist the one
//     dialled by the lower id is kept, so both ends agree.
//   - Control: each side opens one unidirectional stream of frames
//     (frame.go): a full snapshot of its registrations on connect, each
//     change as it happens, and a status every heartbeat (its tunnels, its
//     addresses). The QUIC handshake authenticates the stream, so frames
//     need no signatures of their own; registrations still carry their
//     owner-signed proof, which the receiver verifies.
//   - Health: a peer is alive while its connection is; QUIC keep-alives
//     every heartbeat and an idle timeout of deadAfter (5 s) end the
//     connection of a peer that died, and a restarted peer's stateless
//     reset ends it at once. Status frames missing for deadAfter end it
//     too (a live socket whose process hangs).
//   - Names: remote registrations are kept per announcing supernode and
//     reconciled by Better (names.go): the earliest claim wins, ties by
//     the lower SHA-256 of name and owner. A supernode whose local
//     registration loses evicts it, so every supernode ends with the same
//     owner; the loser's node is refused (taken) on its next request.
//   - Forwarding: a visitor for a node whose tunnel is on another
//     supernode goes over a bidirectional stream of the mesh connection
//     (forward.go) to that supernode, which opens the node's tunnel
//     stream; TLS passes through untouched end to end.
//
// The Service is the host service "mesh"; it also implements the lookups
// the gateway, DNS and tunnel admission use (view.go), answering from the
// local registry and the remote registrations together.
package mesh
