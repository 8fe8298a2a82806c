package circuit

import (
	"net"
	"net/netip"
)

// NewSocketDemux gives the tests the relay's socket demultiplexer, to use
// as a peer's shared socket as well: the returned PacketConn is for a
// quic.Transport, handle gets the non-QUIC packets; run starts reading.
func NewSocketDemux(udp *net.UDPConn, handle func([]byte, netip.AddrPort)) (pc net.PacketConn, run func(), done <-chan struct{}) {
	d := newDemux(udp, handle)
	return d, d.run, d.done
}

// NoBatch makes Listen read and forward one datagram per syscall (for the
// batching benchmark's baseline).
func NoBatch(s *Server) { s.noBatch = true }
