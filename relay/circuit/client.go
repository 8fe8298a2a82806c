package circuit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/deadline"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/transport/quicid"
)

// Errors of the client side.
var (
	ErrSessionClosed = errors.New("circuit: relayed session closed")
	ErrNotRelayAddr  = errors.New("circuit: not an address of this relay client")
	ErrClientClosed  = errors.New("circuit: client closed")
)

// Addr is the address of a peer reached through a relay: the relay and the
// session. It is what a quic-go connection on a [PacketConn] sees as its
// remote address.
type Addr struct {
	Relay   netip.AddrPort
	Session SessionID
	str     string // cached: quic-go compares addresses by String per packet
}

func newAddr(relay netip.AddrPort, sid SessionID) *Addr {
	a := &Addr{Relay: relay, Session: sid}
	a.str = a.String()
	return a
}

// Network implements net.Addr.
func (a *Addr) Network() string { return "pc2-relay" }

// String implements net.Addr; it is unique per session.
func (a *Addr) String() string {
	if a.str != "" {
		return a.str
	}
	return a.Relay.String() + "/" + a.Session.String()
}

// ClientConfig tunes a Client.
type ClientConfig struct {
	// Accept decides whether to take an incoming session from a peer; nil
	// accepts all (the end-to-end QUIC handshake still checks the peer).
	Accept func(from identity.ID) bool
	// QueueLen bounds received packets waiting for ReadFrom (512); more
	// are dropped, as a full socket buffer would.
	QueueLen int
	// OnPacket, when set, receives every relayed packet instead of
	// PacketConn (payload is valid only during the call): for a node that
	// runs one quic.Transport over a PacketConn of its own carrying both its
	// direct and its relayed packets, so that a connection can move between
	// the two (quic-go migrates a connection only within its transport).
	// It runs on the caller of Handle and must not block.
	OnPacket func(from *Addr, payload []byte)
	Logger   *slog.Logger
}

// SessionInfo describes one relayed session of a Client.
type SessionInfo struct {
	Peer   identity.ID
	Limits Limits
	// Done is closed when the session ends; Reason then says why.
	Done   <-chan struct{}
	Reason Reason
}

type clientSession struct {
	addr   *Addr
	peer   identity.ID
	limits Limits
	done   chan struct{}
	reason Reason
}

// Client is a peer's side of a relay: one control connection, run on the
// peer's shared socket, and the relayed sessions it opened or accepted.
type Client struct {
	cfg     ClientConfig
	log     *slog.Logger
	relay   netip.AddrPort
	w       PacketWriter
	conn    *quic.Conn
	pc      *PacketConn
	mu      sync.Mutex
	sess    map[SessionID]*clientSession
	ended   []SessionID // oldest first
	reserve *Msg        // last Reserved, nil when not reserving
	wg      sync.WaitGroup
	stop    chan struct{}
	once    sync.Once
}

// Dial opens the control connection to the relay at relay (whose node id
// is relayID) on tr, the peer's QUIC transport, so that the relay binds the
// same NAT mapping that carries the data; w sends data packets from that
// same socket, and the socket's non-QUIC packets must reach Handle.
func Dial(ctx context.Context, tr *quic.Transport, w PacketWriter, kp *identity.KeyPair, relay netip.AddrPort, relayID identity.ID, cfg ClientConfig) (*Client, error) {
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 512
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tlsConf, err := quicid.ClientConfig(kp, ALPN, relayID)
	if err != nil {
		return nil, err
	}
	qc := quicid.Config(16, ControlIdle)
	qc.KeepAlivePeriod = ControlIdle / 2
	qc.MaxIncomingUniStreams = -1
	conn, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(relay), tlsConf, qc)
	if err != nil {
		return nil, fmt.Errorf("circuit: dial relay %s: %w", relay, err)
	}
	c := &Client{cfg: cfg, log: log, relay: unmap(relay), w: w, conn: conn, sess: map[SessionID]*clientSession{}, stop: make(chan struct{})}
	c.pc = newPacketConn(c, cfg.QueueLen)
	c.wg.Add(1)
	go c.serveRelay()
	context.AfterFunc(conn.Context(), func() { c.endAll(ReasonPeerGone) })
	return c, nil
}

