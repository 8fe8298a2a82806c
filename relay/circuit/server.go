package circuit

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/ratelimit"
	"github.com/elacity/pc2/transport/quicid"
)

// PacketWriter sends one datagram from the socket the relay (or a peer)
// receives on. transport/udpmux's Mux and a UDP socket both fit.
type PacketWriter interface {
	WriteTo(b []byte, addr netip.AddrPort) error
}

// ControlIdle is how long a control connection may stay silent; clients
// send keep-alives at half of it, which also keeps their NAT mapping open.
const ControlIdle = 20 * time.Second

// requestTimeout bounds one control exchange (and the target's answer to
// Incoming).
const requestTimeout = 5 * time.Second

// Errors of the server side.
var (
	ErrNotAdmitted  = errors.New("circuit: node is not admitted")
	ErrHandshakeCap = errors.New("circuit: too many new control connections")
)

// Config tunes a Server. Zero values take the defaults shown.
type Config struct {
	// Admit decides whether a node id may use the relay (reserve or
	// connect); nil admits all. It runs during the TLS handshake.
	Admit func(identity.ID) error
	// Session limits every session (zero fields: unlimited).
	Session Limits
	// PeerBytesPerSecond bounds what one peer sends over all its sessions
	// (0: unlimited); its excess packets are dropped.
	PeerBytesPerSecond float64
	// ReservationTTL is how long a reservation lasts unless refreshed
	// (10 min); clients refresh at half of it.
	ReservationTTL time.Duration
	// MaxPeers bounds control connections (20000), MaxReservations the
	// reservations (10000), MaxSessions the sessions (4096) and
	// MaxSessionsPerPeer each peer's sessions, either end (16).
	MaxPeers, MaxReservations, MaxSessions, MaxSessionsPerPeer int
	// ReservationsPerSecond and ReservationBurst admit new reservations
	// (20, 40); ConnectsPerSecond and ConnectBurst bound each peer's new
	// sessions (2, 8).
	ReservationsPerSecond float64
	ReservationBurst      int
	ConnectsPerSecond     float64
	ConnectBurst          int
	// HandshakesPerSecond and HandshakeBurst bound new control connections
	// over all sources (100, 200), HandshakesPerIP each source address
	// (5/s, burst 10); checked on the ClientHello, before any signature.
	HandshakesPerSecond float64
	HandshakeBurst      int
	HandshakesPerIP     float64
	// IdleTimeout ends a session that forwarded nothing for this long
	// (30 s; the peers' QUIC keep-alives hold a live session open).
	IdleTimeout time.Duration
	Logger      *slog.Logger
}

func (c *Config) defaults() {
	setDef := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setDefF := func(v *float64, d float64) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.ReservationTTL <= 0 {
		c.ReservationTTL = 10 * time.Minute
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 30 * time.Second
	}
	setDef(&c.MaxPeers, 20000)
	setDef(&c.MaxReservations, 10000)
	setDef(&c.MaxSessions, 4096)
	setDef(&c.MaxSessionsPerPeer, 16)
	setDefF(&c.ReservationsPerSecond, 20)
	setDef(&c.ReservationBurst, 40)
	setDefF(&c.ConnectsPerSecond, 2)
	setDef(&c.ConnectBurst, 8)
	setDefF(&c.HandshakesPerSecond, 100)
	setDef(&c.HandshakeBurst, 200)
	setDefF(&c.HandshakesPerIP, 5)
}

// Stats counts what a Server did. Read the fields with Load.
type Stats struct {
	Forwarded      atomic.Uint64 // datagrams forwarded
	ForwardedBytes atomic.Uint64
	Malformed      atomic.Uint64 // not a data packet
	Unknown        atomic.Uint64 // no such session
	Spoofed        atomic.Uint64 // session known, source not one of its two addresses
	RateDropped    atomic.Uint64 // over the session's or the peer's rate
	Cut            atomic.Uint64 // sessions ended for bytes or duration
	Refused        atomic.Uint64 // handshakes, reservations or connects refused by a rate or count limit
}

