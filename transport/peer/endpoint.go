package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/ratelimit"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/punch"
	"github.com/elacity/pc2/transport/quicid"
	"github.com/elacity/pc2/transport/udpmux"
)

// ALPN is the protocol of the end-to-end connections.
const ALPN = "pc2-peer/1"

// RelayInfo names a relay (relay/circuit service) by node id and address.
type RelayInfo struct {
	ID   identity.ID
	Addr netip.AddrPort
}

// Info is how to reach a peer.
type Info struct {
	Relays []RelayInfo      // where it keeps reservations (≤ 4 used)
	Direct []netip.AddrPort // its direct UDP candidates, best first
	Hard   bool             // its NAT maps per destination (symmetric)
}

// Resolver finds how to reach a peer (pc2: its signed record in the DHT).
type Resolver interface {
	Resolve(ctx context.Context, id identity.ID) (Info, error)
}

// Candidates are this node's own direct candidates, offered when punching.
type Candidates struct {
	UDP  []netip.AddrPort // best first (port mapping, reflexive, local)
	Hard bool
}

// Event reports a path change of a peer.
type Event struct {
	Peer identity.ID
	Path Path
	At   time.Time
	Why  string
}

// Config configures an Endpoint.
type Config struct {
	Key *identity.KeyPair
	// Mux is the node's shared UDP socket.
	Mux      *udpmux.Mux
	Resolver Resolver
	// Relays are where this node keeps reservations, so peers can reach it.
	Relays []RelayInfo
	// Candidates returns this node's direct candidates (nil: never punch).
	Candidates func() Candidates
	// Admit decides which peers may connect (nil: all).
	Admit func(identity.ID) error
	// OnEvent is told every path change; it must not block.
	OnEvent func(Event)
	Logger  *slog.Logger
	// DeadAfter: a direct datagram unanswered this long ends the direct
	// path (500 ms: QUIC's probe timeout doubles while the path is dead,
	// so an earlier verdict means an earlier retransmission through the
	// relay). KeepAlive is the idle keep-alive period (25 s).
	DeadAfter, KeepAlive time.Duration
	// RetryMin and RetryMax bound the backoff between punch attempts while
	// on the relay (2 s, 60 s).
	RetryMin, RetryMax time.Duration
	// PunchDelay delays the first punch after a connection is up (0).
	PunchDelay time.Duration
	// RelayIdle closes a client of another node's relay after this long
	// without a live session (1 min).
	RelayIdle time.Duration
	// MaxPeers bounds peers with a connection (1024); MaxStreams the
	// streams a peer may have open at once (256).
	MaxPeers   int
	MaxStreams int64
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.DeadAfter <= 0 {
		c.DeadAfter = 500 * time.Millisecond
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 25 * time.Second
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 2 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 60 * time.Second
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = 1024
	}
	if c.RelayIdle <= 0 {
		c.RelayIdle = time.Minute
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = 256
	}
}

// handshakesPerSecond bounds new incoming connections over all peers.
const handshakesPerSecond = 50

var errHandshakeRate = errors.New("peer: too many handshakes")

// Endpoint is a node's peer-to-peer side: its connections to other nodes,
// their paths, and the protocols it listens for.
type Endpoint struct {
	cfg    Config
	pc     *pathConn
	tr     *quic.Transport
	ln     *quic.Listener
	qc     *quic.Config
	views  *punchViews
	remove []func()
	cancel context.CancelFunc
	ctx    context.Context // ends at Close; for background work only
	wg     sync.WaitGroup

	mu        sync.Mutex
	relays    map[netip.AddrPort]*relayEntry
	conns     map[identity.ID][]*peerConn
	dialing   map[identity.ID]chan struct{}
	listeners map[string]*Listener
	reserved  map[netip.AddrPort]bool
	refused   atomic.Uint64 // handshakes over a rate
	closed    bool
}

type relayEntry struct {
	id    identity.ID
	cli   *circuit.Client
	ready chan struct{} // closed when cli (or err) is set
	err   error
	// idleSince is when the client last had no live session (0: it has
	// some); a client of another node's relay is closed after RelayIdle.
	idleSince int64
}

