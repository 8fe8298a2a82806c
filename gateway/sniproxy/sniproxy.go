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
	"sync/atomic"
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
// Route is called on an event loop that serves thousands of connections:
// it must answer from memory, without I/O.
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

	HelloTimeout time.Duration // 5 s: time allowed for the whole ClientHello
	DialTimeout  time.Duration // 5 s
	IdleTimeout  time.Duration // 10 min without a byte either way; <0 disables
	// ParkAfter applies to the goroutine path (see the package doc): how
	// long a relayed direction may be quiet before its goroutine is
	// released and its socket waits in the shared epoll set (Linux); <0
	// never parks. The event loops hold no goroutine per connection.
	ParkAfter time.Duration // 1 s

	// MaxConns bounds connections at once, relayed and pending. When it is
	// reached and some connections are still sending their ClientHello, a
	// new connection takes the place of the oldest of them; when all are
	// relayed, Accept waits.
	MaxConns int // 10000
	// MaxPending bounds connections still sending their ClientHello; beyond
	// it the oldest pending connection is closed for each new one, so
	// connections that never finish their hello cannot lock others out.
	// The event loops split it evenly between them.
	MaxPending      int // MaxConns
	MaxPendingPerIP int // 32 connections per source still sending their hello (an IPv4 address, an IPv6 /64)

	// Dial opens the backend connection. nil: the event loops connect
	// themselves (Linux; host-name targets go through a net.Dialer),
	// without TCP keep-alive (the idle timeout covers dead peers). Setting
	// it selects the goroutine path; returning a *net.TCPConn keeps splice.
	Dial    func(ctx context.Context, addr string) (net.Conn, error)
	Metrics *Metrics     // nil: no metrics
	Logger  *slog.Logger // nil: no logs
}

// Server is an SNI passthrough proxy. Create it with New and run Serve,
// once or on several listeners at once (see Listen).
type Server struct {
	cfg  Config
	dial func(ctx context.Context, addr string) (net.Conn, error) // Config.Dial with its timeout, or net.Dialer
	m    *Metrics
	log  *slog.Logger

	mu       sync.Mutex
	total    int   // connections holding a slot
	pending  clist // oldest first
	active   clist
	perIP    map[netip.Addr]int
	closing  bool
	slotFree chan struct{} // a slot was released (capacity 1)
	evictAge time.Duration // pending connections younger than this are not evicted
	wg       sync.WaitGroup

	loopConns atomic.Int64 // connections held by event loops
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
	if cfg.ParkAfter == 0 {
		cfg.ParkAfter = time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	if cfg.MaxPending <= 0 || cfg.MaxPending > cfg.MaxConns {
		cfg.MaxPending = cfg.MaxConns
	}
	if cfg.MaxPendingPerIP <= 0 {
		cfg.MaxPendingPerIP = 32
	}
	dial := cfg.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: -1}
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}
	} else {
		custom, timeout := cfg.Dial, cfg.DialTimeout
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return custom(ctx, addr)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:      cfg,
		dial:     dial,
		m:        cfg.Metrics.orNop(),
		log:      log,
		perIP:    make(map[netip.Addr]int),
		slotFree: make(chan struct{}, 1),
		evictAge: cfg.HelloTimeout / 5,
	}, nil
}

// Serve accepts connections on ln until ctx is cancelled or ln fails. On
// cancellation it closes ln and every connection the Server is serving,
// waits for them to end and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if tl, ok := s.loopsFor(ln); ok {
		return s.serveLoops(ctx, tl)
	}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.closeAll()
	})
	defer stop()
	defer s.wg.Wait()
	var backoff time.Duration
	for {
		if !s.waitRoom(ctx) {
			return nil
		}
		c, err := ln.Accept()
		if err != nil {
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
		if cs := s.admit(ctx, c); cs != nil {
			go s.serveConn(ctx, cs)
		}
	}
}

// waitRoom returns once a new connection might be admitted: a slot is
// free or a pending connection might make room. It waits otherwise, so
// that new connections queue in the kernel's backlog.
func (s *Server) waitRoom(ctx context.Context) bool {
	for {
		s.mu.Lock()
		room := s.total < s.cfg.MaxConns || s.pending.n > 0
		s.mu.Unlock()
		if room {
			return true
		}
		select {
		case <-s.slotFree:
		case <-ctx.Done():
			return false
		}
	}
}