// Server is a relay: it holds reservations and forwards session packets.
type Server struct {
	cfg       Config
	kp        *identity.KeyPair
	log       *slog.Logger
	hsAll     *bucket
	hsIP      *ratelimit.Limiter[netip.Addr]
	resRate   *bucket
	connRate  *ratelimit.Limiter[identity.ID]
	Stats     Stats
	mu        sync.RWMutex
	peers     map[identity.ID]*peer
	sessions  map[SessionID]*session // forwarding table: accepted sessions only
	nSessions int                    // accepted and pending
	nReserved int
	w         atomic.Pointer[PacketWriter] // set by Start
	udp       *net.UDPConn                 // when Listen opened the socket
	demux     *demux
	noBatch   bool // benchmarks: one recvmsg/sendmsg per packet
	tr        *quic.Transport
	ln        *quic.Listener
	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

type peer struct {
	id       identity.ID
	conn     *quic.Conn
	addr     netip.AddrPort // the control connection's source: the NAT mapping data must come from
	rate     *bucket        // nil: unlimited
	reserved bool
	expires  time.Time
	gone     bool
	sessions map[SessionID]*session
}

type session struct {
	id           SessionID
	a, b         *peer // initiator, target
	addrA, addrB netip.AddrPort
	mu           sync.Mutex
	rate         *bucket
	bytes        uint64
	start, last  time.Time
	closed       bool // guarded by Server.mu
}

// NewServer returns a relay for kp; start it with Listen or Start.
func NewServer(kp *identity.KeyPair, cfg Config) *Server {
	cfg.defaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := time.Now()
	return &Server{
		cfg: cfg, kp: kp, log: log,
		hsAll:    newBucket(cfg.HandshakesPerSecond, float64(cfg.HandshakeBurst), now),
		hsIP:     ratelimit.New[netip.Addr](cfg.HandshakesPerIP, int(max(1, 2*cfg.HandshakesPerIP)), 65536),
		resRate:  newBucket(cfg.ReservationsPerSecond, float64(cfg.ReservationBurst), now),
		connRate: ratelimit.New[identity.ID](cfg.ConnectsPerSecond, cfg.ConnectBurst, 65536),
		peers:    map[identity.ID]*peer{},
		sessions: map[SessionID]*session{},
		done:     make(chan struct{}),
	}
}

type udpWriter struct{ c *net.UDPConn }

func (u udpWriter) WriteTo(b []byte, addr netip.AddrPort) error {
	_, err := u.c.WriteToUDPAddrPort(b, addr)
	return err
}

// Listen opens the relay's UDP port: control connections and data packets
// share it. Close stops.
func (s *Server) Listen(addr string) (netip.AddrPort, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("relay listen %s: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("relay listen %s: %w", addr, err)
	}
	_ = udp.SetReadBuffer(8 << 20)
	_ = udp.SetWriteBuffer(8 << 20)
	d := newDemux(udp, s.Handle)
	if !s.noBatch {
		d.route = s.route
	}
	d.forwarded = func(packets int, bytes uint64) {
		s.Stats.Forwarded.Add(uint64(packets))
		s.Stats.ForwardedBytes.Add(bytes)
	}
	tr := &quic.Transport{Conn: d, StatelessResetKey: quicid.StatelessResetKey(s.kp)}
	s.udp, s.demux = udp, d
	if err := s.Start(tr, udpWriter{udp}); err != nil {
		udp.Close()
		return netip.AddrPort{}, err
	}
	go d.run()
	return udp.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}

// Start runs the relay on a QUIC transport whose socket it shares: control
// connections are accepted on tr, data packets must be passed to Handle
// (by transport/udpmux, or by Listen's read loop), and w sends them.
func (s *Server) Start(tr *quic.Transport, w PacketWriter) error {
	tlsConf, err := quicid.ServerConfig(s.kp, ALPN, s.admit)
	if err != nil {
		return err
	}
	tlsConf.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		now := time.Now()
		if chi.Conn == nil {
			return nil, nil
		}
		if ap, err := netip.ParseAddrPort(chi.Conn.RemoteAddr().String()); err == nil {
			if !s.hsIP.Allow(ap.Addr().Unmap(), now) {
				s.Stats.Refused.Add(1)
				return nil, ErrHandshakeCap
			}
		}
		if !s.hsAll.take(1, now) {
			s.Stats.Refused.Add(1)
			return nil, ErrHandshakeCap
		}
		return nil, nil
	}
	qc := quicid.Config(4, ControlIdle)
	qc.MaxIncomingUniStreams = -1
	ln, err := tr.Listen(tlsConf, qc)
	if err != nil {
		return fmt.Errorf("relay listen: %w", err)
	}
	s.tr, s.ln = tr, ln
	s.w.Store(&w)
	s.wg.Add(2)
	go s.acceptLoop()
	go s.janitor()
	return nil
}