// peerConn is one end-to-end connection.
type peerConn struct {
	qc        *quic.Conn
	id        identity.ID
	r         *route
	initiator bool
	info      Info          // the dialer's view of the peer
	kick      chan struct{} // asks the path manager to try again now
}

// New starts an endpoint on cfg.Mux.
func New(cfg Config) (*Endpoint, error) {
	cfg.defaults()
	if cfg.Key == nil || cfg.Mux == nil {
		return nil, errors.New("peer: Key and Mux are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Endpoint{
		cfg:       cfg,
		pc:        newPathConn(cfg.Mux, 1024),
		views:     &punchViews{mux: cfg.Mux, m: map[[8]byte]*punchView{}},
		cancel:    cancel,
		ctx:       ctx,
		relays:    map[netip.AddrPort]*relayEntry{},
		conns:     map[identity.ID][]*peerConn{},
		dialing:   map[identity.ID]chan struct{}{},
		listeners: map[string]*Listener{},
		reserved:  map[netip.AddrPort]bool{},
	}
	e.views.drop = &e.pc.dropDirect
	e.pc.onRelayedWhileDirect = func(r *route) { e.fallBack(r, "the peer sends through the relay") }
	e.tr = &quic.Transport{Conn: e.pc}
	// Only the dialing side sends keep-alives: the other only acknowledges
	// them, so an idle connection costs one packet per period each way.
	qc := quicid.Config(cfg.MaxStreams, 2*cfg.KeepAlive+10*time.Second)
	qc.InitialPacketSize = 1280
	qc.DisablePathMTUDiscovery = true
	qc.EnableDatagrams = true // the nudge after a path change (see fallBack)
	lqc := qc.Clone()
	qc.KeepAlivePeriod = cfg.KeepAlive
	e.qc = qc
	tlsConf, err := quicid.ServerConfig(cfg.Key, ALPN, e.admit)
	if err != nil {
		cancel()
		return nil, err
	}
	// Handshakes are bounded on the ClientHello, before any signature:
	// overall and per claimed peer (the virtual address names it).
	hsAll := ratelimit.New[int](handshakesPerSecond, 2*handshakesPerSecond, 1)
	hsPeer := ratelimit.New[string](1, 4, 4096)
	tlsConf.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		now := time.Now()
		if chi.Conn != nil && !hsPeer.Allow(chi.Conn.RemoteAddr().String(), now) || !hsAll.Allow(0, now) {
			e.refused.Add(1)
			return nil, errHandshakeRate
		}
		return nil, nil
	}
	if e.ln, err = e.tr.Listen(tlsConf, lqc); err != nil {
		cancel()
		return nil, fmt.Errorf("peer: listen: %w", err)
	}
	e.remove = append(e.remove,
		cfg.Mux.Handle(udpmux.FirstByte(TypeDirect, TypeDirect), e.pc.handleDirect),
		cfg.Mux.Handle(udpmux.FirstByte(circuit.TypeData, circuit.TypeData), e.handleRelayData),
		cfg.Mux.Handle(punch.IsPunch, e.views.handle),
	)
	e.wg.Add(2)
	go e.acceptLoop()
	go e.watch()
	for _, r := range cfg.Relays {
		e.wg.Add(1)
		go e.keepReservation(r)
	}
	return e, nil
}

// ID is this endpoint's node id.
func (e *Endpoint) ID() identity.ID { return e.cfg.Key.ID() }

func (e *Endpoint) admit(id identity.ID) error {
	if e.cfg.Admit != nil {
		if err := e.cfg.Admit(id); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.conns[id]) == 0 && len(e.conns) >= e.cfg.MaxPeers {
		return errors.New("peer: too many peers")
	}
	return nil
}

// Close ends every connection, reservation and listener.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	ls := make([]*Listener, 0, len(e.listeners))
	for _, l := range e.listeners {
		ls = append(ls, l)
	}
	e.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	e.cancel()
	for _, rm := range e.remove {
		rm()
	}
	_ = e.ln.Close()
	_ = e.tr.Close()
	_ = e.pc.Close()
	e.mu.Lock()
	relays := e.relays
	e.relays = map[netip.AddrPort]*relayEntry{}
	e.mu.Unlock()
	for _, r := range relays {
		<-r.ready
		if r.cli != nil {
			r.cli.Close()
		}
	}
	e.wg.Wait()
	return nil
}

