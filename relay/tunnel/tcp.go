package tunnel

// The fallback transport: TLS 1.3 over TCP, for networks that block or
// throttle UDP. The TLS handshake is the QUIC one's (transport/quicid
// certificates bound to the Ed25519 node keys, ALPN pc2-tunnel/1, the same
// admission check and handshake rate limit); after it the supernode sends
// the one-byte welcome on the connection itself, and then both ends run
// github.com/hashicorp/yamux over it, one yamux stream per visitor, each
// starting with the same Header as a QUIC stream.
//
// Why yamux: measured against github.com/xtaci/smux over loopback TLS
// (BenchmarkMuxYamux, BenchmarkMuxSmux) it carries one stream at 0.55–0.65
// of a bare TLS connection, smux at about a third, and smux (protocol 2)
// stalled outright with 4 MiB stream buffers. Each yamux stream starts
// with a 256 KiB window that the receiver opens to tcpStreamWindow as soon
// as the reader consumes data, and allocates its buffer only when data
// arrives, so idle streams cost a small struct. What yamux lacks, and this
// transport therefore lacks against QUIC:
//   - no connection-level window: a node's tunnel can hold up to
//     tcpStreamWindow of unread data per stream whose reader is slower than
//     its writer (QUIC: 64 MiB per tunnel); the stream quota bounds it;
//   - no limit on streams the peer opens: a node opening one loses its
//     tunnel (nodes open none);
//   - no stream reset: Abort and Close end a stream with a FIN, so the peer
//     reads EOF where QUIC gives an error, and a peer that keeps writing to
//     a closed stream is stopped only by its window (and yamux's
//     StreamCloseTimeout, 5 minutes);
//   - its keep-alive pings run whether or not the tunnel is idle, so they
//     are off: the kernel's TCP keep-alive (probe after 10 s idle) and
//     TCP_USER_TIMEOUT (15 s, Linux) find a dead peer instead, on both
//     ends, with no goroutine of ours.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/elacity/pc2/gateway/connlimit"
	"github.com/elacity/pc2/transport/quicid"
)

// Stream windows of the TCP transport: the most unread data one stream may
// hold at the receiving end. The supernode's is smaller: it serves many
// nodes; a node may buffer more of what it receives. 1–4 MiB carry one
// stream at 0.6 of bare TLS on loopback, and 40–200 MB/s at 20–100 ms RTT.
const (
	tcpStreamWindowServer = 1 << 20
	tcpStreamWindowClient = 4 << 20
)

// tcpDeadAfter is how long a TCP tunnel may go without a packet from the
// peer: a keep-alive probe after 10 s of silence, a second 2 s later,
// dead 2 s after that; TCP_USER_TIMEOUT (setUserTimeout) also ends a
// connection whose sent data stays unacknowledged that long. It is below
// Idle because the kernel notices only at its next timer tick.
const tcpDeadAfter = 14 * time.Second

var tcpKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 2 * time.Second, Count: 2}

// maxPendingTCPHandshakes bounds TCP connections in their TLS handshake
// at once, maxPendingTCPPerSource those from one source (an IPv4 address
// or an IPv6 /64); more are closed at accept. Nodes behind one carrier
// NAT share a source, so the per-source bound is not tiny.
const (
	maxPendingTCPHandshakes = 1024
	maxPendingTCPPerSource  = 32
)

// tcpHandshakeTimeout bounds a TLS handshake plus the welcome.
const tcpHandshakeTimeout = 5 * time.Second

var errTCPSessionEnded = errors.New("tunnel: tcp session ended")

func muxConfig(window uint32) *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false // see the package comment of this file
	c.MaxStreamWindowSize = window
	c.LogOutput = io.Discard
	return c
}

