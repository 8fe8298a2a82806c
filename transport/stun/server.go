package stun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/ratelimit"
)

// ServerConfig says where a Server listens and how much it answers.
type ServerConfig struct {
	// Listen is the primary address (ip:port). RFC 5780 needs a specific
	// IP when OtherPort or OtherAddr is set: answers must leave from a
	// known address.
	Listen netip.AddrPort
	// OtherPort is the second port (0: none; CHANGE-REQUEST with the
	// change-port flag then gets error 420).
	OtherPort uint16
	// OtherAddr is the host's second IP (invalid: none; the change-IP flag
	// then gets error 420, and OTHER-ADDRESS names the other port on the
	// same IP, which is how a client learns that only port tests work).
	OtherAddr netip.Addr
	// Strict: never answer with more bytes than the request (see the
	// package doc).
	Strict bool
	// Rate and Burst bound answers per source IP (default 20/s, burst 40);
	// MaxSources bounds the sources tracked (default 65536).
	Rate       float64
	Burst      int
	MaxSources int
}

// ServerStats counts requests.
type ServerStats struct {
	Answered, Errors, Malformed, Limited, Amplifying uint64
}

// Server answers Binding requests on up to four sockets: the primary
// address and port, the other port, and the other address with both ports.
type Server struct {
	cfg     ServerConfig
	socks   [2][2]*net.UDPConn // [address][port]
	limiter *ratelimit.Limiter[netip.Addr]
	wg      sync.WaitGroup

	answered, errs, malformed, limited, amplifying atomic.Uint64
}

// ListenServer opens the server's sockets and starts answering.
func ListenServer(cfg ServerConfig) (*Server, error) {
	if cfg.Rate <= 0 {
		cfg.Rate = 20
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 40
	}
	if cfg.MaxSources <= 0 {
		cfg.MaxSources = 1 << 16
	}
	if !cfg.Listen.IsValid() {
		return nil, errors.New("stun server: no listen address")
	}
	if cfg.OtherAddr.IsValid() && cfg.OtherPort == 0 {
		return nil, errors.New("stun server: otherAddr needs otherPort (RFC 5780 uses two addresses × two ports)")
	}
	if (cfg.OtherPort != 0 || cfg.OtherAddr.IsValid()) && cfg.Listen.Addr().IsUnspecified() {
		return nil, errors.New("stun server: otherPort and otherAddr need a specific listen address, not a wildcard")
	}
	if cfg.OtherPort != 0 && cfg.OtherPort == cfg.Listen.Port() {
		return nil, errors.New("stun server: otherPort equals the listen port")
	}
	s := &Server{cfg: cfg, limiter: ratelimit.New[netip.Addr](cfg.Rate, cfg.Burst, cfg.MaxSources)}
	want := func(a, p int) (netip.AddrPort, bool) {
		addr, port := cfg.Listen.Addr(), cfg.Listen.Port()
		if a == 1 {
			if !cfg.OtherAddr.IsValid() {
				return netip.AddrPort{}, false
			}
			addr = cfg.OtherAddr
		}
		if p == 1 {
			if cfg.OtherPort == 0 {
				return netip.AddrPort{}, false
			}
			port = cfg.OtherPort
		}
		return netip.AddrPortFrom(addr, port), true
	}
	for a := range 2 {
		for p := range 2 {
			ap, ok := want(a, p)
			if !ok {
				continue
			}
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
			if err != nil {
				s.closeSockets()
				return nil, fmt.Errorf("stun server: listen %s: %w", ap, err)
			}
			s.socks[a][p] = c
		}
	}
	// With port 0 the kernel picked the primary port: record it.
	s.cfg.Listen = s.addrOf(0, 0)
	for a := range 2 {
		for p := range 2 {
			if c := s.socks[a][p]; c != nil {
				s.wg.Add(1)
				go s.serve(c, a, p)
			}
		}
	}
	return s, nil
}

// Addrs returns the addresses the server listens on: primary first.
func (s *Server) Addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for a := range 2 {
		for p := range 2 {
			if s.socks[a][p] != nil {
				out = append(out, s.addrOf(a, p))
			}
		}
	}
	return out
}

// Stats returns the counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{Answered: s.answered.Load(), Errors: s.errs.Load(), Malformed: s.malformed.Load(),
		Limited: s.limited.Load(), Amplifying: s.amplifying.Load()}
}

// Close stops the server.
func (s *Server) Close() error {
	s.closeSockets()
	s.wg.Wait()
	return nil
}

func (s *Server) closeSockets() {
	for a := range 2 {
		for p := range 2 {
			if c := s.socks[a][p]; c != nil {
				c.Close()
			}
		}
	}
}

func (s *Server) addrOf(a, p int) netip.AddrPort {
	c := s.socks[a][p]
	if c == nil {
		return netip.AddrPort{}
	}
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (s *Server) serve(c *net.UDPConn, a, p int) {
	defer s.wg.Done()
	in := make([]byte, MaxMessage+1)
	out := make([]byte, 0, 128)
	for {
		n, from, err := c.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		resp, via := s.Answer(in[:n], from, a, p, out[:0], time.Now())
		if resp != nil {
			_, _ = via.WriteToUDPAddrPort(resp, from)
		}
	}
}

// Answer decides the reply to one datagram received on socket [a][p] from
// from: the bytes and the socket to send them from, or nil.
func (s *Server) Answer(pkt []byte, from netip.AddrPort, a, p int, buf []byte, now time.Time) ([]byte, *net.UDPConn) {
	req, err := ParseRequest(pkt)
	if err != nil {
		s.malformed.Add(1)
		return nil, nil
	}
	if !s.limiter.Allow(from.Addr(), now) {
		s.limited.Add(1)
		return nil, nil
	}
	ra, rp := a, p
	if req.Change&ChangeIP != 0 {
		ra ^= 1
	}
	if req.Change&ChangePort != 0 {
		rp ^= 1
	}
	via := s.socks[ra][rp]
	if via == nil {
		// RFC 5780 §6.1: a CHANGE-REQUEST the server cannot honour gets 420.
		out, err := AppendError(buf, req, 420, s.cfg.Strict)
		if err != nil {
			s.amplifying.Add(1)
			return nil, nil
		}
		s.errs.Add(1)
		return out, s.socks[a][p]
	}
	info := AnswerInfo{Observed: from, Strict: s.cfg.Strict}
	if s.cfg.OtherPort != 0 || s.cfg.OtherAddr.IsValid() {
		info.Origin = s.addrOf(ra, rp)
		switch {
		case s.socks[ra^1][rp^1] != nil:
			info.Other = s.addrOf(ra^1, rp^1)
		case s.socks[ra][rp^1] != nil:
			info.Other = s.addrOf(ra, rp^1) // one address: says so
		}
	}
	out, err := AppendAnswer(buf, req, info)
	if err != nil {
		s.amplifying.Add(1)
		return nil, nil
	}
	s.answered.Add(1)
	return out, via
}