func (s *Server) admit(id identity.ID) error {
	if s.cfg.Admit == nil {
		return nil
	}
	if err := s.cfg.Admit(id); err != nil {
		s.log.Info("relay refused", "node", id, "err", err)
		return fmt.Errorf("%w: %w", ErrNotAdmitted, err)
	}
	return nil
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	if ua, ok := a.(*net.UDPAddr); ok {
		return unmap(ua.AddrPort()), true
	}
	ap, err := netip.ParseAddrPort(a.String())
	return unmap(ap), err == nil
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, id, err := quicid.Accept(context.Background(), s.ln)
		if err != nil {
			return
		}
		addr, ok := addrPortOf(conn.RemoteAddr())
		if !ok {
			conn.CloseWithError(1, "no UDP address")
			continue
		}
		p := &peer{id: id, conn: conn, addr: addr, sessions: map[SessionID]*session{}}
		if s.cfg.PeerBytesPerSecond > 0 {
			p.rate = newBucket(s.cfg.PeerBytesPerSecond, max(s.cfg.PeerBytesPerSecond, 64<<10), time.Now())
		}
		s.mu.Lock()
		old := s.peers[id]
		if old == nil && len(s.peers) >= s.cfg.MaxPeers {
			s.mu.Unlock()
			s.Stats.Refused.Add(1)
			conn.CloseWithError(3, "relay full")
			continue
		}
		s.peers[id] = p
		s.mu.Unlock()
		if old != nil {
			s.dropPeer(old)
			old.conn.CloseWithError(2, "replaced by a newer control connection")
		}
		s.log.Debug("relay peer up", "node", id, "from", addr)
		s.wg.Add(1)
		go s.servePeer(p)
	}
}

// servePeer answers p's requests until its connection ends; QUIC's stream
// limit (4) bounds the requests in flight.
func (s *Server) servePeer(p *peer) {
	defer s.wg.Done()
	defer s.dropPeer(p)
	ctx := p.conn.Context()
	for {
		st, err := p.conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveRequest(ctx, p, st)
		}()
	}
}

func errMsg(code ErrCode, text string) *Msg { return &Msg{Type: MsgError, Code: code, Text: text} }

func (s *Server) serveRequest(ctx context.Context, p *peer, st *quic.Stream) {
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(2 * requestTimeout))
	m, err := ReadMsg(st)
	st.CancelRead(0) // one message per stream: done reading, frees the stream
	if err != nil {
		return
	}
	var reply *Msg
	switch m.Type {
	case MsgReserve:
		reply = s.reserve(p)
	case MsgConnect:
		reply = s.connect(ctx, p, m.Peer)
	case MsgClosed:
		reply = s.release(p, m.Session)
	default:
		reply = errMsg(CodeBadRequest, "unexpected "+m.Type.String())
	}
	_ = WriteMsg(st, reply)
}

func (s *Server) reserve(p *peer) *Msg {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.gone {
		return errMsg(CodeInternal, "control connection replaced")
	}
	if !p.reserved {
		if s.nReserved >= s.cfg.MaxReservations {
			s.Stats.Refused.Add(1)
			return errMsg(CodeNoCapacity, "relay holds its maximum of reservations")
		}
		if !s.resRate.take(1, now) {
			s.Stats.Refused.Add(1)
			return errMsg(CodeRateLimited, "too many new reservations per second")
		}
		p.reserved = true
		s.nReserved++
		s.log.Debug("relay reservation", "node", p.id)
	}
	p.expires = now.Add(s.cfg.ReservationTTL)
	return &Msg{Type: MsgReserved, TTL: s.cfg.ReservationTTL, Limits: s.cfg.Session}
}

func (s *Server) connect(ctx context.Context, p *peer, target identity.ID) *Msg {
	now := time.Now()
	if target == p.id {
		return errMsg(CodeBadRequest, "cannot connect to yourself")
	}
	if !s.connRate.Allow(p.id, now) {
		s.Stats.Refused.Add(1)
		return errMsg(CodeRateLimited, "too many new sessions per second")
	}
	var sid SessionID
	_, _ = rand.Read(sid[:])
	s.mu.Lock()
	t := s.peers[target]
	switch {
	case p.gone:
		s.mu.Unlock()
		return errMsg(CodeInternal, "control connection replaced")
	case t == nil || !t.reserved || now.After(t.expires):
		s.mu.Unlock()
		return errMsg(CodeNoPeer, "peer holds no reservation here")
	case s.nSessions >= s.cfg.MaxSessions, len(p.sessions) >= s.cfg.MaxSessionsPerPeer, len(t.sessions) >= s.cfg.MaxSessionsPerPeer:
		s.mu.Unlock()
		s.Stats.Refused.Add(1)
		return errMsg(CodeNoCapacity, "session limit reached")
	}
	sess := &session{id: sid, a: p, b: t, addrA: p.addr, addrB: t.addr}
	if r := s.cfg.Session.BytesPerSecond; r > 0 {
		sess.rate = newBucket(float64(r), max(float64(r), 64<<10), now)
	}
	// Count the session now so concurrent connects respect the limits;
	// it forwards only once the target accepted.
	p.sessions[sid], t.sessions[sid] = sess, sess
	s.nSessions++
	s.mu.Unlock()

	if err := s.askTarget(ctx, t, sess); err != nil {
		s.removeSession(sess, ReasonNone, false)
		return errMsg(CodeRefused, "peer did not accept: "+err.Error())
	}
	s.mu.Lock()
	if sess.closed {
		s.mu.Unlock()
		return errMsg(CodeNoPeer, "peer gone")
	}
	sess.start = time.Now()
	sess.last = sess.start
	s.sessions[sid] = sess
	s.mu.Unlock()
	s.log.Debug("relay session", "session", sid, "from", p.id, "to", t.id)
	return &Msg{Type: MsgConnected, Session: sid, Peer: target, Limits: s.cfg.Session}
}