// admit gives c a slot. When the slots or the pending budget are used
// up, the oldest pending connection makes room if it has been pending for
// at least evictAge (so that a burst of ordinary clients, each a round
// trip from finishing its hello, does not evict itself); otherwise admit
// waits for room. c is closed instead when its source already has
// MaxPendingPerIP pending connections or the server is closing.
func (s *Server) admit(ctx context.Context, c net.Conn) *conn {
	m := s.m
	m.Accepted.Inc()
	now := time.Now()
	cs := &conn{c: c, ip: remoteIP(c)}
	var victim *conn
	for {
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		if s.perIP[cs.ip] >= s.cfg.MaxPendingPerIP {
			s.mu.Unlock()
			m.RejectedPerIP.Inc()
			c.Close()
			return nil
		}
		full := s.total >= s.cfg.MaxConns
		if !full && s.pending.n < s.cfg.MaxPending {
			s.total++
			break
		}
		wait := time.Duration(-1) // no pending connection: wait for a slot
		if old := s.pending.head; old != nil {
			wait = s.evictAge - now.Sub(old.since)
			if wait <= 0 {
				victim = old
				s.unlinkPendingLocked(victim)
				victim.evicted = true // its slot passes to cs
				if !full {
					s.total++ // over the pending budget only: cs needs a slot of its own
				}
				break
			}
		}
		s.mu.Unlock()
		var timeout <-chan time.Time
		if wait > 0 {
			timeout = time.After(wait)
		}
		select {
		case <-s.slotFree:
		case <-timeout:
		case <-ctx.Done():
			c.Close()
			return nil
		}
		now = time.Now()
	}
	cs.since = now
	s.perIP[cs.ip]++
	s.pending.push(cs)
	cs.where = inPending
	s.wg.Add(1)
	s.mu.Unlock()
	m.Active.Inc()
	m.Pending.Inc()
	if victim != nil {
		m.PendingEvicted.Inc()
		victim.kill()
	}
	return cs
}

func (s *Server) unlinkPendingLocked(cs *conn) {
	s.pending.remove(cs)
	cs.where = nowhere
	if s.perIP[cs.ip] <= 1 {
		delete(s.perIP, cs.ip)
	} else {
		s.perIP[cs.ip]--
	}
	s.m.Pending.Dec()
}

// activate moves cs from pending to active once its hello is complete; it
// reports false when cs was evicted meanwhile.
func (s *Server) activate(cs *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cs.evicted || s.closing {
		return false
	}
	s.unlinkPendingLocked(cs)
	s.active.push(cs)
	cs.where = inActive
	return true
}

// release ends cs's accounting; it is called exactly once per admitted
// connection, after its sockets are closed.
func (s *Server) release(cs *conn) {
	s.mu.Lock()
	switch cs.where {
	case inPending:
		s.unlinkPendingLocked(cs)
	case inActive:
		s.active.remove(cs)
		cs.where = nowhere
	}
	if !cs.evicted {
		s.total--
	}
	s.mu.Unlock()
	if cs.handedOff != nil {
		s.loopConns.Add(-1)
		cs.handedOff.Done()
	}
	select {
	case s.slotFree <- struct{}{}:
	default:
	}
	s.m.Active.Dec()
	s.wg.Done()
}

// closeAll shuts every connection down; their goroutines (or the parker)
// then finish them.
func (s *Server) closeAll() {
	s.mu.Lock()
	s.closing = true
	var all []*conn
	for cs := s.pending.head; cs != nil; cs = cs.next {
		all = append(all, cs)
	}
	for cs := s.active.head; cs != nil; cs = cs.next {
		all = append(all, cs)
	}
	s.mu.Unlock()
	for _, cs := range all {
		cs.kill()
	}
}

// closeHandedOff shuts down the connections that the event loops of one
// Serve handed over (group), leaving the Server open for other Serves.
func (s *Server) closeHandedOff(group *sync.WaitGroup) {
	s.mu.Lock()
	var all []*conn
	for cs := s.active.head; cs != nil; cs = cs.next {
		if cs.handedOff == group {
			all = append(all, cs)
		}
	}
	s.mu.Unlock()
	for _, cs := range all {
		cs.kill()
	}
}