// Stats counts the endpoint's datagrams.
type Stats struct {
	SentDirect, SentRelay, RecvDirect, RecvRelay uint64
	// Dropped: from unknown sources, with a full queue, without a route.
	DropUnknown, DropQueue, DropNoRoute uint64
	// RefusedHandshakes were over the handshake rate.
	RefusedHandshakes uint64
}

// Stats returns the counters.
func (e *Endpoint) Stats() Stats {
	c := e.pc
	return Stats{
		SentDirect: c.sentDirect.Load(), SentRelay: c.sentRelay.Load(),
		RecvDirect: c.recvDirect.Load(), RecvRelay: c.recvRelay.Load(),
		DropUnknown: c.dropUnknown.Load(), DropQueue: c.dropQueue.Load(), DropNoRoute: c.dropNoRoute.Load(),
		RefusedHandshakes: e.refused.Load(),
	}
}

// Path returns the path in use towards id.
func (e *Endpoint) Path(id identity.ID) Path {
	if r := e.pc.lookup(id); r != nil {
		return r.path()
	}
	return Path{Kind: PathNone}
}

func (e *Endpoint) emit(r *route, why string) {
	p := r.path()
	e.cfg.Logger.Info("peer: path", "peer", r.addr.ID, "path", p.String(), "why", why)
	if e.cfg.OnEvent != nil {
		e.cfg.OnEvent(Event{Peer: r.addr.ID, Path: p, At: time.Now(), Why: why})
	}
}

// --- relays ---

// handleRelayData gives relay data datagrams to the client of the relay
// they come from.
func (e *Endpoint) handleRelayData(pkt []byte, from netip.AddrPort) bool {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	e.mu.Lock()
	r := e.relays[from]
	e.mu.Unlock()
	if r == nil {
		return false
	}
	select {
	case <-r.ready:
	default:
		return true // still dialing: no session yet
	}
	if r.cli == nil {
		return false
	}
	r.cli.Handle(pkt, from)
	return true
}

// relay returns a live client of relay ri, dialing it if needed.
func (e *Endpoint) relay(ctx context.Context, ri RelayInfo) (*circuit.Client, error) {
	ap := netip.AddrPortFrom(ri.Addr.Addr().Unmap(), ri.Addr.Port())
	for {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return nil, ErrClosed
		}
		r := e.relays[ap]
		if r == nil {
			r = &relayEntry{id: ri.ID, ready: make(chan struct{})}
			e.relays[ap] = r
			e.mu.Unlock()
			e.dialRelay(ctx, ap, r)
			if r.err != nil {
				return nil, r.err
			}
			return r.cli, nil
		}
		e.mu.Unlock()
		select {
		case <-r.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if r.cli != nil {
			select {
			case <-r.cli.Done():
			default:
				if r.id != ri.ID {
					// A record naming the relay we know at this address
					// with another id is wrong (the TLS check would fail):
					// keep ours.
					return nil, fmt.Errorf("peer: the relay at %s is %s, not %s", ap, r.id, ri.ID)
				}
				return r.cli, nil
			}
		}
		// Dead or failed: forget it and dial again.
		e.mu.Lock()
		if e.relays[ap] == r {
			delete(e.relays, ap)
		}
		e.mu.Unlock()
		if r.cli != nil {
			r.cli.Close() // its control connection has ended
		}
		if r.err != nil {
			return nil, r.err
		}
	}
}

func (e *Endpoint) dialRelay(ctx context.Context, ap netip.AddrPort, r *relayEntry) {
	defer close(r.ready)
	var cli *circuit.Client
	var cliReady = make(chan struct{})
	cli, r.err = circuit.Dial(ctx, e.cfg.Mux.Transport(), e.cfg.Mux, e.cfg.Key, ap, r.id, circuit.ClientConfig{
		Accept: func(from identity.ID) bool { return e.admit(from) == nil },
		OnPacket: func(from *circuit.Addr, payload []byte) {
			<-cliReady
			e.pc.handleRelayed(cli, r.id, from, payload)
		},
		Logger: e.cfg.Logger,
	})
	close(cliReady)
	if r.err != nil {
		e.mu.Lock()
		if e.relays[ap] == r {
			delete(e.relays, ap)
		}
		e.mu.Unlock()
		return
	}
	r.cli = cli
}