// release ends one of p's sessions at its request.
func (s *Server) release(p *peer, sid SessionID) *Msg {
	s.mu.RLock()
	sess := p.sessions[sid]
	s.mu.RUnlock()
	if sess == nil {
		return errMsg(CodeBadRequest, "no such session of yours")
	}
	s.removeSession(sess, ReasonReleased, true)
	return &Msg{Type: MsgClosed, Session: sid, Reason: ReasonReleased}
}

// askTarget tells t about the new session and waits for its Accept.
func (s *Server) askTarget(ctx context.Context, t *peer, sess *session) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	st, err := t.conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	dl, _ := ctx.Deadline()
	_ = st.SetDeadline(dl)
	if err := WriteMsg(st, &Msg{Type: MsgIncoming, Session: sess.id, Peer: sess.a.id, Limits: s.cfg.Session}); err != nil {
		return err
	}
	st.Close()
	m, err := ReadMsg(st)
	st.CancelRead(0)
	if err != nil {
		return err
	}
	switch {
	case m.Type == MsgError:
		return &RemoteError{Code: m.Code, Text: m.Text}
	case m.Type != MsgAccept || m.Session != sess.id:
		return fmt.Errorf("%w: answer %s to incoming", ErrBadMsg, m.Type)
	}
	return nil
}

// removeSession ends sess; with notify, both peers are told why.
func (s *Server) removeSession(sess *session, why Reason, notify bool) {
	s.mu.Lock()
	if sess.closed {
		s.mu.Unlock()
		return
	}
	sess.closed = true
	delete(s.sessions, sess.id)
	delete(sess.a.sessions, sess.id)
	delete(sess.b.sessions, sess.id)
	s.nSessions--
	s.mu.Unlock()
	if !notify {
		return
	}
	s.log.Debug("relay session closed", "session", sess.id, "reason", why)
	for _, p := range []*peer{sess.a, sess.b} {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.tellClosed(p, sess.id, why)
		}()
	}
}

func (s *Server) tellClosed(p *peer, sid SessionID, why Reason) {
	ctx, cancel := context.WithTimeout(p.conn.Context(), requestTimeout)
	defer cancel()
	st, err := p.conn.OpenStreamSync(ctx)
	if err != nil {
		return
	}
	_ = st.SetDeadline(time.Now().Add(requestTimeout))
	_ = WriteMsg(st, &Msg{Type: MsgClosed, Session: sid, Reason: why})
	st.Close()
	st.CancelRead(0)
}

// dropPeer ends p's reservation and sessions.
func (s *Server) dropPeer(p *peer) {
	s.mu.Lock()
	if p.gone {
		s.mu.Unlock()
		return
	}
	p.gone = true
	if s.peers[p.id] == p {
		delete(s.peers, p.id)
	}
	if p.reserved {
		p.reserved = false
		s.nReserved--
	}
	var ended []*session
	for _, sess := range p.sessions {
		ended = append(ended, sess)
	}
	s.mu.Unlock()
	for _, sess := range ended {
		s.removeSession(sess, ReasonPeerGone, true)
	}
	s.log.Debug("relay peer down", "node", p.id)
}

// Handle forwards one data packet received from from. It is the relay's
// hot path: it keeps nothing of pkt and never blocks on another session.
// Packets before Start are dropped.
func (s *Server) Handle(pkt []byte, from netip.AddrPort) {
	w := s.w.Load()
	if w == nil {
		return
	}
	to, ok := s.route(pkt, from, time.Now())
	if !ok {
		return
	}
	if err := (*w).WriteTo(pkt, to); err != nil {
		return
	}
	s.Stats.Forwarded.Add(1)
	s.Stats.ForwardedBytes.Add(uint64(len(pkt)))
}