// Relay returns the relay's address.
func (c *Client) Relay() netip.AddrPort { return c.relay }

// Live returns how many of the client's sessions have not ended.
func (c *Client) Live() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sess) - len(c.ended)
}

// Done is closed when the control connection has ended (and with it the
// reservation and every session): the client is then of no more use.
func (c *Client) Done() <-chan struct{} { return c.conn.Context().Done() }

// PacketConn returns the connection on which to run a quic.Transport whose
// connections go through the relay (TestRelayedQUIC shows both ends).
func (c *Client) PacketConn() *PacketConn { return c.pc }

// request sends m on a new stream and returns the relay's answer.
func (c *Client) request(ctx context.Context, m *Msg) (Msg, error) {
	st, err := c.conn.OpenStreamSync(ctx)
	if err != nil {
		return Msg{}, fmt.Errorf("circuit: %s: %w", m.Type, err)
	}
	defer st.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(2 * requestTimeout)
	}
	_ = st.SetDeadline(dl)
	if err := WriteMsg(st, m); err != nil {
		return Msg{}, err
	}
	st.Close()
	r, err := ReadMsg(st)
	st.CancelRead(0)
	if err != nil {
		return Msg{}, fmt.Errorf("circuit: %s: %w", m.Type, err)
	}
	if r.Type == MsgError {
		return Msg{}, &RemoteError{Code: r.Code, Text: r.Text}
	}
	return r, nil
}

// Reservation is what the relay granted.
type Reservation struct {
	TTL    time.Duration
	Limits Limits
}

// Reserve makes this peer reachable through the relay and keeps the
// reservation refreshed (at half its TTL) until Close.
func (c *Client) Reserve(ctx context.Context) (Reservation, error) {
	r, err := c.request(ctx, &Msg{Type: MsgReserve})
	if err != nil {
		return Reservation{}, err
	}
	if r.Type != MsgReserved {
		return Reservation{}, fmt.Errorf("%w: answer %s to reserve", ErrBadMsg, r.Type)
	}
	c.mu.Lock()
	first := c.reserve == nil
	c.reserve = &r
	c.mu.Unlock()
	if first {
		c.wg.Add(1)
		go c.refresh(r.TTL)
	}
	return Reservation{TTL: r.TTL, Limits: r.Limits}, nil
}

