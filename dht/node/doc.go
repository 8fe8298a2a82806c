// Package node is a running Boson-compatible DHT node (PC2 "Level 2"
// participant): UDP sockets on port 39001, one routing table per address
// family, the six RPC methods served with Boson 3.1 semantics and error
// codes, an RPC client with adaptive timeouts, iterative lookups, durable
// record storage, re-announcing of the node's own items and bootstrap.
//
// It exists to tie the wire layer (dht/packet, dht/message, dht/record),
// the routing table (dht/routing), lookups (dht/lookup) and storage
// (dht/storage) into one object the rest of pc2 uses through a small API
// (PutValue, GetValue, AnnouncePeer, FindPeer, FindNode, Ping) and that
// the host runs as the "dht" service.
//
// # Abuse bounds
//
// Every datagram passes, in this order and before any cryptography, a
// size check and per-source token buckets (per IPv4 address or IPv6 /64,
// and 8 times as much per IPv4 /24; per address:port for the loopback and
// private sources developer mode admits). The packet codec then bounds
// the key agreements spent on unknown sender ids.
//
// No amplification: an address that has not completed a round trip with
// us (answered a request of ours) never receives more bytes than it sent.
// A request whose answer would be larger is held (at most a few per
// address) while the node pings the address, which costs fewer bytes than
// the request; the held requests are answered in full once the ping is
// answered, and dropped if it is not. A spoofed source therefore gets at
// most one small ping per request it is blamed for. (discv5's WHOAREYOU
// rule, done with Boson's own PING so Boson nodes need no change.)
//
// # Dialects
//
// Boson 3.1 is native. With Dialect "compat", v2 datagrams are accepted
// and answered in v2, and a peer that never answered v3 is retried in v2
// after a v3 timeout. Once a peer has spoken v3 it is never sent v2: v2
// reuses one nonce per node pair, so two PC2 nodes must not use it.
//
// # PC2 extension: client nodes
//
// Messages carry "v" = "PC"/1. A short-lived client (the pc2 dht query
// commands) sets bit 15 of the version number; PC2 nodes then do not put
// it in their routing tables, so a command that ran for a second does not
// linger in others' tables as a dead contact (BEP 43's read-only flag, in
// a field Boson nodes ignore).
package node