// route decides where one data packet goes, charging its session and
// sender; false: nowhere (counted).
func (s *Server) route(pkt []byte, from netip.AddrPort, now time.Time) (netip.AddrPort, bool) {
	sid, _, err := ParseData(pkt)
	if err != nil {
		s.Stats.Malformed.Add(1)
		return netip.AddrPort{}, false
	}
	s.mu.RLock()
	sess := s.sessions[sid]
	s.mu.RUnlock()
	if sess == nil {
		s.Stats.Unknown.Add(1)
		return netip.AddrPort{}, false
	}
	from = unmap(from)
	var to netip.AddrPort
	var sender *peer
	switch from {
	case sess.addrA:
		to, sender = sess.addrB, sess.a
	case sess.addrB:
		to, sender = sess.addrA, sess.b
	default:
		s.Stats.Spoofed.Add(1)
		return netip.AddrPort{}, false
	}
	n := uint64(len(pkt))
	lim := &s.cfg.Session
	sess.mu.Lock()
	switch {
	case lim.MaxDuration > 0 && now.Sub(sess.start) > lim.MaxDuration:
		sess.mu.Unlock()
		s.cut(sess, ReasonDuration)
		return netip.AddrPort{}, false
	case lim.MaxBytes > 0 && sess.bytes+n > lim.MaxBytes:
		sess.mu.Unlock()
		s.cut(sess, ReasonBytes)
		return netip.AddrPort{}, false
	case sess.rate != nil && !sess.rate.take(float64(n), now),
		sender.rate != nil && !sender.rate.take(float64(n), now):
		sess.mu.Unlock()
		s.Stats.RateDropped.Add(1)
		return netip.AddrPort{}, false
	}
	sess.bytes += n
	sess.last = now
	sess.mu.Unlock()
	return to, true
}

func (s *Server) cut(sess *session, why Reason) {
	s.mu.RLock()
	closed := sess.closed
	s.mu.RUnlock()
	if closed {
		return
	}
	s.Stats.Cut.Add(1)
	s.log.Info("relay session cut", "session", sess.id, "from", sess.a.id, "to", sess.b.id, "reason", why)
	s.removeSession(sess, why, true)
}

// janitor ends sessions that are idle or past their duration even when no
// packet comes to notice it, and lets unrefreshed reservations lapse.
func (s *Server) janitor() {
	defer s.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-tick.C:
			s.sweep(now)
		}
	}
}

func (s *Server) sweep(now time.Time) {
	type ending struct {
		sess *session
		why  Reason
	}
	var ends []ending
	s.mu.Lock()
	for _, sess := range s.sessions {
		sess.mu.Lock()
		start, last := sess.start, sess.last
		sess.mu.Unlock()
		switch {
		case s.cfg.Session.MaxDuration > 0 && now.Sub(start) > s.cfg.Session.MaxDuration:
			ends = append(ends, ending{sess, ReasonDuration})
		case now.Sub(last) > s.cfg.IdleTimeout:
			ends = append(ends, ending{sess, ReasonIdle})
		}
	}
	for _, p := range s.peers {
		if p.reserved && now.After(p.expires) {
			p.reserved = false
			s.nReserved--
		}
	}
	s.mu.Unlock()
	for _, e := range ends {
		if e.why == ReasonDuration {
			s.cut(e.sess, e.why)
		} else {
			s.removeSession(e.sess, e.why, true)
		}
	}
}

// SessionBytes reports the bytes forwarded in session sid so far.
func (s *Server) SessionBytes(sid SessionID) (uint64, bool) {
	s.mu.RLock()
	sess := s.sessions[sid]
	s.mu.RUnlock()
	if sess == nil {
		return 0, false
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.bytes, true
}

// Counts reports the relay's control connections, reservations and
// sessions (accepted and pending).
func (s *Server) Counts() (peers, reservations, sessions int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.peers), s.nReserved, s.nSessions
}

// Close ends every control connection and session and stops the relay.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		if s.ln != nil {
			s.ln.Close()
		}
		s.mu.RLock()
		var conns []*quic.Conn
		for _, p := range s.peers {
			conns = append(conns, p.conn)
		}
		s.mu.RUnlock()
		for _, c := range conns {
			c.CloseWithError(0, "relay shutting down")
		}
		if s.udp != nil {
			s.tr.Close()
			s.udp.Close()
			<-s.demux.done
		}
	})
	s.wg.Wait()
	return nil
}
