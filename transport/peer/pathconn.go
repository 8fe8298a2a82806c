package peer

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/deadline"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/udpmux"
)

// TypeDirect is the first byte of a direct datagram: 0x25 ‖ QUIC packet.
const TypeDirect = 0x25

// minQUIC is the shortest datagram taken for a QUIC packet; shorter relayed
// payloads are the relay-session keep-alive.
const minQUIC = 20

// Addr is a peer's address on the path conn: QUIC's remote address for
// every connection with that peer, whatever path carries it.
type Addr struct {
	ID  identity.ID
	str string
}

func newAddr(id identity.ID) *Addr { return &Addr{ID: id, str: "pc2-peer/" + id.String()} }

// Network implements net.Addr.
func (a *Addr) Network() string { return "pc2-peer" }

// String implements net.Addr (quic-go compares addresses by it).
func (a *Addr) String() string { return a.str }

// PathKind says which path carries a peer's packets.
type PathKind string

// Path kinds.
const (
	PathNone   PathKind = "none"
	PathDirect PathKind = "direct"
	PathRelay  PathKind = "relay"
)

// Path is the path in use towards a peer.
type Path struct {
	Kind PathKind
	// Remote is the peer's UDP address (direct) or the relay's (relay).
	Remote netip.AddrPort
	// Relay is the relay's node id (relay only).
	Relay identity.ID
}

func (p Path) String() string {
	switch p.Kind {
	case PathDirect:
		return "direct " + p.Remote.String()
	case PathRelay:
		return "relay " + p.Remote.String() + " (" + p.Relay.String() + ")"
	}
	return string(PathNone)
}

// route is how packets reach one peer.
type route struct {
	addr    *Addr
	created int64 // on the path conn's clock

	mu        sync.Mutex
	relayCli  *circuit.Client
	relayID   identity.ID
	relaySess *circuit.Addr
	direct    netip.AddrPort // valid: the direct path is in use
	lastProbe netip.AddrPort // the last direct address, kept after a fallback

	// Nanoseconds on the endpoint's clock: last direct datagram received;
	// the second direct datagram sent since then (0: fewer sent). The
	// second, not the first: the first is often an ACK of what was just
	// received, which nothing answers, while a lost ack-eliciting packet
	// is followed by QUIC's retransmission or keep-alive.
	lastDirectRecv   atomic.Int64
	sentSinceRecv    atomic.Int32
	secondUnanswered atomic.Int64
	lastRelayKeep    atomic.Int64
	keepRelay        atomic.Bool // we dialed: we keep the relay session
}

func (r *route) path() Path {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.direct.IsValid():
		return Path{Kind: PathDirect, Remote: r.direct}
	case r.relaySess != nil:
		return Path{Kind: PathRelay, Remote: r.relaySess.Relay, Relay: r.relayID}
	}
	return Path{Kind: PathNone}
}

type inPacket struct {
	buf  *[]byte
	from *Addr
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, udpmux.MaxPacket); return &b }}

// pathConn is the net.PacketConn of the endpoint's quic.Transport.
type pathConn struct {
	mux   *udpmux.Mux
	epoch time.Time
	in    chan inPacket

	mu     sync.RWMutex
	routes map[identity.ID]*route
	byAddr map[netip.AddrPort]*route

	closed chan struct{}
	once   sync.Once
	dl     *deadline.Deadline

	// Counters.
	dropUnknown, dropQueue, dropNoRoute atomic.Uint64
	sentDirect, sentRelay               atomic.Uint64
	recvDirect, recvRelay               atomic.Uint64

	// dropDirect, when set (tests), makes the direct path lose every
	// datagram in both directions.
	dropDirect atomic.Bool
	// onRelayedWhileDirect is told when a peer's QUIC packets arrive through
	// the relay while its direct route has been silent.
	onRelayedWhileDirect func(*route)
}

func newPathConn(mux *udpmux.Mux, queue int) *pathConn {
	return &pathConn{
		mux:    mux,
		epoch:  time.Now(),
		in:     make(chan inPacket, queue),
		routes: map[identity.ID]*route{},
		byAddr: map[netip.AddrPort]*route{},
		closed: make(chan struct{}),
		dl:     deadline.New(),
	}
}

func (c *pathConn) now() int64 { return int64(time.Since(c.epoch)) }

// route returns the route of id, creating it.
func (c *pathConn) route(id identity.ID) *route {
	c.mu.RLock()
	r := c.routes[id]
	c.mu.RUnlock()
	if r != nil {
		return r
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r = c.routes[id]; r == nil {
		r = &route{addr: newAddr(id), created: c.now()}
		c.routes[id] = r
	}
	return r
}

func (c *pathConn) lookup(id identity.ID) *route {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.routes[id]
}

// forget removes id's route (its last connection ended).
func (c *pathConn) forget(id identity.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.routes[id]
	if r == nil {
		return
	}
	delete(c.routes, id)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.direct.IsValid() && c.byAddr[r.direct] == r {
		delete(c.byAddr, r.direct)
	}
	if r.lastProbe.IsValid() && c.byAddr[r.lastProbe] == r {
		delete(c.byAddr, r.lastProbe)
	}
}

// setRelay makes r use session s of relay client cli.
func (c *pathConn) setRelay(r *route, cli *circuit.Client, relayID identity.ID, s *circuit.Addr) {
	r.mu.Lock()
	r.relayCli, r.relayID, r.relaySess = cli, relayID, s
	r.mu.Unlock()
}

// setDirect switches r to the direct path at ap.
func (c *pathConn) setDirect(r *route, ap netip.AddrPort) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	c.mu.Lock()
	r.mu.Lock()
	if r.lastProbe.IsValid() && r.lastProbe != ap && c.byAddr[r.lastProbe] == r {
		delete(c.byAddr, r.lastProbe)
	}
	r.direct, r.lastProbe = ap, ap
	c.byAddr[ap] = r
	r.mu.Unlock()
	c.mu.Unlock()
	r.lastDirectRecv.Store(c.now())
	r.answered()
}

