package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/transport/quicid"
)

// ALPN is the TLS application protocol of tunnels.
const ALPN = "pc2-tunnel/1"

// Idle is how long a tunnel may stay silent before it counts as dead; the
// node sends a keep-alive after half of it (quic-go's keep-alive rule).
const Idle = 15 * time.Second

// Errors of the server side.
var (
	ErrNoTunnel     = errors.New("tunnel: node has no tunnel here")
	ErrStreamQuota  = errors.New("tunnel: node's stream quota is used up")
	ErrNotAdmitted  = errors.New("tunnel: node is not admitted")
	ErrHandshakeCap = errors.New("tunnel: too many new tunnels per second")
)

// ServerConfig tunes a Server. Zero values take the defaults shown.
type ServerConfig struct {
	// Admit decides whether a node id may hold a tunnel; nil admits all.
	Admit func(identity.ID) error
	// MaxStreamsPerNode bounds concurrent visitor streams per node (10000).
	MaxStreamsPerNode int64
	// BytesPerSecond bounds each node's traffic, both directions summed; 0
	// is unlimited.
	BytesPerSecond float64
	// HandshakesPerSecond and HandshakeBurst bound new tunnels (100, 200),
	// so a restart storm cannot melt the supernode.
	HandshakesPerSecond float64
	HandshakeBurst      int
	// OnUp is called (on its own goroutine) with each new tunnel's node
	// id and address, so a supernode can remember whom to Wake after a
	// restart.
	OnUp   func(id identity.ID, addr net.Addr)
	Logger *slog.Logger
	// Ports maps public ports to node services (ports.go); Ports.Min 0:
	// none.
	Ports PortConfig
	// DataConnsPerNode bounds the idle data connections (dataconn.go) a
	// node may hold here (16); negative: data connections are refused.
	DataConnsPerNode int
	// DataServices are the services whose visitors may ride data
	// connections: only services whose visitor bytes are TLS end to end
	// (default: "https", the SNI gateway's passthrough).
	DataServices []string
}

// wakeMessage is what a restarted supernode sends to the nodes it served
// before. Its first byte has the QUIC fixed bit clear, so quic-go hands it
// to the node's non-QUIC reader. It carries no authority: the node only
// probes its tunnel, and only a stateless reset from the supernode's key
// (or the idle timeout) ends it.
var wakeMessage = []byte("\x00pc2-tunnel-wake/1")

// Server accepts node tunnels and opens visitor streams on them.
type Server struct {
	cfg      ServerConfig
	kp       *identity.KeyPair
	log      *slog.Logger
	hsLimit  *bucket
	mu       sync.Mutex
	tunnels  map[identity.ID]*tunnelConn // each node's current tunnel
	live     map[*tunnelConn]struct{}    // current and draining tunnels
	wg       sync.WaitGroup
	Accepted atomic.Int64 // tunnels accepted since start
	Refused  atomic.Int64 // handshakes refused by the rate limit
	// Data connections (dataconn.go): accepted into a pool, refused,
	// carrying a visitor, found closed when taken.
	DataConns, DataRefused, DataUsed, DataStale atomic.Int64
	tr                                          *quic.Transport
	ln                                          *quic.Listener
	tcpLn                                       net.Listener // nil: no TCP fallback endpoint
	closed                                      bool         // under mu
	// live tunnels by transport (current and draining)
	quicTunnels, tcpTunnels atomic.Int64
	closeOnce               sync.Once
	ports                   *portMap // nil: no port mapping
}

type tunnelConn struct {
	id   identity.ID
	sess session
	// conn is the QUIC connection of a QUIC tunnel, nil on TCP: mapped
	// ports' control streams and UDP datagrams (ports.go) need QUIC.
	conn    *quic.Conn
	streams atomic.Int64
	rate    *bucket   // nil: unlimited
	data    *dataPool // nil: no data connections
	// draining: a newer tunnel of the same node took over; this one
	// ends when its last visitor stream closes.
	draining atomic.Bool
}

// streamDone is called when one of t's visitor streams closes.
func (t *tunnelConn) streamDone() {
	if t.streams.Add(-1) == 0 && t.draining.Load() {
		t.sess.Close("replaced by a newer tunnel")
	}
}

// drain hands t's node over to a newer tunnel: new visitors go to the new
// one, t's open streams finish, then t closes.
func (t *tunnelConn) drain() {
	t.draining.Store(true)
	if t.streams.Load() == 0 {
		t.sess.Close("replaced by a newer tunnel")
	}
}