// keepReservation keeps this node reachable through ri.
func (e *Endpoint) keepReservation(ri RelayInfo) {
	defer e.wg.Done()
	wait := time.Duration(0)
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(max(2*wait, time.Second), 30*time.Second)
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		cli, err := e.relay(ctx, ri)
		if err == nil {
			_, err = cli.Reserve(ctx)
		}
		cancel()
		if err != nil {
			e.cfg.Logger.Warn("peer: relay reservation", "relay", ri.Addr, "err", err)
			wait = time.Duration(rand.Int64N(int64(wait)) + 1) // full jitter
			continue
		}
		e.cfg.Logger.Info("peer: reserved at relay", "relay", ri.Addr)
		e.setReserved(ri.Addr, true)
		wait = 0
		select {
		case <-e.ctx.Done():
			return
		case <-cli.Done():
			e.setReserved(ri.Addr, false)
			wait = time.Second
		}
	}
}

func (e *Endpoint) setReserved(ap netip.AddrPort, on bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if on {
		e.reserved[ap] = true
	} else {
		delete(e.reserved, ap)
	}
}

// Reserved returns the relays where this node holds a reservation now.
func (e *Endpoint) Reserved() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(e.reserved))
	for ap := range e.reserved {
		out = append(out, ap)
	}
	return out
}

// connectRelay gives r a relayed session to its peer through one of the
// peer's relays.
func (e *Endpoint) connectRelay(ctx context.Context, r *route, info Info) error {
	var errs []error
	for i, ri := range info.Relays {
		if i == 4 {
			break
		}
		cli, err := e.relay(ctx, ri)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sess, err := cli.Connect(ctx, r.addr.ID)
		if err != nil {
			errs = append(errs, fmt.Errorf("relay %s: %w", ri.Addr, err))
			continue
		}
		e.pc.setRelay(r, cli, ri.ID, sess)
		return nil
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: it names no relay", ErrUnreachable)
	}
	return fmt.Errorf("%w: %w", ErrUnreachable, errors.Join(errs...))
}

// relayAlive reports whether r's relayed session still exists.
func relayAlive(r *route) bool {
	r.mu.Lock()
	cli, sess := r.relayCli, r.relaySess
	r.mu.Unlock()
	if sess == nil {
		return false
	}
	info, ok := cli.Session(sess)
	if !ok {
		return false
	}
	select {
	case <-info.Done:
		return false
	default:
		return true
	}
}

// --- connections ---

// conn returns a live connection to id, dialing one if needed.
func (e *Endpoint) conn(ctx context.Context, id identity.ID) (*peerConn, error) {
	if id == e.ID() {
		return nil, errors.New("peer: dial to self")
	}
	for {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return nil, ErrClosed
		}
		for _, pc := range e.conns[id] {
			if pc.qc.Context().Err() == nil {
				e.mu.Unlock()
				return pc, nil
			}
		}
		if ch := e.dialing[id]; ch != nil {
			e.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		e.dialing[id] = ch
		e.mu.Unlock()
		pc, err := e.dial(ctx, id)
		e.mu.Lock()
		delete(e.dialing, id)
		close(ch)
		e.mu.Unlock()
		return pc, err
	}
}

func (e *Endpoint) dial(ctx context.Context, id identity.ID) (*peerConn, error) {
	if e.cfg.Resolver == nil {
		return nil, fmt.Errorf("%w: no resolver", ErrUnreachable)
	}
	info, err := e.cfg.Resolver.Resolve(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("peer: resolve %s: %w", id, err)
	}
	r := e.pc.route(id)
	fail := func(err error) (*peerConn, error) {
		e.mu.Lock()
		if len(e.conns[id]) == 0 {
			e.pc.forget(id)
		}
		e.mu.Unlock()
		return nil, err
	}
	if p := r.path(); p.Kind == PathNone || (p.Kind == PathRelay && !relayAlive(r)) {
		if err := e.connectRelay(ctx, r, info); err != nil {
			return fail(err)
		}
	}
	tlsConf, err := quicid.ClientConfig(e.cfg.Key, ALPN, id)
	if err != nil {
		return fail(err)
	}
	qconn, err := e.tr.Dial(ctx, r.addr, tlsConf, e.qc)
	if err != nil {
		return fail(fmt.Errorf("peer: connect to %s: %w", id, err))
	}
	r.keepRelay.Store(true)
	pc := &peerConn{qc: qconn, id: id, r: r, initiator: true, info: info, kick: make(chan struct{}, 1)}
	e.add(pc)
	e.emit(r, "connected")
	return pc, nil
}

