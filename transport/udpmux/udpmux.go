// Package udpmux shares one UDP socket between QUIC and a node's other
// datagrams: STUN (reflexive address discovery, NAT classification), hole
// punching and the NAT lab's probe protocol.
//
// It exists because a NAT maps each socket on its own: the reflexive address
// a node learns, and the hole it punches, are only worth anything if they
// belong to the socket its QUIC connections use ("each socket gets a
// different mapping"). quic-go's Transport can share its socket
// (ReadNonQUICPacket, WriteTo): every packet whose first byte is below 0x40
// (the two top bits zero, which no QUIC packet has: RFC 9000 §17 sets the
// fixed bit 0x40) is handed out instead of being parsed as QUIC. A Mux owns
// that socket and its Transport, reads the non-QUIC packets in one goroutine
// and passes each to the first registered Handler whose Matcher accepts it.
//
// Who uses which first bytes (a new protocol must pick a free range):
//
//	0x00-0x01  STUN (RFC 8489 message types of the Binding method; the
//	           tunnel's wake message "\x00pc2-tunnel-wake/1" also starts
//	           with 0x00 but is no STUN message: match with stun.IsMessage)
//	0x24       relay data (relay/circuit: session id + end-to-end QUIC packet)
//	0x25       peer direct data (transport/peer: one end-to-end QUIC packet)
//	0x31-0x34  NAT lab probe protocol (tools/natlab)
//	0x3a-0x3b  hole punching (transport/punch)
//	0x02-0x23, 0x26-0x30, 0x35-0x39, 0x3c-0x3f  free
//
// Handlers run on the read goroutine: they must return quickly and copy the
// packet if they keep it. A handler that does not take a packet (say, a
// tunnel's wake message from another supernode) passes it on to the next. quic-go queues at most 32 non-QUIC packets while
// the read goroutine is busy and drops the rest, which bounds the memory an
// attacker can make a Mux hold.
package udpmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// MaxPacket is the largest non-QUIC packet a Mux delivers whole: quic-go
// reads datagrams into buffers of this size and truncates longer ones, so a
// handler's decoder must check its own length field (STUN's does).
const MaxPacket = 1452

// ErrQUICLike is returned by WriteTo for a packet whose first byte is 0x40 or
// more: the peer's Mux would take it for QUIC and never hand it out.
var ErrQUICLike = errors.New("udpmux: non-QUIC packet must start with a byte below 0x40")

// ErrClosed is returned by WriteTo after Close.
var ErrClosed = errors.New("udpmux: closed")

// Matcher decides whether a Handler wants a packet. It must not keep pkt.
type Matcher func(pkt []byte) bool

// Handler receives a non-QUIC packet and its source and reports whether it
// took it; if not, the next matching handler is tried (several clients of
// one protocol can share the socket, each taking its own peers' packets).
// pkt is only valid during the call: copy it to keep it.
type Handler func(pkt []byte, from netip.AddrPort) bool

// FirstByte matches packets whose first byte is in [lo, hi].
func FirstByte(lo, hi byte) Matcher {
	return func(pkt []byte) bool { return len(pkt) > 0 && pkt[0] >= lo && pkt[0] <= hi }
}

// Options tune a Mux. The zero value is usable.
type Options struct {
	// StatelessResetKey enables QUIC stateless resets (quicid.StatelessResetKey).
	StatelessResetKey *quic.StatelessResetKey
	// ReadBuffer and WriteBuffer set the socket buffers (0: kernel default).
	ReadBuffer, WriteBuffer int
}

// Stats counts what the read goroutine did: packets a handler took, and
// packets none took.
type Stats struct {
	Delivered, Unmatched uint64
}

type route struct {
	id    uint64
	match Matcher
	h     Handler
}

// Mux is one UDP socket shared by a quic.Transport and non-QUIC handlers.
type Mux struct {
	conn *net.UDPConn
	tr   *quic.Transport

	mu     sync.Mutex // serialises Handle/remove
	nextID uint64
	routes atomic.Pointer[[]route]

	delivered, unmatched atomic.Uint64

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closed    atomic.Bool
}

// Listen opens a UDP socket on addr ("udp", "udp4" or "udp6" network) and
// returns a Mux on it.
func Listen(network, addr string, o Options) (*Mux, error) {
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, fmt.Errorf("udpmux: resolve %s: %w", addr, err)
	}
	c, err := net.ListenUDP(network, ua)
	if err != nil {
		return nil, fmt.Errorf("udpmux: listen: %w", err)
	}
	return New(c, o)
}

