// Package tunnel is pc2's active proxy: nodes behind NAT keep one QUIC
// connection to a supernode, and the supernode serves their names by
// opening one QUIC stream per visitor on it.
//
// Why QUIC: one connection carries thousands of visitor streams with
// per-stream flow control and auto-tuned windows, so there is no
// per-visitor handshake to the node and no fixed-window throughput cap;
// both ends authenticate with their Ed25519 node keys (transport/quicid).
//
// The Server runs on the supernode (service "tunnel", UDP :8090), the
// Client on the node (service "tunnel-client"). Each stream starts with a
// small versioned Header (service name, visitor address); the node then
// connects the stream to its local service and copies bytes both ways,
// with QUIC flow control as the backpressure.
//
// Where UDP is blocked or throttled, the same tunnel runs over TLS 1.3 on
// TCP with the same authentication, streams multiplexed by yamux (tcp.go
// says why and what that costs). Server and Client see either transport
// through one small session interface (session.go); a node tries QUIC
// first and moves back to it from TCP when it works again.
//
// Visitors of the SNI gateway are TLS end to end already; for them a node
// also keeps a few idle plain TCP "data connections" to the supernode,
// bound to its tunnel by keys exported from the tunnel's TLS session, and
// each such visitor rides one of them, spliced in the kernel at both ends
// instead of being encrypted a second time and cut into tunnel frames
// (dataconn.go says why and what it exposes). When none is idle, the
// visitor rides the tunnel as usual.
package tunnel