func (e *Endpoint) acceptLoop() {
	defer e.wg.Done()
	for {
		qconn, id, err := quicid.Accept(e.ctx, e.ln)
		if err != nil {
			return
		}
		// The packets came through a route the relay named (its session's
		// peer id): it must be the id the handshake proved, or a relay could
		// file one node's connection under another's route.
		if a, ok := qconn.RemoteAddr().(*Addr); !ok || a.ID != id {
			qconn.CloseWithError(1, "peer id differs from the route's")
			continue
		}
		r := e.pc.route(id)
		pc := &peerConn{qc: qconn, id: id, r: r, kick: make(chan struct{}, 1)}
		e.add(pc)
		e.emit(r, "accepted")
	}
}

// add registers pc and runs its stream and path loops.
func (e *Endpoint) add(pc *peerConn) {
	e.mu.Lock()
	e.conns[pc.id] = append(e.conns[pc.id], pc)
	e.mu.Unlock()
	e.wg.Add(2)
	go e.serveStreams(pc)
	go e.managePath(pc)
	context.AfterFunc(pc.qc.Context(), func() { e.drop(pc) })
}

func (e *Endpoint) drop(pc *peerConn) {
	e.mu.Lock()
	cs := e.conns[pc.id]
	for i, c := range cs {
		if c == pc {
			cs = append(cs[:i:i], cs[i+1:]...)
			break
		}
	}
	if len(cs) == 0 {
		delete(e.conns, pc.id)
		e.pc.forget(pc.id)
	} else {
		e.conns[pc.id] = cs
	}
	e.mu.Unlock()
}

// --- streams ---

// Dial opens a stream to node id for protocol.
func (e *Endpoint) Dial(ctx context.Context, id identity.ID, protocol string) (*Stream, error) {
	hdr, err := AppendHeader(nil, protocol)
	if err != nil {
		return nil, err
	}
	pc, err := e.conn(ctx, id)
	if err != nil {
		return nil, err
	}
	return e.open(ctx, pc, protocol, hdr)
}