// NewServer returns a server for kp; call Serve to run it.
func NewServer(kp *identity.KeyPair, cfg ServerConfig) *Server {
	if cfg.MaxStreamsPerNode <= 0 {
		cfg.MaxStreamsPerNode = 10000
	}
	if cfg.HandshakesPerSecond <= 0 {
		cfg.HandshakesPerSecond = 100
	}
	if cfg.HandshakeBurst <= 0 {
		cfg.HandshakeBurst = 200
	}
	if cfg.DataConnsPerNode == 0 {
		cfg.DataConnsPerNode = 16
	}
	if cfg.DataServices == nil {
		cfg.DataServices = []string{"https"}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg: cfg, kp: kp, log: log,
		hsLimit: newBucket(cfg.HandshakesPerSecond, float64(cfg.HandshakeBurst)),
		tunnels: map[identity.ID]*tunnelConn{},
		live:    map[*tunnelConn]struct{}{},
	}
}

// Listen binds the UDP socket and starts accepting tunnels. Close stops.
func (s *Server) Listen(addr string) (net.Addr, error) {
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel listen %s: %w", addr, err)
	}
	tlsConf, err := s.tlsConfig()
	if err != nil {
		udp.Close()
		return nil, err
	}
	if s.cfg.Ports.Min != 0 {
		if s.ports, err = newPortMap(s, s.cfg.Ports); err != nil {
			udp.Close()
			return nil, err
		}
	}
	s.tr = &quic.Transport{Conn: udp, StatelessResetKey: quicid.StatelessResetKey(s.kp)}
	qc := quicid.Config(0, Idle) // nodes open no streams to the server
	qc.MaxIncomingStreams = -1
	if s.ports != nil {
		qc.MaxIncomingStreams = 1 // one control stream at a time (ports.go)
	}
	qc.EnableDatagrams = true // wake probes from nodes; never read
	ln, err := s.tr.Listen(tlsConf, qc)
	if err != nil {
		s.tr.Close()
		return nil, fmt.Errorf("tunnel listen: %w", err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop()
	return udp.LocalAddr(), nil
}

// tlsConfig is the TLS configuration of both transports: node keys,
// admission, and the handshake rate limit.
func (s *Server) tlsConfig() (*tls.Config, error) {
	tlsConf, err := quicid.ServerConfig(s.kp, ALPN, s.admit)
	if err != nil {
		return nil, err
	}
	tlsConf.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		// Checked on the ClientHello, before any signature is computed.
		if !s.hsLimit.take(1) {
			s.Refused.Add(1)
			return nil, ErrHandshakeCap
		}
		return nil, nil
	}
	return tlsConf, nil
}

func (s *Server) admit(id identity.ID) error {
	if s.cfg.Admit == nil {
		return nil
	}
	if err := s.cfg.Admit(id); err != nil {
		s.log.Info("tunnel refused", "node", id, "err", err)
		return fmt.Errorf("%w: %w", ErrNotAdmitted, err)
	}
	return nil
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, id, err := quicid.Accept(context.Background(), s.ln)
		if err != nil {
			return
		}
		// Admission is settled: tell the node (a TLS 1.3 client finishes
		// its handshake before the server has checked its certificate).
		if err := sendWelcome(conn); err != nil {
			conn.CloseWithError(1, "welcome failed")
			continue
		}
		s.register(id, quicSession{conn})
	}
}

