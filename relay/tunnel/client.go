package tunnel

import (
	"context"
	"crypto/tls"
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
	"github.com/elacity/pc2/gateway/proxyproto"
	"github.com/elacity/pc2/transport/quicid"
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
	Services    map[string]Local
	// MaxStreams bounds concurrent visitor streams (10000).
	MaxStreams int64
	// Backoff: the first retry waits up to BackoffMin (250 ms), each
	// failure doubles the cap up to BackoffMax (30 s); waits are drawn
	// uniformly below the cap (full jitter).
	BackoffMin, BackoffMax time.Duration
	DialTimeout            time.Duration // 5 s, for local services
	LocalUDP               string        // local UDP address to bind (":0")
	Logger                 *slog.Logger
}

// Client keeps a node's tunnel to one supernode up, forever, and serves
// the visitor streams that arrive on it.
type Client struct {
	cfg       ClientConfig
	kp        *identity.KeyPair
	log       *slog.Logger
	up        atomic.Bool
	Connects  atomic.Int64 // successful tunnel handshakes
	Attempts  atomic.Int64 // tunnel dials, successful or not
	wake      chan struct{}
	conn      atomic.Pointer[quic.Conn] // the latest tunnel
	mu        sync.Mutex
	cancel    context.CancelFunc
	done      chan struct{}
	streamsWG sync.WaitGroup
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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, kp: kp, log: log, wake: make(chan struct{}, 1)}
}

// Up reports whether the tunnel is connected.
func (c *Client) Up() bool { return c.up.Load() }

// Start runs the reconnect loop until Close.
func (c *Client) Start() error {
	tlsConf, err := quicid.ClientConfig(c.kp, ALPN, c.cfg.SupernodeID)
	if err != nil {
		return err
	}
	udp, err := net.ListenPacket("udp", c.cfg.LocalUDP)
	if err != nil {
		return fmt.Errorf("tunnel client socket: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		defer udp.Close()
		defer tr.Close()
		go c.readWakes(ctx, tr)
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
		if err := c.connectOnce(ctx, tr, tlsConf, qc); err != nil && ctx.Err() == nil {
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

// readWakes passes wake messages from the supernode's address to the
// loop, at most one per 100 ms.
func (c *Client) readWakes(ctx context.Context, tr *quic.Transport) {
	buf := make([]byte, 64)
	var last time.Time
	for {
		n, from, err := tr.ReadNonQUICPacket(ctx, buf)
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

// connectOnce dials, then serves streams until the connection ends.
func (c *Client) connectOnce(ctx context.Context, tr *quic.Transport, tlsConf *tls.Config, qc *quic.Config) error {
	addr, err := net.ResolveUDPAddr("udp", c.cfg.Supernode)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", c.cfg.Supernode, err)
	}
	c.Attempts.Add(1)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := tr.Dial(dctx, addr, tlsConf, qc)
	cancel()
	if err != nil {
		return fmt.Errorf("dial %s: %w", c.cfg.Supernode, err)
	}
	if err := awaitWelcome(ctx, conn); err != nil {
		conn.CloseWithError(0, "")
		return fmt.Errorf("not admitted by %s: %w", c.cfg.Supernode, err)
	}
	c.Connects.Add(1)
	c.conn.Store(conn)
	c.up.Store(true)
	c.log.Info("tunnel up", "supernode", c.cfg.Supernode)
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			conn.CloseWithError(0, "")
			return err
		}
		c.streamsWG.Add(1)
		go func() {
			defer c.streamsWG.Done()
			c.serveStream(ctx, st)
		}()
	}
}

// serveStream connects one visitor stream to its local service.
func (c *Client) serveStream(ctx context.Context, st *quic.Stream) {
	abort := func() {
		st.CancelRead(1)
		st.CancelWrite(1)
	}
	_ = st.SetReadDeadline(time.Now().Add(c.cfg.DialTimeout))
	h, err := ReadHeader(st)
	if err != nil {
		c.log.Debug("tunnel: bad stream header", "err", err)
		abort()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	local, ok := c.cfg.Services[h.Service]
	if !ok {
		c.log.Debug("tunnel: unknown service", "service", h.Service)
		abort()
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
		abort()
		return
	}
	stop := context.AfterFunc(ctx, func() { lc.Close(); abort() })
	defer stop()
	if local.ProxyProtocol {
		if err := writeProxyHeader(lc, h.Visitor); err != nil {
			lc.Close()
			abort()
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

// relay copies both ways; QUIC stream flow control and TCP windows are
// the backpressure. Each direction's end is passed on as a half-close.
// Both copies take a pooled buffer only while bytes are queued (see
// copyFromStream, copyFromTCP): io.Copy would allocate 32 KiB per
// direction per visitor and hold it for the visitor's whole life.
func relay(lc net.Conn, st *quic.Stream) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := copyToStream(st, lc); err != nil {
			st.CancelWrite(1)
			return
		}
		st.Close()
	}()
	_, err := copyFromStream(lc, st)
	if err != nil {
		st.CancelRead(1)
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