// answered records that the direct path delivered a datagram.
func (r *route) answered() {
	r.sentSinceRecv.Store(0)
	r.secondUnanswered.Store(0)
}

// fallBack stops using r's direct path; it reports whether it was in use.
// Datagrams from the old address are still accepted (they prove the path
// works again only through a new punch, which switches back).
func (c *pathConn) fallBack(r *route) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	was := r.direct.IsValid()
	r.direct = netip.AddrPort{}
	return was
}

// handleDirect is the udpmux handler of 0x25 datagrams.
func (c *pathConn) handleDirect(pkt []byte, from netip.AddrPort) bool {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	c.mu.RLock()
	r := c.byAddr[from]
	c.mu.RUnlock()
	if r == nil {
		c.dropUnknown.Add(1)
		return true
	}
	if c.dropDirect.Load() {
		return true
	}
	if len(pkt) < 1+minQUIC {
		return true
	}
	r.lastDirectRecv.Store(c.now())
	r.answered()
	c.recvDirect.Add(1)
	c.deliver(r.addr, pkt[1:])
	return true
}

// handleRelayed receives the packets of cli's relayed sessions.
func (c *pathConn) handleRelayed(cli *circuit.Client, relayID identity.ID, from *circuit.Addr, payload []byte) {
	info, ok := cli.Session(from)
	if !ok {
		return
	}
	r := c.route(info.Peer)
	r.mu.Lock()
	if r.relaySess == nil || r.relaySess.String() != from.String() {
		r.relayCli, r.relayID, r.relaySess = cli, relayID, from
	}
	direct := r.direct.IsValid()
	r.mu.Unlock()
	if len(payload) < minQUIC {
		return // the session keep-alive
	}
	c.recvRelay.Add(1)
	if direct && c.onRelayedWhileDirect != nil {
		// The peer sends through the relay: if nothing came direct for a
		// while, it has given the direct path up.
		if c.now()-r.lastDirectRecv.Load() > int64(relayedGrace) {
			c.onRelayedWhileDirect(r)
		}
	}
	c.deliver(r.addr, payload)
}

// relayedGrace is how long after the last direct datagram relayed packets
// are taken as the peer's fallback rather than stragglers of an upgrade.
const relayedGrace = 500 * time.Millisecond

func (c *pathConn) deliver(from *Addr, payload []byte) {
	bp := bufPool.Get().(*[]byte)
	*bp = append((*bp)[:0], payload...)
	select {
	case c.in <- inPacket{buf: bp, from: from}:
	default:
		c.dropQueue.Add(1)
		bufPool.Put(bp)
	}
}

// ReadFrom implements net.PacketConn.
func (c *pathConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-c.in:
		n := copy(b, *p.buf)
		bufPool.Put(p.buf)
		return n, p.from, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	case <-c.dl.Wait():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

// WriteTo implements net.PacketConn: the packet goes on the peer's current
// route. Without one it is dropped as a lossy network would (QUIC
// retransmits once a route exists).
func (c *pathConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	a, ok := addr.(*Addr)
	if !ok {
		return 0, net.InvalidAddrError("peer: not a peer address")
	}
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	r := c.lookup(a.ID)
	if r == nil {
		c.dropNoRoute.Add(1)
		return len(b), nil
	}
	r.mu.Lock()
	direct, cli, sess := r.direct, r.relayCli, r.relaySess
	r.mu.Unlock()
	if direct.IsValid() {
		c.sentDirect.Add(1)
		if r.sentSinceRecv.Add(1) == 2 {
			r.secondUnanswered.CompareAndSwap(0, c.now())
		}
		if c.dropDirect.Load() {
			return len(b), nil
		}
		bp := bufPool.Get().(*[]byte)
		buf := append(append((*bp)[:0], TypeDirect), b...)
		err := c.mux.WriteTo(buf, direct)
		*bp = buf
		bufPool.Put(bp)
		if err != nil && err == udpmux.ErrClosed {
			return 0, net.ErrClosed
		}
		return len(b), nil
	}
	if sess != nil {
		c.sentRelay.Add(1)
		_ = cli.Send(sess, b) // an ended session loses packets until the route is renewed
		return len(b), nil
	}
	c.dropNoRoute.Add(1)
	return len(b), nil
}

// Close implements net.PacketConn.
func (c *pathConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// LocalAddr implements net.PacketConn.
func (c *pathConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(c.mux.LocalAddr()) }

// SetDeadline implements net.PacketConn (reads only).
func (c *pathConn) SetDeadline(t time.Time) error { return c.dl.Set(t) }

// SetReadDeadline implements net.PacketConn.
func (c *pathConn) SetReadDeadline(t time.Time) error { return c.dl.Set(t) }

// SetWriteDeadline implements net.PacketConn; writes never block.
func (c *pathConn) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer lets quic-go size buffers; the queue is bounded instead.
func (c *pathConn) SetReadBuffer(int) error { return nil }

// SetWriteBuffer: see SetReadBuffer.
func (c *pathConn) SetWriteBuffer(int) error { return nil }
