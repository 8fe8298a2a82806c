package circuit

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/elacity/pc2/core/deadline"
)

// quicQueue bounds the QUIC (control) packets waiting for quic-go on a
// relay's own socket; more are dropped, as a full socket buffer would.
const quicQueue = 1024

// demux owns a relay's UDP socket. Why not quic-go's ReadNonQUICPacket:
// quic-go queues at most 32 non-QUIC packets and drops the rest, so a
// burst of relayed packets (a QUIC sender's congestion window) loses most
// of itself before the relay sees it (measured: 53% loss at loopback
// rates, BenchmarkForwardLoopback). Here the hot path is inverted: the
// read loop forwards data packets itself, inline, and queues only the
// rare control packets for quic-go.
type demux struct {
	udp    *net.UDPConn
	handle func([]byte, netip.AddrPort)
	// route and forwarded, when set, let the read loop forward data
	// packets itself in batches (recvmmsg in, sendmmsg out) instead of
	// calling handle for each.
	route     func(pkt []byte, from netip.AddrPort, now time.Time) (netip.AddrPort, bool)
	forwarded func(packets int, bytes uint64)
	q         chan qpacket
	closed    chan struct{}
	once      sync.Once
	dl        *deadline.Deadline
	done      chan struct{}
}

type qpacket struct {
	buf  *[]byte
	from netip.AddrPort
}

var qPool = sync.Pool{New: func() any { b := make([]byte, 0, MaxPacket); return &b }}

func newDemux(udp *net.UDPConn, handle func([]byte, netip.AddrPort)) *demux {
	return &demux{udp: udp, handle: handle, q: make(chan qpacket, quicQueue), closed: make(chan struct{}), done: make(chan struct{}), dl: deadline.New()}
}

func (d *demux) run() {
	if d.route != nil {
		d.runBatch()
		return
	}
	defer close(d.done)
	buf := make([]byte, MaxPacket+1)
	for {
		n, from, err := d.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			d.close()
			return
		}
		if n == 0 {
			continue
		}
		if buf[0] < 0x40 {
			if n <= MaxPacket {
				d.handle(buf[:n], from)
			}
			continue
		}
		d.toQUIC(buf[:n], from)
	}
}

// batchLen is how many datagrams one recvmmsg/sendmmsg moves.
const batchLen = 32

// batchConn is the recvmmsg/sendmmsg face of ipv4.PacketConn and
// ipv6.PacketConn.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func (d *demux) runBatch() {
	defer close(d.done)
	var bc batchConn = ipv4.NewPacketConn(d.udp)
	v6 := d.udp.LocalAddr().(*net.UDPAddr).IP.To4() == nil
	if v6 {
		bc = ipv6.NewPacketConn(d.udp)
	}
	in := make([]ipv4.Message, batchLen)
	out := make([]ipv4.Message, batchLen)
	outAddr := make([]net.UDPAddr, batchLen)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, MaxPacket+1)}
		out[i].Buffers = make([][]byte, 1)
		outAddr[i].IP = make(net.IP, 0, 16)
	}
	for {
		got, err := bc.ReadBatch(in, 0)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			d.close()
			return
		}
		now := time.Now()
		fwd, bytes := 0, uint64(0)
		for i := range got {
			m := &in[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok || m.N == 0 || m.N > MaxPacket {
				continue
			}
			pkt := m.Buffers[0][:m.N]
			from := ua.AddrPort()
			if pkt[0] >= 0x40 {
				d.toQUIC(pkt, from)
				continue
			}
			to, ok := d.route(pkt, from, now)
			if !ok {
				continue
			}
			a := &outAddr[fwd]
			if v6 {
				ip16 := to.Addr().As16()
				a.IP = append(a.IP[:0], ip16[:]...)
			} else {
				ip4 := to.Addr().Unmap().As4()
				a.IP = append(a.IP[:0], ip4[:]...)
			}
			a.Port = int(to.Port())
			out[fwd].Buffers[0] = pkt
			out[fwd].Addr = a
			fwd++
			bytes += uint64(len(pkt))
		}
		for sent := 0; sent < fwd; {
			k, err := bc.WriteBatch(out[sent:fwd], 0)
			if err != nil || k == 0 {
				// A bad destination drops the rest of this batch;
				// count only what left.
				bytes = 0
				for _, m := range out[:sent] {
					bytes += uint64(len(m.Buffers[0]))
				}
				fwd = sent
				break
			}
			sent += k
		}
		if fwd > 0 {
			d.forwarded(fwd, bytes)
		}
	}
}

func (d *demux) toQUIC(pkt []byte, from netip.AddrPort) {
	bp := qPool.Get().(*[]byte)
	*bp = append((*bp)[:0], pkt...)
	select {
	case d.q <- qpacket{buf: bp, from: from}:
	default:
		qPool.Put(bp)
	}
}

func (d *demux) close() { d.once.Do(func() { close(d.closed) }) }

// ReadFrom hands quic-go its packets (net.PacketConn).
func (d *demux) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-d.q:
		n := copy(b, *p.buf)
		qPool.Put(p.buf)
		return n, net.UDPAddrFromAddrPort(p.from), nil
	case <-d.closed:
		return 0, nil, net.ErrClosed
	case <-d.dl.Wait():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

// WriteTo sends quic-go's packets from the same socket.
func (d *demux) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok {
		return d.udp.WriteToUDPAddrPort(b, ua.AddrPort())
	}
	return d.udp.WriteTo(b, addr)
}

func (d *demux) Close() error                       { d.close(); return nil }
func (d *demux) LocalAddr() net.Addr                { return d.udp.LocalAddr() }
func (d *demux) SetDeadline(t time.Time) error      { return d.dl.Set(t) }
func (d *demux) SetReadDeadline(t time.Time) error  { return d.dl.Set(t) }
func (d *demux) SetWriteDeadline(t time.Time) error { return nil }
func (d *demux) SetReadBuffer(int) error            { return nil }
func (d *demux) SetWriteBuffer(int) error           { return nil }
