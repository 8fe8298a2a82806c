// Package sniproxy is the supernode's TLS passthrough data path: it accepts
// TCP connections, reads the ClientHello (gateway/clienthello), asks a
// Router where the server name lives, dials it and then relays bytes both
// ways without ever holding the TLS keys, so each node's certificate and
// ACME stay end to end.
//
// Performance choices: the ClientHello buffer comes from a pool and goes
// back before relaying; the relay is a plain io.Copy between the two
// *net.TCPConn, which Go turns into splice(2) on Linux, so bytes never enter
// user space; idle connections are found by a per-connection timer that
// reads the kernel's TCP_INFO byte counters instead of wrapping the
// connections (a wrapper would silently disable splice).
//
// Memory: a connection still sending its ClientHello holds a goroutine and
// a pooled 16 KiB buffer (another 16 KiB only if the hello spans several
// records); once relaying it holds two goroutines and no user-space buffer.
// Both are bounded by Config.MaxConns and, per source IP, by
// Config.MaxPendingPerIP. Goroutines rather than gnet event loops because
// splice needs *net.TCPConn and gnet has neither splice nor backpressure;
// the idle-connection RSS is compared with HAProxy, nginx and sniproxy in
// bench/RESULTS.md.
package sniproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/elacity/pc2/gateway/clienthello"
	"github.com/elacity/pc2/gateway/proxyproto"
)

// Target says where to send a routed connection.
type Target struct {
	// Addr is the backend's TCP host:port.
	Addr string
	// ProxyProtocol sends a PROXY v2 header (client address, and the
	// server name as PP2_TYPE_AUTHORITY) before the ClientHello.
	ProxyProtocol bool
	// Dial, when set, opens the backend instead of Config.Dial, e.g. a
	// stream on a node's tunnel; client is the visitor's address. Any
	// net.Conn works; a CloseWrite method passes half-closes on.
	Dial func(ctx context.Context, client net.Addr) (net.Conn, error)
}

// Router maps a TLS server name (lowercase, validated) to a Target. It
// returns an error wrapping ErrUnknownName when nothing serves the name.
type Router interface {
	Route(ctx context.Context, serverName string) (Target, error)
}

// RouterFunc adapts a function to Router.
type RouterFunc func(ctx context.Context, serverName string) (Target, error)

// Route calls f.
func (f RouterFunc) Route(ctx context.Context, serverName string) (Target, error) {
	return f(ctx, serverName)
}

// ErrUnknownName is returned (wrapped) by a Router for names it does not
// serve; the client then gets a TLS unrecognized_name alert.
var ErrUnknownName = errors.New("sniproxy: unknown server name")

// Config tunes a Server. Zero values take the defaults shown.
type Config struct {
	Router Router // required

	HelloTimeout    time.Duration // 5 s: time allowed for the whole ClientHello
	DialTimeout     time.Duration // 5 s
	IdleTimeout     time.Duration // 10 min without a byte either way; <0 disables
	MaxConns        int           // 10000 connections at once; Accept waits beyond
	MaxPendingPerIP int           // 32 connections per source IP still sending their hello

	// Dial opens the backend connection; nil uses net.Dialer. Returning a
	// *net.TCPConn keeps the splice path.
	Dial    func(ctx context.Context, addr string) (net.Conn, error)
	Metrics *Metrics     // nil: no metrics
	Logger  *slog.Logger // nil: no logs
}

// Server is an SNI passthrough proxy. Create it with New and run Serve.
type Server struct {
	cfg     Config
	m       *Metrics
	log     *slog.Logger
	slots   chan struct{}
	mu      sync.Mutex
	pending map[netip.Addr]int
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Server, error) {
	if cfg.Router == nil {
		return nil, errors.New("sniproxy: config has no router")
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 5 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	if cfg.MaxPendingPerIP <= 0 {
		cfg.MaxPendingPerIP = 32
	}
	if cfg.Dial == nil {
		d := &net.Dialer{}
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:     cfg,
		m:       cfg.Metrics.orNop(),
		log:     log,
		slots:   make(chan struct{}, cfg.MaxConns),
		pending: make(map[netip.Addr]int),
	}, nil
}

// Serve accepts connections on ln until ctx is cancelled or ln fails. On
// cancellation it closes ln and every connection it is serving, waits for
// their goroutines and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var backoff time.Duration
	for {
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := ln.Accept()
		if err != nil {
			<-s.slots
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("sniproxy: accept: %w", err)
			}
			// EMFILE, ECONNABORTED and friends: back off and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("sniproxy: accept failed, retrying", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		wg.Add(1)
		go s.serveConn(ctx, c, func() {
			<-s.slots
			wg.Done()
		})
	}
}

func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (s *Server) enterPending(ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[ip] >= s.cfg.MaxPendingPerIP {
		return false
	}
	s.pending[ip]++
	return true
}

func (s *Server) leavePending(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[ip] <= 1 {
		delete(s.pending, ip)
		return
	}
	s.pending[ip]--
}

