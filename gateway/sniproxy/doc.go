// Package sniproxy is the supernode's TLS passthrough data path: it accepts
// TCP connections, reads the ClientHello (gateway/clienthello), asks a
// Router where the server name lives, connects there, replays the hello and
// then relays bytes both ways without ever holding the TLS keys, so each
// node's certificate and ACME stay end to end.
//
// # Design, and why
//
// On Linux, Serve runs one epoll event loop per P (GOMAXPROCS) over raw
// descriptors (loop_linux.go). A connection is a ~250-byte struct in the
// loop that accepted it, from the first byte of the hello to the close: no
// goroutine, no net.Conn, no netpoller registration. Both sockets are
// registered once, edge-triggered, for input and output; bytes move with
// splice(2) through a pipe taken from the loop's free list only while a
// burst is in flight, so a quiet connection holds no pipe either. Busy
// directions yield after 1 MiB so one stream cannot starve the others, and
// a burst of new connections is spread over the loops.
//
// The loops replaced a goroutine-per-direction design (still here, see
// below) after measuring both side by side in bench/sni (2 cores shared
// with the load generator and the backend; bench/RESULTS.md has the run):
//
//   - memory per idle relayed connection: 0.5 KiB RSS (loops) against
//     11.6 KiB (goroutines: stacks of 4-8 KiB each, and the RSS they leave
//     behind) and HAProxy's 3.3 KiB; Go heap 248 B against 1.2-1.4 KiB
//     (BenchmarkIdleConnections).
//   - a connection that never finishes its hello: 0.6 KiB RSS against 6.3
//     KiB (HAProxy 9.4, nginx 5.3); heap 360 B (BenchmarkPendingConnections).
//   - CPU per connection (hello → first byte → close): 103 µs against 158
//     µs, level with HAProxy (104 µs); the rest is the kernel's TCP work for
//     two connections, and the syscalls per connection (about 19.5) match
//     HAProxy's. The goroutine design also paid for Go's network poller,
//     scheduler hand-offs and the runtime monitor's 20 µs polling whenever
//     goroutines sit in long system calls (15% of its CPU).
//   - latency added to the first byte: p50 +155 µs against +274 µs.
//
// What made the loops cheap, each measured: system calls without the
// runtime's entersyscall bookkeeping (RawSyscall: every call is
// non-blocking); the loop sleeping in Go's netpoller on its epoll
// descriptor (nested epoll) instead of in a blocking epoll_wait; an accept4
// wrapper (x/sys's Accept4 adds a getsockopt per connection); no probe
// reads where the edge-triggered registration already reports new data;
// no shutdown(2) before a close that sends the FIN anyway.
//
// Bulk throughput is bound by the machine, not by the relay: on loopback
// every relayed byte crosses TCP twice, and the kernel's per-segment work
// for the second connection costs about as much CPU as the first. The
// proxy's own CPU per byte (0.37 s/GB) is a third of HAProxy's or nginx's
// (about 1.1 s/GB: they copy through user space); splice with 1 MiB pipes
// used 25-30% less CPU per byte than 256 KiB pipes and half of the default
// 64 KiB.
//
// Router.Route is called on the loop, so it must answer from memory; a
// Target whose address is a host name or has a zone (link-local), or that
// has its own Dial (a stream on a node's tunnel), is handed to the
// goroutine path, which resolves and dials it. Handed-off connections keep
// their slot of MaxConns.
//
// # The goroutine path
//
// Used when Config.Dial is set, for targets with their own Dial (a tunnel
// stream) or a host name, and on systems without the loops: a goroutine reads the hello (keeping only the bytes received while
// it is incomplete, clienthello.Resume), dials, and relays with a
// goroutine per direction. Between two *net.TCPConn on Linux it splices in
// bursts too, and a direction quiet for Config.ParkAfter gives its
// goroutine up and waits in a shared epoll set (parker_linux.go).
//
// # Bounds
//
// A connection still sending its hello holds what it has sent (at most
// clienthello.MaxSize) and is closed after Config.HelloTimeout. At most
// Config.MaxPendingPerIP of them per source (IPv4 address or IPv6 /64,
// since an IPv6 client picks its address from a /64); when Config.MaxConns
// or Config.MaxPending is reached, a new connection takes the place of the
// oldest pending one if that has waited a fifth of the hello timeout, so
// connections that never finish their hello cannot lock others out (10,000
// of them cost 6 MB and left a legitimate connection's p99 at 4 ms in
// bench/sni). Relayed connections are closed after Config.IdleTimeout
// without a byte moving either way, which also ends a reader that stopped
// reading.
package sniproxy
