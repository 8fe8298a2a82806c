package tunnel

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

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/proxyproto"
	"github.com/elacity/pc2/transport/quicid"
	"github.com/elacity/pc2/transport/udpmux"
)

// Local is one local service a node exposes through its tunnel.
type Local struct {
	Addr string // TCP host:port, e.g. 127.0.0.1:4200
	// ProxyProtocol sends a PROXY v2 header with the visitor's address
	// before the visitor's bytes.
	ProxyProtocol bool
}

// ClientConfig configures a node's tunnel to one supernode.
type ClientConfig struct {
	Supernode   string      // host:port of the supernode's UDP endpoint
	SupernodeID identity.ID // the supernode's node id, verified in the handshake
	// SupernodeTCP is the supernode's TCP fallback endpoint; empty: the
	// same host:port as Supernode.
	SupernodeTCP string
	// Transport is TransportQUIC, TransportTCP, or "auto" (also ""):
	// QUIC first; TCP when QUIC does not connect within QUICWait; back to
	// QUIC when a background retry (every UpgradeEvery to twice that)
	// connects, new visitor streams going to the new tunnel while the old
	// one's finish.
	Transport    string
	QUICWait     time.Duration // 1.5 s
	UpgradeEvery time.Duration // 30 s
	Services     map[string]Local
	// MaxStreams bounds concurrent visitor streams (10000).
	MaxStreams int64
	// Backoff: the first retry waits up to BackoffMin (250 ms), each
	// failure doubles the cap up to BackoffMax (30 s); waits are drawn
	// uniformly below the cap (full jitter).
	BackoffMin, BackoffMax time.Duration
	DialTimeout            time.Duration // 5 s, for local services
	LocalUDP               string        // local UDP address to bind (":0")
	Logger                 *slog.Logger
	// Shared, if set, is the node's shared UDP socket: the tunnel dials
	// from it (so it uses the NAT mapping the node discovered and maps)
	// instead of binding LocalUDP, and takes its wake messages from it.
	Shared *udpmux.Mux
	// Ports asks the supernode for public ports for local services
	// (ports_client.go); MaxUDPFlows (4096) and UDPIdle (60 s) bound the
	// UDP flows, timed by Clock (nil: the system clock).
	Ports       []PortSpec
	MaxUDPFlows int
	UDPIdle     time.Duration
	Clock       clock.Clock
	// DataConns is how many idle data connections (dataconn.go) the node
	// keeps open to SupernodeTCP for TLS passthrough visitors, which then
	// bypass the tunnel's streams; 0: none, every visitor rides the tunnel.
	DataConns int
}

// Client keeps a node's tunnel to one supernode up, forever, and serves
// the visitor streams that arrive on it.
type Client struct {
	cfg      ClientConfig
	kp       *identity.KeyPair
	log      *slog.Logger
	up       atomic.Bool
	Connects atomic.Int64 // successful tunnel handshakes
	Attempts atomic.Int64 // tunnel dials, successful or not
	// DataVisitors counts visitors served on data connections,
	// DataFailures data connections that failed before a visitor came.
	DataVisitors, DataFailures atomic.Int64
	wake                       chan struct{}
	conn                       atomic.Pointer[quic.Conn] // the latest tunnel, when on QUIC
	transport                  atomic.Value              // string: the current tunnel's transport
	streams                    atomic.Int64              // visitor streams being served
	mu                         sync.Mutex
	cancel                     context.CancelFunc
	done                       chan struct{}
	streamsWG                  sync.WaitGroup
	ports                      *clientPorts // nil: no mapped ports
}