// New takes ownership of conn: after it, only the Mux reads and writes it,
// and Close closes it.
func New(conn *net.UDPConn, o Options) (*Mux, error) {
	if o.ReadBuffer > 0 {
		if err := conn.SetReadBuffer(o.ReadBuffer); err != nil {
			conn.Close()
			return nil, fmt.Errorf("udpmux: read buffer: %w", err)
		}
	}
	if o.WriteBuffer > 0 {
		if err := conn.SetWriteBuffer(o.WriteBuffer); err != nil {
			conn.Close()
			return nil, fmt.Errorf("udpmux: write buffer: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mux{
		conn:   conn,
		tr:     &quic.Transport{Conn: conn, StatelessResetKey: o.StatelessResetKey},
		cancel: cancel,
		done:   make(chan struct{}),
	}
	m.routes.Store(&[]route{})
	// quic-go drops non-QUIC packets until ReadNonQUICPacket has been called
	// once: call it before anyone can know where to send, with a context
	// that is already done so it returns at once.
	done, stop := context.WithCancel(context.Background())
	stop()
	if _, _, err := m.tr.ReadNonQUICPacket(done, make([]byte, 1)); err != nil && !errors.Is(err, context.Canceled) {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("udpmux: start transport: %w", err)
	}
	go m.readLoop(ctx)
	return m, nil
}

// Transport is the QUIC transport on the shared socket: Dial and Listen on
// it. Do not Close it; Close the Mux.
func (m *Mux) Transport() *quic.Transport { return m.tr }

// LocalAddr is the socket's local address.
func (m *Mux) LocalAddr() netip.AddrPort {
	return m.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Dial opens a QUIC connection from the shared socket.
func (m *Mux) Dial(ctx context.Context, to netip.AddrPort, tlsConf *tls.Config, qc *quic.Config) (*quic.Conn, error) {
	return m.tr.Dial(ctx, net.UDPAddrFromAddrPort(to), tlsConf, qc)
}

// Handle registers h for the non-QUIC packets match accepts. Handlers are
// tried in registration order until one that matches takes the packet. The
// returned func removes the handler (idempotent); after it returns, h is not
// called again except possibly for one packet already being dispatched.
func (m *Mux) Handle(match Matcher, h Handler) (remove func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	id := m.nextID
	rs := append(slices.Clone(*m.routes.Load()), route{id: id, match: match, h: h})
	m.routes.Store(&rs)
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		rs := slices.DeleteFunc(slices.Clone(*m.routes.Load()), func(r route) bool { return r.id == id })
		m.routes.Store(&rs)
	}
}

// WriteTo sends one non-QUIC packet from the shared socket. Its first byte
// must be below 0x40 (ErrQUICLike otherwise).
func (m *Mux) WriteTo(pkt []byte, to netip.AddrPort) error {
	if len(pkt) == 0 || pkt[0] >= 0x40 {
		return ErrQUICLike
	}
	if m.closed.Load() {
		return ErrClosed
	}
	if _, err := m.tr.WriteTo(pkt, net.UDPAddrFromAddrPort(to)); err != nil {
		return fmt.Errorf("udpmux: write to %s: %w", to, err)
	}
	return nil
}

// Stats returns the read goroutine's counters.
func (m *Mux) Stats() Stats {
	return Stats{Delivered: m.delivered.Load(), Unmatched: m.unmatched.Load()}
}

// Close stops the read goroutine and closes the transport (ending its QUIC
// connections) and the socket.
func (m *Mux) Close() error {
	var err error
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		m.cancel()
		<-m.done
		err = m.tr.Close()
		if cerr := m.conn.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	})
	return err
}

func (m *Mux) readLoop(ctx context.Context) {
	defer close(m.done)
	buf := make([]byte, MaxPacket)
	for {
		n, from, err := m.tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return // ctx cancelled or transport closed
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		m.dispatch(buf[:n], ua.AddrPort())
	}
}

// dispatch hands one packet to the matching handlers until one takes it.
func (m *Mux) dispatch(pkt []byte, from netip.AddrPort) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	for _, r := range *m.routes.Load() {
		if r.match(pkt) && r.h(pkt, from) {
			m.delivered.Add(1)
			return
		}
	}
	m.unmatched.Add(1)
}