func (c *Client) refresh(ttl time.Duration) {
	defer c.wg.Done()
	wait := max(ttl/2, 100*time.Millisecond)
	for {
		select {
		case <-c.stop:
			return
		case <-c.conn.Context().Done():
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		r, err := c.request(ctx, &Msg{Type: MsgReserve})
		cancel()
		if err != nil {
			c.log.Warn("relay reservation refresh failed", "relay", c.relay, "err", err)
			wait = time.Second // retry soon: the reservation may be about to lapse
			continue
		}
		wait = max(r.TTL/2, 100*time.Millisecond)
	}
}

// Connect opens a relayed session to peer, which must hold a reservation
// on this relay. Dial the returned address from a quic.Transport on
// PacketConn.
func (c *Client) Connect(ctx context.Context, peer identity.ID) (*Addr, error) {
	r, err := c.request(ctx, &Msg{Type: MsgConnect, Peer: peer})
	if err != nil {
		return nil, err
	}
	if r.Type != MsgConnected || r.Peer != peer {
		return nil, fmt.Errorf("%w: answer %s to connect", ErrBadMsg, r.Type)
	}
	c.mu.Lock()
	a := newAddr(c.relay, r.Session)
	c.sess[r.Session] = &clientSession{addr: a, peer: peer, limits: r.Limits, done: make(chan struct{})}
	c.mu.Unlock()
	return a, nil
}

// Release ends the session of a at the relay (both peers are told); an
// ended session is released by itself after the relay's idle timeout.
func (c *Client) Release(ctx context.Context, a *Addr) error {
	if a.Relay != c.relay {
		return ErrNotRelayAddr
	}
	r, err := c.request(ctx, &Msg{Type: MsgClosed, Session: a.Session})
	if err != nil {
		return err
	}
	if r.Type != MsgClosed || r.Session != a.Session {
		return fmt.Errorf("%w: answer %s to release", ErrBadMsg, r.Type)
	}
	c.end(a.Session, ReasonReleased)
	return nil
}

// Session describes the session of a, if this client has it.
func (c *Client) Session(a net.Addr) (SessionInfo, bool) {
	ra, ok := a.(*Addr)
	if !ok || ra.Relay != c.relay {
		return SessionInfo{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sess[ra.Session]
	if s == nil {
		return SessionInfo{}, false
	}
	return SessionInfo{Peer: s.peer, Limits: s.limits, Done: s.done, Reason: s.reason}, true
}

// serveRelay answers what the relay sends: Incoming sessions and Closed
// notices.
func (c *Client) serveRelay() {
	defer c.wg.Done()
	ctx := c.conn.Context()
	for {
		st, err := c.conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer st.Close()
			_ = st.SetDeadline(time.Now().Add(requestTimeout))
			m, err := ReadMsg(st)
			st.CancelRead(0) // one message per stream
			if err != nil {
				return
			}
			switch m.Type {
			case MsgIncoming:
				if c.cfg.Accept != nil && !c.cfg.Accept(m.Peer) {
					_ = WriteMsg(st, errMsg(CodeRefused, "not accepted"))
					return
				}
				c.mu.Lock()
				c.sess[m.Session] = &clientSession{addr: newAddr(c.relay, m.Session), peer: m.Peer, limits: m.Limits, done: make(chan struct{})}
				c.mu.Unlock()
				_ = WriteMsg(st, &Msg{Type: MsgAccept, Session: m.Session})
			case MsgClosed:
				c.end(m.Session, m.Reason)
			default:
				_ = WriteMsg(st, errMsg(CodeBadRequest, "unexpected "+m.Type.String()))
			}
		}()
	}
}

func (c *Client) end(sid SessionID, why Reason) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sess[sid]
	if s == nil || s.reason != ReasonNone {
		return
	}
	if why == ReasonNone {
		why = ReasonPeerGone
	}
	s.reason = why
	close(s.done)
	// Ended sessions stay visible to Session for a while; the oldest are
	// forgotten so that a long-lived client's memory stays bounded.
	c.ended = append(c.ended, sid)
	if len(c.ended) > maxEnded {
		delete(c.sess, c.ended[0])
		c.ended = c.ended[1:]
	}
}

// maxEnded bounds the ended sessions a Client remembers.
const maxEnded = 64

func (c *Client) endAll(why Reason) {
	c.mu.Lock()
	var ids []SessionID
	for id := range c.sess {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.end(id, why)
	}
}

// Handle takes a non-QUIC packet from the peer's shared socket. Packets
// not from the relay, not data, or of unknown or ended sessions are
// ignored.
func (c *Client) Handle(pkt []byte, from netip.AddrPort) {
	if unmap(from) != c.relay {
		return
	}
	sid, payload, err := ParseData(pkt)
	if err != nil {
		return
	}
	c.mu.Lock()
	s := c.sess[sid]
	open := s != nil && s.reason == ReasonNone
	c.mu.Unlock()
	if !open {
		return
	}
	if c.cfg.OnPacket != nil {
		c.cfg.OnPacket(s.addr, payload)
		return
	}
	c.pc.deliver(s.addr, payload)
}

// Send sends payload to the peer of session a through the relay (what
// PacketConn.WriteTo does).
func (c *Client) Send(a *Addr, payload []byte) error {
	if a.Relay != c.relay {
		return fmt.Errorf("%w: %v", ErrNotRelayAddr, a)
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("circuit: %d-byte packet exceeds %d", len(payload), MaxPayload)
	}
	return c.send(a.Session, payload)
}

// send wraps payload for session sid and sends it to the relay.
func (c *Client) send(sid SessionID, payload []byte) error {
	c.mu.Lock()
	s := c.sess[sid]
	open := s != nil && s.reason == ReasonNone
	c.mu.Unlock()
	if !open {
		return ErrSessionClosed
	}
	bp := bufPool.Get().(*[]byte)
	b := AppendData((*bp)[:0], sid, payload)
	err := c.w.WriteTo(b, c.relay)
	*bp = b
	bufPool.Put(bp)
	return err
}

// Close ends the control connection (and so the reservation and every
// session) and the PacketConn.
func (c *Client) Close() error {
	c.once.Do(func() {
		close(c.stop)
		c.conn.CloseWithError(0, "bye")
		c.endAll(ReasonPeerGone)
		c.pc.Close()
	})
	c.wg.Wait()
	return nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, MaxPacket+HeaderLen); return &b }}