func (e *Endpoint) open(ctx context.Context, pc *peerConn, protocol string, hdr []byte) (*Stream, error) {
	st, err := pc.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("peer: open stream: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(err error) (*Stream, error) {
		st.CancelRead(0)
		st.CancelWrite(0)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if _, err := st.Write(hdr); err != nil {
		return fail(fmt.Errorf("peer: stream header: %w", err))
	}
	var status [1]byte
	if _, err := io.ReadFull(st, status[:]); err != nil {
		return fail(fmt.Errorf("peer: stream status: %w", err))
	}
	switch Status(status[0]) {
	case StatusOK:
	case StatusNoProtocol:
		return fail(fmt.Errorf("%w: %q", ErrNoProtocol, protocol))
	case StatusBusy:
		return fail(fmt.Errorf("%w: %q", ErrBusy, protocol))
	default:
		return fail(badHeader(fmt.Sprintf("status %d", status[0])))
	}
	_ = st.SetDeadline(time.Time{})
	return newStream(st, pc, protocol), nil
}

// serveStreams answers the streams the peer opens on pc.
func (e *Endpoint) serveStreams(pc *peerConn) {
	defer e.wg.Done()
	for {
		st, err := pc.qc.AcceptStream(e.ctx)
		if err != nil {
			return
		}
		go e.serveStream(pc, st)
	}
}

const headerTimeout = 10 * time.Second

func (e *Endpoint) serveStream(pc *peerConn, st *quic.Stream) {
	_ = st.SetReadDeadline(time.Now().Add(headerTimeout))
	protocol, err := ReadHeader(st)
	if err != nil {
		st.CancelRead(1)
		st.CancelWrite(1)
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if protocol == controlProtocol {
		if _, err := st.Write([]byte{byte(StatusOK)}); err == nil {
			e.respondPunch(pc, st)
		}
		return
	}
	e.mu.Lock()
	l := e.listeners[protocol]
	e.mu.Unlock()
	status := StatusNoProtocol
	if l != nil {
		status = l.reserve()
	}
	if _, err := st.Write([]byte{byte(status)}); err != nil || status != StatusOK {
		if status == StatusOK {
			l.unreserve()
		}
		_ = st.Close()
		st.CancelRead(0)
		return
	}
	l.deliver(newStream(st, pc, protocol))
}

// Listen returns a listener for the streams peers open for protocol.
func (e *Endpoint) Listen(protocol string) (*Listener, error) {
	if err := CheckProtocol(protocol); err != nil {
		return nil, err
	}
	if protocol == controlProtocol {
		return nil, fmt.Errorf("peer: protocol %q is reserved", protocol)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	if e.listeners[protocol] != nil {
		return nil, fmt.Errorf("peer: already listening for %q", protocol)
	}
	l := &Listener{e: e, protocol: protocol, ch: make(chan *Stream, listenQueue), done: make(chan struct{})}
	e.listeners[protocol] = l
	return l, nil
}

// --- paths ---

// watch ends dead direct paths and keeps relay sessions of direct peers.
func (e *Endpoint) watch() {
	defer e.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		now := e.pc.now()
		e.closeIdleRelays(now)
		e.pc.mu.RLock()
		routes := make([]*route, 0, len(e.pc.routes))
		for _, r := range e.pc.routes {
			routes = append(routes, r)
		}
		e.pc.mu.RUnlock()
		for _, r := range routes {
			if now-r.created > int64(staleRoute) {
				e.mu.Lock()
				if len(e.conns[r.addr.ID]) == 0 && e.dialing[r.addr.ID] == nil {
					e.pc.forget(r.addr.ID) // a session whose handshake never came
				}
				e.mu.Unlock()
			}
			r.mu.Lock()
			direct, cli, sess := r.direct.IsValid(), r.relayCli, r.relaySess
			r.mu.Unlock()
			if !direct {
				continue
			}
			if f := r.secondUnanswered.Load(); f != 0 && now-f > int64(e.cfg.DeadAfter) {
				e.fallBack(r, "no answer on the direct path")
				continue
			}
			// The dialing side keeps the relay session (the relay ends an
			// idle one), so that a fallback finds it at once.
			if sess != nil && r.keepRelay.Load() && now-r.lastRelayKeep.Load() > int64(e.cfg.KeepAlive) {
				r.lastRelayKeep.Store(now)
				e.pc.sentRelay.Add(1)
				_ = cli.Send(sess, []byte{0})
			}
		}
	}
}

// closeIdleRelays closes the clients of relays dialed for other nodes
// (not this node's own reservations) that have carried no session for
// RelayIdle: a node that reached many peers through their relays does not
// keep a control connection to each forever.
func (e *Endpoint) closeIdleRelays(now int64) {
	own := map[netip.AddrPort]bool{}
	for _, ri := range e.cfg.Relays {
		own[netip.AddrPortFrom(ri.Addr.Addr().Unmap(), ri.Addr.Port())] = true
	}
	var idle []*circuit.Client
	e.mu.Lock()
	for ap, r := range e.relays {
		select {
		case <-r.ready:
		default:
			continue
		}
		if r.cli == nil || own[ap] {
			continue
		}
		if r.cli.Live() > 0 {
			r.idleSince = 0
			continue
		}
		if r.idleSince == 0 {
			r.idleSince = now
			continue
		}
		if now-r.idleSince > int64(e.cfg.RelayIdle) {
			delete(e.relays, ap)
			idle = append(idle, r.cli)
		}
	}
	e.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// RelayClients is how many relay control connections the endpoint holds.
func (e *Endpoint) RelayClients() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.relays)
}

// staleRoute is how long a route may exist without a connection.
const staleRoute = 30 * time.Second

// fallBack moves r from its direct path to the relay.
func (e *Endpoint) fallBack(r *route, why string) {
	if !e.pc.fallBack(r) {
		return
	}
	e.emit(r, why)
	e.mu.Lock()
	cs := e.conns[r.addr.ID]
	e.mu.Unlock()
	for _, pc := range cs {
		select {
		case pc.kick <- struct{}{}:
		default:
		}
		nudge(pc.qc)
	}
}

// nudge makes QUIC resend at once what the dead path lost: a few new
// ack-eliciting packets (empty datagrams, which the peer discards) go out
// on the new route, and their acknowledgements let loss detection declare
// the older packets lost by packet threshold and retransmit them, instead
// of waiting for a probe timeout that has backed off to seconds while the
// dead path was being detected.
func nudge(qc *quic.Conn) {
	for range 3 {
		if err := qc.SendDatagram(nil); err != nil {
			return
		}
	}
}

// managePath upgrades pc to direct and keeps its relay session; only the
// dialing side drives it (it knows the peer's relays and candidates).
func (e *Endpoint) managePath(pc *peerConn) {
	defer e.wg.Done()
	if !pc.initiator {
		return
	}
	ctx := pc.qc.Context()
	wait := e.cfg.PunchDelay
	for {
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-pc.kick:
			wait = e.cfg.RetryMin
		case <-timer.C:
		}
		timer.Stop()
		if pc.r.path().Kind == PathDirect {
			wait = time.Hour // until kicked by a fallback
			continue
		}
		if !relayAlive(pc.r) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := e.connectRelay(cctx, pc.r, pc.info)
			cancel()
			if err == nil {
				e.emit(pc.r, "new relay session")
			}
		}
		ok, err := e.punch(ctx, pc)
		switch {
		case ok:
			wait = time.Hour
		case errors.Is(err, errNoPunch):
			wait = e.cfg.RetryMax
		default:
			wait = min(max(2*wait, e.cfg.RetryMin), e.cfg.RetryMax)
		}
		if err != nil && ctx.Err() == nil {
			e.cfg.Logger.Debug("peer: punch", "peer", pc.id, "err", err)
		}
	}
}