// register makes sess node id's tunnel for new visitor streams; a tunnel
// the node held before drains.
func (s *Server) register(id identity.ID, sess session) {
	t := &tunnelConn{id: id, sess: sess}
	if q, ok := sess.(quicSession); ok {
		t.conn = q.c
	}
	if s.cfg.BytesPerSecond > 0 {
		t.rate = newBucket(s.cfg.BytesPerSecond, max(s.cfg.BytesPerSecond, 256<<10))
	}
	if s.cfg.DataConnsPerNode > 0 && t.rate == nil {
		if keys, err := dataKeysOf(sess); err == nil {
			t.data = &dataPool{keys: keys, max: s.cfg.DataConnsPerNode}
		} else {
			s.log.Warn("tunnel: no data connections", "node", id, "err", err)
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sess.Close("supernode stopping")
		return
	}
	old := s.tunnels[id]
	s.tunnels[id] = t
	s.live[t] = struct{}{}
	s.mu.Unlock()
	count := s.transportCount(sess.Transport())
	count.Add(1)
	if old != nil {
		old.drain()
	}
	s.Accepted.Add(1)
	s.log.Info("tunnel up", "node", id, "from", sess.RemoteAddr(), "transport", sess.Transport())
	if s.cfg.OnUp != nil {
		go s.cfg.OnUp(id, sess.RemoteAddr())
	}
	if s.ports != nil && t.conn != nil {
		s.wg.Add(1)
		go s.serveControl(t)
	}
	// AfterFunc rather than a goroutine: an idle tunnel holds no stack of
	// ours.
	s.wg.Add(1)
	context.AfterFunc(sess.Context(), func() {
		defer s.wg.Done()
		s.mu.Lock()
		current := s.tunnels[id] == t
		if current {
			delete(s.tunnels, id)
		}
		delete(s.live, t)
		s.mu.Unlock()
		count.Add(-1)
		if t.data != nil {
			t.data.close()
		}
		if current && s.ports != nil {
			s.ports.detach(id) // its ports are held for it
		}
		s.log.Info("tunnel down", "node", id, "transport", sess.Transport(), "err", context.Cause(sess.Context()))
	})
}

// Wake tells the nodes at addrs that this supernode is back, so they probe
// their tunnel now instead of at their next keep-alive: a node whose
// tunnel died with the previous process gets a stateless reset and
// reconnects at once. Call it after Listen.
func (s *Server) Wake(addrs []netip.AddrPort) {
	for _, a := range addrs {
		s.tr.WriteTo(wakeMessage, net.UDPAddrFromAddrPort(a))
	}
}

// Has reports whether node id holds a tunnel here.
func (s *Server) Has(id identity.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.tunnels[id]
	return ok
}

// LenTransport returns the number of live tunnels (current and draining)
// on transport (TransportQUIC or TransportTCP).
func (s *Server) LenTransport(transport string) int {
	return int(s.transportCount(transport).Load())
}

func (s *Server) transportCount(transport string) *atomic.Int64 {
	if transport == TransportTCP {
		return &s.tcpTunnels
	}
	return &s.quicTunnels
}

// Len returns the number of tunnels.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tunnels)
}

// Dial opens a visitor stream to service on node id's tunnel. The returned
// conn's CloseWrite ends the visitor's direction.
func (s *Server) Dial(ctx context.Context, id identity.ID, service string, visitor net.Addr) (net.Conn, error) {
	s.mu.Lock()
	t := s.tunnels[id]
	s.mu.Unlock()
	if t == nil {
		return nil, ErrNoTunnel
	}
	if t.streams.Add(1) > s.cfg.MaxStreamsPerNode {
		t.streamDone()
		return nil, ErrStreamQuota
	}
	h := Header{Service: service}
	if a, ok := visitor.(*net.TCPAddr); ok {
		ap := a.AddrPort()
		h.Visitor = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if t.data != nil && slices.Contains(s.cfg.DataServices, service) {
		if c := s.dialData(t, h); c != nil {
			return c, nil
		}
	}
	var buf [MaxHeaderLen]byte
	hdr, err := h.AppendBinary(buf[:0])
	if err != nil {
		t.streamDone()
		return nil, err
	}
	st, err := t.sess.OpenStream(ctx)
	if err != nil {
		t.streamDone()
		return nil, fmt.Errorf("tunnel: open stream: %w", err)
	}
	if _, err := st.Write(hdr); err != nil {
		st.Abort()
		t.streamDone()
		return nil, fmt.Errorf("tunnel: write header: %w", err)
	}
	c := newStreamConn(st, t.sess, t.rate)
	c.onClose = t.streamDone
	return c, nil
}

// Close closes every tunnel and the socket and waits for the goroutines.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.ln != nil {
			s.ln.Close()
		}
		s.mu.Lock()
		s.closed = true
		if s.tcpLn != nil {
			s.tcpLn.Close()
		}
		for t := range s.live {
			t.sess.Close("supernode stopping")
		}
		s.mu.Unlock()
		if s.tr != nil {
			s.tr.Close()
			s.tr.Conn.Close() // the transport does not close a socket it was given
		}
		if s.ports != nil {
			s.ports.close()
		}
	})
	s.wg.Wait()
	return nil
}

// welcome is the one byte the supernode sends on a uni-stream once it has
// admitted a node: the protocol version.
const welcome = Version

func sendWelcome(conn *quic.Conn) error {
	st, err := conn.OpenUniStream()
	if err != nil {
		return err
	}
	if _, err := st.Write([]byte{welcome}); err != nil {
		return err
	}
	return st.Close()
}