type inPacket struct {
	buf  *[]byte
	addr *Addr
}

// PacketConn carries the packets of relayed sessions: ReadFrom returns
// what peers sent (from an *Addr), WriteTo sends to an *Addr. It is a
// net.PacketConn for quic-go; it is not a UDP socket, so quic-go keeps its
// packets at their initial size, which fits a relayed datagram.
type PacketConn struct {
	c      *Client
	in     chan inPacket
	closed chan struct{}
	once   sync.Once
	dl     *deadline.Deadline
	local  *Addr
}

func newPacketConn(c *Client, queue int) *PacketConn {
	return &PacketConn{c: c, in: make(chan inPacket, queue), closed: make(chan struct{}), dl: deadline.New(), local: newAddr(c.relay, SessionID{})}
}

func (p *PacketConn) deliver(addr *Addr, payload []byte) {
	bp := bufPool.Get().(*[]byte)
	*bp = append((*bp)[:0], payload...)
	select {
	case p.in <- inPacket{buf: bp, addr: addr}:
	default:
		bufPool.Put(bp)
	}
}

// ReadFrom implements net.PacketConn.
func (p *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case pk := <-p.in:
		n := copy(b, *pk.buf)
		bufPool.Put(pk.buf)
		return n, pk.addr, nil
	case <-p.closed:
		return 0, nil, net.ErrClosed
	case <-p.dl.Wait():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

// WriteTo implements net.PacketConn.
func (p *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	a, ok := addr.(*Addr)
	if !ok || a.Relay != p.c.relay {
		return 0, fmt.Errorf("%w: %v", ErrNotRelayAddr, addr)
	}
	if len(b) > MaxPayload {
		return 0, fmt.Errorf("circuit: %d-byte packet exceeds %d", len(b), MaxPayload)
	}
	select {
	case <-p.closed:
		return 0, net.ErrClosed
	default:
	}
	if err := p.c.send(a.Session, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close implements net.PacketConn.
func (p *PacketConn) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

// LocalAddr implements net.PacketConn: the relay, session unset.
func (p *PacketConn) LocalAddr() net.Addr { return p.local }

// SetDeadline implements net.PacketConn (reads only: writes never block).
func (p *PacketConn) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

// SetWriteDeadline implements net.PacketConn; writes never block.
func (p *PacketConn) SetWriteDeadline(time.Time) error { return nil }

// SetReadDeadline implements net.PacketConn.
func (p *PacketConn) SetReadDeadline(t time.Time) error { return p.dl.Set(t) }

// SetReadBuffer and SetWriteBuffer let quic-go size buffers without a
// warning; the queue is bounded by QueueLen instead.
func (p *PacketConn) SetReadBuffer(int) error { return nil }

// SetWriteBuffer: see SetReadBuffer.
func (p *PacketConn) SetWriteBuffer(int) error { return nil }