var errNoPunch = errors.New("peer: no punchable candidates")

// punch runs one attempt as the initiator.
func (e *Endpoint) punch(ctx context.Context, pc *peerConn) (bool, error) {
	local, ok := e.candidates()
	if !ok {
		return false, errNoPunch
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := e.open(ctx, pc, controlProtocol, mustHeader(controlProtocol))
	if err != nil {
		return false, err
	}
	defer st.Close()
	offer := punch.NewOffer()
	offer.UDP, offer.Hard = local.UDP, local.Hard
	view := e.views.open(offer.Attempt)
	if view == nil {
		return false, errors.New("peer: too many punch attempts")
	}
	defer view.close()
	plan, err := punch.Negotiate(ctx, streamSignal{st.Stream}, punch.Initiator, offer)
	if err != nil {
		return false, err
	}
	return e.runPunch(ctx, pc, view, plan)
}

func (e *Endpoint) candidates() (Candidates, bool) {
	if e.cfg.Candidates == nil {
		return Candidates{}, false
	}
	c := e.cfg.Candidates()
	if len(c.UDP) > punch.MaxCandidates {
		c.UDP = c.UDP[:punch.MaxCandidates]
	}
	return c, len(c.UDP) > 0 && !c.Hard
}

// respondPunch answers the peer's attempt on control stream st.
func (e *Endpoint) respondPunch(pc *peerConn, st *quic.Stream) {
	defer st.Close()
	ctx, cancel := context.WithTimeout(pc.qc.Context(), 20*time.Second)
	defer cancel()
	local, _ := e.candidates()
	plan, err := punch.Negotiate(ctx, streamSignal{st}, punch.Responder, punch.Offer{UDP: local.UDP, Hard: local.Hard})
	if err != nil {
		return
	}
	view := e.views.open(plan.Local.Attempt)
	if view == nil {
		return
	}
	defer view.close()
	_, _ = e.runPunch(ctx, pc, view, plan)
}

func (e *Endpoint) runPunch(ctx context.Context, pc *peerConn, view *punchView, plan punch.Plan) (bool, error) {
	if len(plan.Local.UDP) == 0 || len(plan.Remote.UDP) == 0 || plan.Local.Hard || plan.Remote.Hard {
		return false, errNoPunch // birthday probing would need extra sockets: stay on the relay
	}
	res, err := punch.PunchUDP(ctx, view, plan, punch.Config{})
	if !res.OK || res.Socket != 0 {
		if err == nil {
			err = punch.ErrNoPath
		}
		return false, err
	}
	if pc.qc.Context().Err() != nil {
		return false, pc.qc.Context().Err()
	}
	e.pc.setDirect(pc.r, res.Remote)
	e.emit(pc.r, fmt.Sprintf("punched in %v", res.Confirmed.Round(time.Millisecond)))
	return true, nil
}

func mustHeader(protocol string) []byte {
	h, err := AppendHeader(nil, protocol)
	if err != nil {
		panic(err) // constant protocol names only
	}
	return h
}

// streamSignal carries punch signalling on a control stream.
type streamSignal struct{ st *quic.Stream }

func (s streamSignal) Send(ctx context.Context, m punch.SignalMsg) error {
	b, err := punch.MarshalSignal(m)
	if err != nil {
		return err
	}
	return writeMsg(s.st, b)
}

func (s streamSignal) Recv(ctx context.Context) (punch.SignalMsg, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = s.st.SetReadDeadline(dl)
	}
	b, err := ReadMsg(s.st)
	if err != nil {
		return punch.SignalMsg{}, err
	}
	return punch.UnmarshalSignal(b)
}