// tcpSession is a tunnel on one TLS connection, streams by yamux.
type tcpSession struct {
	mux    *yamux.Session
	tls    *tls.Conn
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// newTCPSession starts yamux on an established, welcomed TLS connection.
// The supernode side (server) opens streams, the node side accepts them.
func newTCPSession(conn net.Conn, server bool) (*tcpSession, error) {
	var (
		m   *yamux.Session
		err error
	)
	ctx, cancel := context.WithCancelCause(context.Background())
	// yamux signals its end only on a channel; it also always closes the
	// connection, which ends the context here without a goroutine waiting
	// on the channel.
	cc := &coalescingConn{Conn: conn, onClose: func() { cancel(errTCPSessionEnded) }}
	if server {
		m, err = yamux.Server(cc, muxConfig(tcpStreamWindowServer))
	} else {
		m, err = yamux.Client(cc, muxConfig(tcpStreamWindowClient))
	}
	if err != nil {
		cancel(err)
		return nil, fmt.Errorf("tunnel: start multiplexer: %w", err)
	}
	s := &tcpSession{mux: m, ctx: ctx, cancel: cancel}
	s.tls, _ = conn.(*tls.Conn)
	if server {
		// Nodes open no streams (QUIC: MaxIncomingStreams -1). yamux has
		// no such limit, and its accept backlog also bounds our own
		// stream opens in flight, so a stream from the node ends the
		// tunnel instead; the goroutine ends with the session.
		go func() {
			if st, err := m.AcceptStreamWithContext(ctx); err == nil {
				st.Close()
				s.Close("the node opened a stream")
			}
		}()
	}
	return s, nil
}

func (s *tcpSession) OpenStream(ctx context.Context) (stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, err
	}
	return tcpStream{st}, nil
}

func (s *tcpSession) AcceptStream(ctx context.Context) (stream, error) {
	st, err := s.mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return tcpStream{st}, nil
}

func (s *tcpSession) Close(reason string) {
	s.cancel(fmt.Errorf("tunnel: tcp session closed: %s", reason))
	s.mux.Close()
}

func (s *tcpSession) Context() context.Context { return s.ctx }
func (s *tcpSession) LocalAddr() net.Addr      { return s.mux.LocalAddr() }
func (s *tcpSession) RemoteAddr() net.Addr     { return s.mux.RemoteAddr() }
func (s *tcpSession) Transport() string        { return TransportTCP }
func (s *tcpSession) exportKey(label string, n int) ([]byte, error) {
	if s.tls == nil {
		return nil, errors.New("tunnel: tcp session without TLS")
	}
	st := s.tls.ConnectionState()
	return st.ExportKeyingMaterial(label, nil, n)
}

// tcpStream is a yamux stream. yamux has no reset: Close, CloseWrite and
// Abort all send a FIN.
type tcpStream struct{ *yamux.Stream }

func (s tcpStream) CloseWrite() error { return s.Stream.Close() }
func (s tcpStream) Abort()            { s.Stream.Close() }

// coalescingConn merges each yamux data frame's 12-byte header with the
// frame's body into one write, so a frame becomes one TLS record and one
// system call instead of two. yamux's single send loop writes a data
// frame's header (type 0, non-zero length) and then its body; every other
// write passes through.
type coalescingConn struct {
	net.Conn
	hdr     [12]byte
	held    bool
	joined  []byte
	onClose func() // called at the first Close
	once    sync.Once
}

