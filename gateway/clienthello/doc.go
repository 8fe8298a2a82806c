// Package clienthello reads the first TLS ClientHello of a connection and
// extracts what an SNI router needs (server name, ALPN list, record version)
// without terminating TLS, keeping the exact bytes read so they can be
// replayed to the backend.
//
// Why it exists instead of the crypto/tls GetConfigForClient "peek" trick:
// that trick runs a whole tls.Conn over a recording net.Conn and parses every
// extension into fresh slices, costing dozens of allocations per connection
// (see BenchmarkParse vs BenchmarkCryptoTLSPeek). This parser works in one
// pooled, fixed-size buffer and allocates nothing while parsing. It also
// reassembles a ClientHello that spans several TLS records and TCP segments,
// which post-quantum key shares (X25519MLKEM768, ~1.7 KB hellos) make common
// and which HAProxy and sniproxy do not handle.
//
// Bounds: at most MaxSize bytes are read per connection; the caller sets the
// read deadline on the connection before calling Read (5 s is a good default).
// Every failure is an *Error whose Kind is one of the Err* sentinels, so
// callers can count failures by kind with errors.Is.
package clienthello
