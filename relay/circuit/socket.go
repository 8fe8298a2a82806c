package circuit

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
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
	q      chan qpacket
	closed chan struct{}
	once   sync.Once
	dl     deadline
	done   chan struct{}
}

type qpacket struct {
	buf  *[]byte
	from netip.AddrPort
}

var qPool = sync.Pool{New: func() any { b := make([]byte, 0, MaxPacket); return &b }}

func newDemux(udp *net.UDPConn, handle func([]byte, netip.AddrPort)) *demux {
	return &demux{udp: udp, handle: handle, q: make(chan qpacket, quicQueue), closed: make(chan struct{}), done: make(chan struct{}), dl: newDeadline()}
}

func (d *demux) run() {
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
		bp := qPool.Get().(*[]byte)
		*bp = append((*bp)[:0], buf[:n]...)
		select {
		case d.q <- qpacket{buf: bp, from: from}:
		default:
			qPool.Put(bp)
		}
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
	case <-d.dl.wait():
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
func (d *demux) SetDeadline(t time.Time) error      { return d.dl.set(t) }
func (d *demux) SetReadDeadline(t time.Time) error  { return d.dl.set(t) }
func (d *demux) SetWriteDeadline(t time.Time) error { return nil }
func (d *demux) SetReadBuffer(int) error            { return nil }
func (d *demux) SetWriteBuffer(int) error           { return nil }

// deadline is a read deadline for a channel-fed PacketConn: wait returns
// a channel closed once the deadline has passed.
type deadline struct {
	mu    *sync.Mutex
	ch    *chan struct{}
	timer **time.Timer
}

func newDeadline() deadline {
	ch := make(chan struct{})
	var t *time.Timer
	return deadline{mu: &sync.Mutex{}, ch: &ch, timer: &t}
}

func (d deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return *d.ch
}

func (d deadline) set(t time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if *d.timer != nil {
		(*d.timer).Stop()
		*d.timer = nil
	}
	select {
	case <-*d.ch: // passed: arm a fresh channel
		*d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return nil
	}
	ch := *d.ch
	dur := time.Until(t)
	if dur <= 0 {
		close(ch)
		return nil
	}
	*d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if *d.ch == ch {
			select {
			case <-ch:
			default:
				close(ch)
			}
		}
	})
	return nil
}