// --- stream and listener types ---

// Stream is one stream to a peer: a net.Conn whose Path says how it
// travels now.
type Stream struct {
	*quic.Stream
	pc       *peerConn
	protocol string
}

func newStream(st *quic.Stream, pc *peerConn, protocol string) *Stream {
	return &Stream{Stream: st, pc: pc, protocol: protocol}
}

// Peer is the node at the other end.
func (s *Stream) Peer() identity.ID { return s.pc.id }

// Protocol is the stream's protocol.
func (s *Stream) Protocol() string { return s.protocol }

// Path is the path the stream's packets take now.
func (s *Stream) Path() Path { return s.pc.r.path() }

// CloseWrite ends the sending side (the peer reads EOF).
func (s *Stream) CloseWrite() error { return s.Stream.Close() }

// Close ends both sides.
func (s *Stream) Close() error {
	s.Stream.CancelRead(0)
	return s.Stream.Close()
}

// LocalAddr implements net.Conn.
func (s *Stream) LocalAddr() net.Addr { return s.pc.qc.LocalAddr() }

// RemoteAddr implements net.Conn: the peer's virtual address.
func (s *Stream) RemoteAddr() net.Addr { return s.pc.r.addr }

const listenQueue = 64

// Listener yields the streams peers open for one protocol.
type Listener struct {
	e        *Endpoint
	protocol string
	ch       chan *Stream
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex
	queued   int
}

func (l *Listener) reserve() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.done:
		return StatusNoProtocol
	default:
	}
	if l.queued >= listenQueue {
		return StatusBusy
	}
	l.queued++
	return StatusOK
}

func (l *Listener) unreserve() {
	l.mu.Lock()
	l.queued--
	l.mu.Unlock()
}

func (l *Listener) deliver(s *Stream) {
	l.ch <- s // room was reserved
}

// AcceptStream returns the next stream.
func (l *Listener) AcceptStream(ctx context.Context) (*Stream, error) {
	select {
	case s := <-l.ch:
		l.unreserve()
		return s, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Accept implements net.Listener.
func (l *Listener) Accept() (net.Conn, error) { return l.AcceptStream(context.Background()) }

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr { return newAddr(l.e.ID()) }

// Close stops listening; queued streams are reset.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		close(l.done)
		l.mu.Unlock()
		l.e.mu.Lock()
		if l.e.listeners[l.protocol] == l {
			delete(l.e.listeners, l.protocol)
		}
		l.e.mu.Unlock()
		for {
			select {
			case s := <-l.ch:
				s.CancelWrite(0)
				s.CancelRead(0)
			default:
				return
			}
		}
	})
	return nil
}