// serveConn takes one client connection from hello to relay. It returns
// once the relay goroutines own the connection, so that its stack, grown by
// parsing and dialing, is not kept for the connection's lifetime; done is
// called exactly once when the connection is finished.
func (s *Server) serveConn(ctx context.Context, c net.Conn, done func()) {
	m := s.m
	m.Accepted.Inc()
	m.Active.Inc()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	handedOff := false
	defer func() {
		if !handedOff {
			stop()
			c.Close()
			m.Active.Dec()
			done()
		}
	}()

	ip := remoteIP(c)
	if !s.enterPending(ip) {
		m.RejectedPerIP.Inc()
		return
	}
	m.Pending.Inc()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(s.cfg.HelloTimeout))
	h, err := clienthello.Read(c)
	s.leavePending(ip)
	m.Pending.Dec()
	if err != nil {
		s.helloFailed(c, err)
		return
	}
	defer func() {
		if h != nil {
			h.Release()
		}
	}()
	observeSince(m.HelloSeconds, start)
	_ = c.SetReadDeadline(time.Time{})

	name := h.ServerName()
	target, err := s.cfg.Router.Route(ctx, name)
	if err != nil {
		if errors.Is(err, ErrUnknownName) {
			m.RouteUnknown.Inc()
			s.log.Debug("sniproxy: unknown name", "name", name, "client", c.RemoteAddr())
			sendAlert(c, h.RecordVersion(), alertUnrecognizedName)
			return
		}
		m.RouteErrors.Inc()
		if errors.Is(err, ErrNodeOffline) { // a node that is away: not the gateway's fault
			s.log.Debug("sniproxy: node offline", "name", name, "client", c.RemoteAddr())
		} else {
			s.log.Warn("sniproxy: route failed", "name", name, "err", err)
		}
		sendAlert(c, h.RecordVersion(), alertInternalError)
		return
	}
	m.Routed.Inc()

	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	var backend net.Conn
	if target.Dial != nil {
		backend, err = target.Dial(dctx, c.RemoteAddr())
	} else {
		backend, err = s.cfg.Dial(dctx, target.Addr)
	}
	cancel()
	if err != nil {
		m.DialErrors.Inc()
		s.log.Warn("sniproxy: dial failed", "name", name, "target", target.Addr, "err", err)
		sendAlert(c, h.RecordVersion(), alertInternalError)
		return
	}
	stopB := context.AfterFunc(ctx, func() { backend.Close() })
	if err := s.writePreamble(backend, c, h, target, name); err != nil {
		stopB()
		backend.Close()
		m.DialErrors.Inc()
		s.log.Warn("sniproxy: backend write failed", "target", target.Addr, "err", err)
		return
	}
	m.BytesUp.Add(float64(len(h.Raw())))
	h.Release()
	h = nil
	handedOff = true
	s.startRelay(c, backend, func() {
		stop()
		stopB()
		m.Active.Dec()
		done()
	})
}

// writePreamble sends the optional PROXY header and the ClientHello bytes
// in one write.
func (s *Server) writePreamble(backend, client net.Conn, h *clienthello.Hello, t Target, name string) error {
	_ = backend.SetWriteDeadline(time.Now().Add(s.cfg.DialTimeout))
	defer backend.SetWriteDeadline(time.Time{})
	if !t.ProxyProtocol {
		_, err := backend.Write(h.Raw())
		return err
	}
	var hdrBuf [256]byte
	ph := proxyproto.ForConn(client)
	ph.Authority = name
	hdr, err := ph.AppendBinary(hdrBuf[:0])
	if err != nil {
		return fmt.Errorf("proxy header: %w", err)
	}
	bufs := net.Buffers{hdr, h.Raw()}
	_, err = bufs.WriteTo(backend)
	return err
}

// helloFailed counts a rejected ClientHello and answers with an alert where
// the client spoke TLS well enough to understand one.
func (s *Server) helloFailed(c net.Conn, err error) {
	m := s.m
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		m.HelloTimeout.Inc()
	case errors.Is(err, clienthello.ErrNotTLS):
		m.HelloNotTLS.Inc()
	case errors.Is(err, clienthello.ErrTooLarge):
		m.HelloTooLarge.Inc()
		sendAlert(c, 0, alertRecordOverflow)
	case errors.Is(err, clienthello.ErrTruncated):
		m.HelloTruncated.Inc()
	case errors.Is(err, clienthello.ErrMalformed):
		m.HelloMalformed.Inc()
		sendAlert(c, 0, alertDecodeError)
	case errors.Is(err, clienthello.ErrNoSNI), errors.Is(err, clienthello.ErrBadServerName):
		m.HelloNoName.Inc()
		sendAlert(c, 0, alertUnrecognizedName)
	default:
		m.HelloReadErrors.Inc()
	}
	s.log.Debug("sniproxy: bad clienthello", "client", c.RemoteAddr(), "err", err)
}

// TLS alert descriptions (RFC 8446 §6).
const (
	alertRecordOverflow   = 22
	alertDecodeError      = 50
	alertInternalError    = 80
	alertUnrecognizedName = 112
)

// sendAlert writes a fatal alert record, half-closes, and drains briefly so
// that closing does not turn into a RST that could destroy the alert before
// the client reads it.
func sendAlert(c net.Conn, version uint16, desc byte) {
	if version>>8 != 3 {
		version = 0x0301
	}
	rec := [7]byte{21, byte(version >> 8), byte(version), 0, 2, 2, desc}
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(rec[:]); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}