func (c *coalescingConn) Close() error {
	if c.onClose != nil {
		c.once.Do(c.onClose)
	}
	return c.Conn.Close()
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	if c.held {
		c.held = false
		c.joined = append(append(c.joined[:0], c.hdr[:]...), p...)
		n, err := c.Conn.Write(c.joined)
		if cap(c.joined) > 256<<10 {
			c.joined = nil // a large frame's buffer is not kept
		}
		return max(0, n-len(c.hdr)), err
	}
	if len(p) == len(c.hdr) && p[0] == 0 && p[1] == 0 && (p[8]|p[9]|p[10]|p[11]) != 0 {
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// prefixConn gives back bytes already read from its connection before
// reading on.
type prefixConn struct {
	net.Conn
	first []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(b, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// dialTCP connects to the supernode's TCP endpoint and waits for the
// welcome.
func dialTCP(ctx context.Context, addr string, tlsConf *tls.Config) (*tcpSession, error) {
	ctx, cancel := context.WithTimeout(ctx, tcpHandshakeTimeout)
	defer cancel()
	d := net.Dialer{KeepAliveConfig: tcpKeepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s: %w", addr, err)
	}
	setUserTimeout(raw, tcpDeadAfter)
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	tc := tls.Client(raw, tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls over tcp %s: %w", addr, err)
	}
	var b [1]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil {
		raw.Close()
		return nil, fmt.Errorf("not admitted by %s (tcp): %w", addr, err)
	}
	if b[0] != welcome {
		raw.Close()
		return nil, fmt.Errorf("welcome version %d, want %d", b[0], welcome)
	}
	raw.SetDeadline(time.Time{})
	return newTCPSession(tc, false)
}

// ListenTCP binds the TCP fallback endpoint and starts accepting tunnels
// on it: TLS 1.3 with the QUIC endpoint's authentication and limits.
func (s *Server) ListenTCP(addr string) (net.Addr, error) {
	tlsConf, err := s.tlsConfig()
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{KeepAliveConfig: tcpKeepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel listen tcp %s: %w", addr, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil, net.ErrClosed
	}
	s.tcpLn = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go s.acceptTCP(ln, tlsConf)
	return ln.Addr(), nil
}

func (s *Server) acceptTCP(ln net.Listener, tlsConf *tls.Config) {
	defer s.wg.Done()
	pending := make(chan struct{}, maxPendingTCPHandshakes)
	var mu sync.Mutex
	perSource := map[netip.Addr]int{}
	release := func(src netip.Addr) {
		mu.Lock()
		if perSource[src]--; perSource[src] <= 0 {
			delete(perSource, src)
		}
		mu.Unlock()
		<-pending
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("tunnel: tcp accept", "err", err)
			time.Sleep(50 * time.Millisecond) // descriptors exhausted: let some close
			continue
		}
		select {
		case pending <- struct{}{}:
		default:
			s.Refused.Add(1)
			c.Close()
			continue
		}
		src := connlimit.Source(c.RemoteAddr())
		mu.Lock()
		full := perSource[src] >= maxPendingTCPPerSource
		if !full {
			perSource[src]++
		}
		mu.Unlock()
		if full {
			<-pending
			s.Refused.Add(1)
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer release(src)
			s.handshakeTCP(c, tlsConf)
		}()
	}
}

// handshakeTCP authenticates and admits one node's TCP connection and
// registers it as the node's tunnel.
func (s *Server) handshakeTCP(c net.Conn, tlsConf *tls.Config) {
	setUserTimeout(c, tcpDeadAfter)
	c.SetDeadline(time.Now().Add(tcpHandshakeTimeout))
	// The first byte tells a TLS handshake (0x16) from a data connection
	// (dataconn.go).
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		c.Close()
		return
	}
	if first[0] == dataMagic[0] {
		if tcp, ok := c.(*net.TCPConn); ok && s.cfg.DataConnsPerNode > 0 {
			s.acceptData(tcp, first[0])
			return
		}
		s.DataRefused.Add(1)
		c.Close()
		return
	}
	tc := tls.Server(&prefixConn{Conn: c, first: first[:]}, tlsConf)
	if err := tc.Handshake(); err != nil {
		s.log.Debug("tunnel: tcp handshake", "from", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	id, err := quicid.PeerIDFromState(tc.ConnectionState())
	if err != nil {
		c.Close()
		return
	}
	if _, err := tc.Write([]byte{welcome}); err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	sess, err := newTCPSession(tc, true)
	if err != nil {
		c.Close()
		return
	}
	s.register(id, sess)
}