// serveConn takes one client connection from hello to relay. It returns
// once the relay owns the connection, so that its stack, grown by parsing
// and dialing, is not kept for the connection's lifetime.
func (s *Server) serveConn(ctx context.Context, cs *conn) {
	m := s.m
	c := cs.c
	handedOff := false
	defer func() {
		if !handedOff {
			c.Close()
			s.release(cs)
		}
	}()

	start := cs.since
	_ = c.SetReadDeadline(start.Add(s.cfg.HelloTimeout))
	h, err := readHello(c)
	if err != nil {
		if !s.wasEvicted(cs) {
			s.helloFailed(c, err)
		}
		return
	}
	defer func() {
		if h != nil {
			h.Release()
		}
	}()
	if !s.activate(cs) {
		return
	}
	observeSince(m.HelloSeconds, start)
	_ = c.SetReadDeadline(time.Time{})

	name := h.ServerName()
	target, err := s.cfg.Router.Route(ctx, name)
	if err != nil {
		sendAlert(c, h.RecordVersion(), s.routeFailed(name, err))
		return
	}
	m.Routed.Inc()
	handedOff = true
	hh := h
	h = nil
	s.dialAndRelay(ctx, cs, c, hh, target, name)
}

// routeFailed counts a failed route and returns the alert to send.
func (s *Server) routeFailed(name string, err error) byte {
	if errors.Is(err, ErrUnknownName) {
		s.m.RouteUnknown.Inc()
		s.log.Debug("sniproxy: unknown name", "name", name)
		return alertUnrecognizedName
	}
	s.m.RouteErrors.Inc()
	if errors.Is(err, ErrNodeOffline) { // a node that is away: not the gateway's fault
		s.log.Debug("sniproxy: node offline", "name", name)
	} else {
		s.log.Warn("sniproxy: route failed", "name", name, "err", err)
	}
	return alertInternalError
}

// dialAndRelay connects to the target, replays the hello and relays. It
// owns c, h and the accounting of cs from here on.
func (s *Server) dialAndRelay(ctx context.Context, cs *conn, c net.Conn, h *clienthello.Hello, target Target, name string) {
	m := s.m
	fail := func() {
		h.Release()
		c.Close()
		s.release(cs)
	}
	var backend net.Conn
	var err error
	if target.Dial != nil {
		dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
		backend, err = target.Dial(dctx, c.RemoteAddr())
		cancel()
	} else {
		backend, err = s.dial(ctx, target.Addr)
	}
	if err != nil {
		m.DialErrors.Inc()
		s.log.Warn("sniproxy: dial failed", "name", name, "target", target.Addr, "err", err)
		sendAlert(c, h.RecordVersion(), alertInternalError)
		fail()
		return
	}
	if err := s.writePreamble(backend, c, h, target, name); err != nil {
		backend.Close()
		m.DialErrors.Inc()
		s.log.Warn("sniproxy: backend write failed", "target", target.Addr, "err", err)
		fail()
		return
	}
	m.BytesUp.Add(float64(len(h.Raw())))
	h.Release()
	s.startRelay(cs, c, backend)
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
	if desc := s.helloVerdict(err); desc != 0 {
		sendAlert(c, 0, desc)
	}
	s.log.Debug("sniproxy: bad clienthello", "client", c.RemoteAddr(), "err", err)
}

// helloVerdict counts a rejected ClientHello by kind and returns the alert
// to answer with, or 0 for none.
func (s *Server) helloVerdict(err error) byte {
	m := s.m
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		m.HelloTimeout.Inc()
	case errors.Is(err, clienthello.ErrNotTLS):
		m.HelloNotTLS.Inc()
	case errors.Is(err, clienthello.ErrTooLarge):
		m.HelloTooLarge.Inc()
		return alertRecordOverflow
	case errors.Is(err, clienthello.ErrTruncated):
		m.HelloTruncated.Inc()
	case errors.Is(err, clienthello.ErrMalformed):
		m.HelloMalformed.Inc()
		return alertDecodeError
	case errors.Is(err, clienthello.ErrNoSNI), errors.Is(err, clienthello.ErrBadServerName):
		m.HelloNoName.Inc()
		return alertUnrecognizedName
	default:
		m.HelloReadErrors.Inc()
	}
	return 0
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
	rec := alertRecord(version, desc)
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

// alertRecord is a fatal alert record in the client's record version.
func alertRecord(version uint16, desc byte) [7]byte {
	if version>>8 != 3 {
		version = 0x0301
	}
	return [7]byte{21, byte(version >> 8), byte(version), 0, 2, 2, desc}
}