// NewClient returns a client; Start runs it.
func NewClient(kp *identity.KeyPair, cfg ClientConfig) *Client {
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 10000
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 250 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.LocalUDP == "" {
		cfg.LocalUDP = ":0"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.SupernodeTCP == "" {
		cfg.SupernodeTCP = cfg.Supernode
	}
	if cfg.Transport == "" {
		cfg.Transport = "auto"
	}
	if cfg.QUICWait <= 0 {
		cfg.QUICWait = 1500 * time.Millisecond
	}
	if cfg.UpgradeEvery <= 0 {
		cfg.UpgradeEvery = 30 * time.Second
	}
	if cfg.MaxUDPFlows <= 0 {
		cfg.MaxUDPFlows = 4096
	}
	if cfg.UDPIdle <= 0 {
		cfg.UDPIdle = 60 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, kp: kp, log: log, wake: make(chan struct{}, 1)}
	if len(cfg.Ports) > 0 {
		c.ports = newClientPorts(c)
	}
	return c
}

// Up reports whether the tunnel is connected.
func (c *Client) Up() bool { return c.up.Load() }

// Transport returns the current tunnel's transport, TransportQUIC or
// TransportTCP, or "" while down.
func (c *Client) Transport() string {
	if !c.up.Load() {
		return ""
	}
	t, _ := c.transport.Load().(string)
	return t
}

// Start runs the reconnect loop until Close.
func (c *Client) Start() error {
	tlsConf, err := quicid.ClientConfig(c.kp, ALPN, c.cfg.SupernodeID)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if m := c.cfg.Shared; m != nil {
		// Several tunnels may share the socket: each takes only the wake
		// messages of its own supernode (resolved once here; if that
		// fails, it takes any and readWakes filters).
		var sn netip.AddrPort
		if ua, err := net.ResolveUDPAddr("udp", c.cfg.Supernode); err == nil {
			sn = netip.AddrPortFrom(ua.AddrPort().Addr().Unmap(), ua.AddrPort().Port())
		}
		wakes := make(chan net.Addr, 1)
		remove := m.Handle(func(p []byte) bool { return string(p) == string(wakeMessage) }, func(_ []byte, from netip.AddrPort) bool {
			if sn.IsValid() && from != sn {
				return false
			}
			select {
			case wakes <- net.UDPAddrFromAddrPort(from):
			default: // one pending wake is enough
			}
			return true
		})
		read := func(ctx context.Context, b []byte) (int, net.Addr, error) {
			select {
			case from := <-wakes:
				return copy(b, wakeMessage), from, nil
			case <-ctx.Done():
				return 0, nil, ctx.Err()
			}
		}
		c.cancel = cancel
		c.done = make(chan struct{})
		go func() {
			defer close(c.done)
			defer remove()
			go c.readWakes(ctx, read)
			c.loop(ctx, m.Transport(), tlsConf)
		}()
		return nil
	}
	udp, err := net.ListenPacket("udp", c.cfg.LocalUDP)
	if err != nil {
		cancel()
		return fmt.Errorf("tunnel client socket: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	c.cancel = cancel
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		defer udp.Close()
		defer tr.Close()
		go c.readWakes(ctx, tr.ReadNonQUICPacket)
		c.loop(ctx, tr, tlsConf)
	}()
	return nil
}

// Close stops the client and waits for its streams to end.
func (c *Client) Close() error {
	if c.cancel == nil {
		return nil
	}
	c.cancel()
	<-c.done
	c.streamsWG.Wait()
	return nil
}

func (c *Client) loop(ctx context.Context, tr *quic.Transport, tlsConf *tls.Config) {
	qc := quicid.Config(c.cfg.MaxStreams, Idle)
	qc.KeepAlivePeriod = Idle / 2
	qc.EnableDatagrams = true
	qc.MaxIncomingUniStreams = 1 // the welcome
	failures := 0
	for {
		if err := c.runOnce(ctx, tr, tlsConf, qc); err != nil && ctx.Err() == nil {
			c.log.Info("tunnel down", "supernode", c.cfg.Supernode, "err", err)
		}
		if ctx.Err() != nil {
			return
		}
		if c.up.Load() {
			failures = 0
		}
		c.up.Store(false)
		wait := Backoff(failures, c.cfg.BackoffMin, c.cfg.BackoffMax)
		failures++
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.wake: // the supernode is back: retry now
			t.Stop()
		}
	}
}

// probe is the wake probe's payload.
var probe [64]byte

// errRefused marks a QUIC tunnel that completed its handshake and was then
// refused: the supernode is reachable over UDP.
var errRefused = errors.New("refused after handshake")

// readWakes passes wake messages from the supernode's address to the
// loop, at most one per 100 ms.
func (c *Client) readWakes(ctx context.Context, read func(context.Context, []byte) (int, net.Addr, error)) {
	buf := make([]byte, 64)
	var last time.Time
	for {
		n, from, err := read(ctx, buf)
		if err != nil {
			return
		}
		if n != len(wakeMessage) || string(buf[:n]) != string(wakeMessage) || time.Since(last) < 100*time.Millisecond {
			continue
		}
		want, err := net.ResolveUDPAddr("udp", c.cfg.Supernode)
		ua, ok := from.(*net.UDPAddr)
		if err != nil || !ok || ua.Port != want.Port || !ua.IP.Equal(want.IP) {
			continue
		}
		last = time.Now()
		if c.up.Load() && c.conn.Load() == nil {
			continue // on TCP: a dead TCP tunnel shows itself
		}
		if conn := c.conn.Load(); conn != nil && c.up.Load() {
			// One datagram: a live supernode ignores it, a restarted one
			// answers with a stateless reset, ending the tunnel now. It
			// must be larger than quic-go's MinStatelessResetSize (42), or
			// no reset is sent.
			err := conn.SendDatagram(probe[:])
			c.log.Debug("tunnel: woken; probing the tunnel", "err", err)
			continue
		}
		c.log.Debug("tunnel: woken while down; retrying now")
		select { // down: cut the backoff short
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// Backoff is the full-jitter wait before retry number failures (0 for the
// first): uniform in [0, min(max, lo·2^failures)).
func Backoff(failures int, lo, hi time.Duration) time.Duration {
	ceil := hi
	if failures < 30 {
		ceil = min(hi, lo<<failures)
	}
	return rand.N(ceil) + 1
}

// runOnce connects, then serves visitor streams until the tunnel ends. On
// TCP in auto mode it retries QUIC now and then and moves over when QUIC
// works: the new tunnel gets the new visitor streams, the old one serves
// its open streams until the supernode closes it.
func (c *Client) runOnce(ctx context.Context, tr *quic.Transport, tlsConf *tls.Config, qc *quic.Config) error {
	c.Attempts.Add(1)
	sess, err := c.connect(ctx, tr, tlsConf, qc)
	if err != nil {
		return err
	}
	for {
		c.Connects.Add(1)
		if q, ok := sess.(quicSession); ok {
			c.conn.Store(q.c)
		} else {
			c.conn.Store(nil)
		}
		c.transport.Store(sess.Transport())
		c.up.Store(true)
		c.log.Info("tunnel up", "supernode", c.cfg.Supernode, "transport", sess.Transport())
		done := make(chan error, 1)
		c.streamsWG.Add(1)
		go func() {
			defer c.streamsWG.Done()
			done <- c.serveSession(ctx, sess)
		}()
		if sess.Transport() != TransportTCP || c.cfg.Transport != "auto" {
			return <-done
		}
		next, err := c.awaitQUIC(ctx, tr, tlsConf, qc, done)
		if next == nil {
			return err
		}
		c.log.Info("tunnel: QUIC works again; moving over", "supernode", c.cfg.Supernode)
		sess = next
	}
}

// connect opens a tunnel by the configured transport.
func (c *Client) connect(ctx context.Context, tr *quic.Transport, tlsConf *tls.Config, qc *quic.Config) (session, error) {
	switch c.cfg.Transport {
	case TransportQUIC:
		return c.dialQUIC(ctx, tr, tlsConf, qc, 5*time.Second)
	case TransportTCP:
		return dialTCP(ctx, c.cfg.SupernodeTCP, tlsConf)
	}
	sess, qerr := c.dialQUIC(ctx, tr, tlsConf, qc, c.cfg.QUICWait)
	if qerr == nil {
		return sess, nil
	}
	// A refusal over a completed handshake proves QUIC works: the
	// supernode said no (e.g. the name is not registered yet). TCP would
	// hear the same policy; falling back would only pin the tunnel to TCP
	// (no UDP ports) until the next upgrade try. Retry QUIC after backoff.
	if ctx.Err() != nil || errors.Is(qerr, errRefused) {
		return nil, qerr
	}
	sess, terr := dialTCP(ctx, c.cfg.SupernodeTCP, tlsConf)
	if terr != nil {
		return nil, fmt.Errorf("quic: %w; tcp: %w", qerr, terr)
	}
	c.log.Info("tunnel: QUIC did not connect; using TCP", "supernode", c.cfg.SupernodeTCP, "quicErr", qerr)
	return sess, nil
}

// awaitQUIC retries QUIC while the TCP tunnel serves (done reports its
// end) and returns the QUIC tunnel once one is admitted; nil and the TCP
// tunnel's end otherwise.
func (c *Client) awaitQUIC(ctx context.Context, tr *quic.Transport, tlsConf *tls.Config, qc *quic.Config, done <-chan error) (session, error) {
	for {
		t := time.NewTimer(c.cfg.UpgradeEvery + rand.N(c.cfg.UpgradeEvery))
		select {
		case err := <-done:
			t.Stop()
			return nil, err
		case <-t.C:
		}
		sess, err := c.dialQUIC(ctx, tr, tlsConf, qc, 5*time.Second)
		if err == nil {
			return sess, nil
		}
		c.log.Debug("tunnel: QUIC still does not connect", "err", err)
	}
}

// dialQUIC dials the supernode's QUIC endpoint, giving the handshake wait,
// and waits for the welcome.
func (c *Client) dialQUIC(ctx context.Context, tr *quic.Transport, tlsConf *tls.Config, qc *quic.Config, wait time.Duration) (session, error) {
	addr, err := net.ResolveUDPAddr("udp", c.cfg.Supernode)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", c.cfg.Supernode, err)
	}
	dctx, cancel := context.WithTimeout(ctx, wait)
	conn, err := tr.Dial(dctx, addr, tlsConf, qc)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", c.cfg.Supernode, err)
	}
	if err := awaitWelcome(ctx, conn); err != nil {
		conn.CloseWithError(0, "")
		return nil, fmt.Errorf("not admitted by %s: %w: %w", c.cfg.Supernode, errRefused, err)
	}
	return quicSession{conn}, nil
}

// serveSession accepts visitor streams until the session ends. On QUIC it
// also asks for the node's mapped ports (ports_client.go): their control
// stream and UDP datagrams need QUIC, so over the TCP fallback the node's
// leases are held by the supernode until QUIC is back or they expire.
func (c *Client) serveSession(ctx context.Context, sess session) error {
	defer sess.Close("")
	if q, ok := sess.(quicSession); ok {
		c.streamsWG.Add(1)
		go func() {
			defer c.streamsWG.Done()
			closeWhenSilent(q.c, Idle-2*time.Second, time.Second)
		}()
	}
	if c.cfg.DataConns > 0 {
		c.startDataConns(ctx, sess)
	}
	if q, ok := sess.(quicSession); ok && c.ports != nil {
		c.streamsWG.Add(1)
		go func() {
			defer c.streamsWG.Done()
			c.ports.attach(ctx, q.c)
		}()
	}
	for {
		st, err := sess.AcceptStream(ctx)
		if err != nil {
			return err
		}
		if c.streams.Add(1) > c.cfg.MaxStreams {
			c.streams.Add(-1)
			st.Abort()
			continue
		}
		c.streamsWG.Add(1)
		go func() {
			defer c.streamsWG.Done()
			defer c.streams.Add(-1)
			c.serveStream(ctx, st)
		}()
	}
}

// closeWhenSilent closes conn when it has received no packet for limit,
// checking every tick. Why: QUIC restarts the idle timer when it sends the
// first ack-eliciting packet after the last one received (RFC 9000
// §10.1), so the node, which sends the keep-alives, would notice a silent
// supernode only after the keep-alive period plus the idle timeout
// (measured 22.4 s). The supernode answers every keep-alive (every Idle/2)
// with an ACK, so a live tunnel is never silent for limit; a dead one is
// closed within limit+tick of its last packet.
func closeWhenSilent(conn *quic.Conn, limit, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	last := conn.ConnectionStats().PacketsReceived
	heard := time.Now()
	for {
		select {
		case <-conn.Context().Done():
			return
		case now := <-t.C:
			if n := conn.ConnectionStats().PacketsReceived; n != last {
				last, heard = n, now
				continue
			}
			if now.Sub(heard) >= limit {
				conn.CloseWithError(0, "supernode silent")
				return
			}
		}
	}
}

// serveStream connects one visitor stream to its local service.
func (c *Client) serveStream(ctx context.Context, st stream) {
	_ = st.SetReadDeadline(time.Now().Add(c.cfg.DialTimeout))
	h, err := ReadHeader(st)
	if err != nil {
		c.log.Debug("tunnel: bad stream header", "err", err)
		st.Abort()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	c.serveVisitor(ctx, st, h)
}

// serveVisitor connects a visitor whose header has been read to its local
// service (with a PROXY header if configured) and relays until both
// directions end.
func (c *Client) serveVisitor(ctx context.Context, st stream, h Header) {
	local, ok := c.cfg.Services[h.Service]
	if !ok {
		c.log.Debug("tunnel: unknown service", "service", h.Service)
		st.Abort()
		return
	}
	// No TCP keep-alive on the local leg: it costs three setsockopt calls
	// per visitor (a visible share of the connection-rate profile), and a
	// dead local service is found by the visitor's side ending the stream
	// (the gateway's idle timeout) instead.
	d := net.Dialer{Timeout: c.cfg.DialTimeout, KeepAlive: -1}
	lc, err := d.DialContext(ctx, "tcp", local.Addr)
	if err != nil {
		c.log.Warn("tunnel: local service unreachable", "service", h.Service, "addr", local.Addr, "err", err)
		st.Abort()
		return
	}
	stop := context.AfterFunc(ctx, func() { lc.Close(); st.Abort() })
	defer stop()
	if local.ProxyProtocol {
		if err := writeProxyHeader(lc, h.Visitor); err != nil {
			lc.Close()
			st.Abort()
			return
		}
	}
	relay(lc, st)
}

func writeProxyHeader(lc net.Conn, visitor netip.AddrPort) error {
	ph := proxyproto.Header{Command: proxyproto.Local}
	if a, ok := lc.RemoteAddr().(*net.TCPAddr); ok && visitor.IsValid() {
		dst := a.AddrPort()
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		if dst.Addr().Is4() == visitor.Addr().Is4() {
			ph = proxyproto.Header{Command: proxyproto.Proxy, Source: visitor, Destination: dst}
		}
	}
	var buf [128]byte
	b, err := ph.AppendBinary(buf[:0])
	if err != nil {
		return err
	}
	_, err = lc.Write(b)
	return err
}

// relay copies both ways; stream flow control and TCP windows are the
// backpressure. Each direction's end is passed on as a half-close. Both
// copies take a pooled buffer only while bytes are queued (see
// copyFromStream, copyFromTCP): io.Copy would allocate 32 KiB per
// direction per visitor and hold it for the visitor's whole life.
func relay(lc net.Conn, st stream) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := copyToStream(st, lc); err != nil {
			st.Abort()
			return
		}
		st.CloseWrite()
	}()
	var err error
	ds, isData := st.(dataStream)
	ltc, isTCP := lc.(*net.TCPConn)
	if isData && isTCP {
		_, err = copyTCP(ltc, ds.TCPConn)
	} else if p, ok := st.(peeker); ok {
		_, err = copyFromStream(lc, p)
	} else {
		_, err = copyPooled(lc, st)
	}
	if err != nil {
		st.Abort()
		lc.Close() // also ends the other direction
	} else if tc, ok := lc.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	wg.Wait()
	lc.Close()
}

// awaitWelcome waits for the supernode's admission byte.
func awaitWelcome(ctx context.Context, conn *quic.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := conn.AcceptUniStream(ctx)
	if err != nil {
		return err
	}
	var b [1]byte
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(st, b[:]); err != nil {
		return err
	}
	if b[0] != welcome {
		return fmt.Errorf("welcome version %d, want %d", b[0], welcome)
	}
	return nil
}
