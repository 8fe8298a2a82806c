package natlab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Probe server limits: every input is bounded in size, time and count.
const (
	maxPendingDelayed       = 256 // delayed replies in flight, total
	maxPendingDelayedPerSrc = 16  // ... and per source IP
	maxSinkConns            = 16  // concurrent bandwidth-sink TCP connections
	maxSinkBytes            = 1 << 30
	sinkTimeout             = 2 * time.Minute
)

// ProbeServer answers probe requests on two addresses × two ports: it reports
// the observed source endpoint and, on request, answers from the other address
// and/or port (RFC 5780 CHANGE-REQUEST semantics). The same sockets answer STUN
// Binding requests, CHANGE-REQUEST included (see AnswerSTUN), which is what
// miniupnpd's external-address test needs. It also offers a TCP byte sink on
// the primary endpoint for bandwidth measurements.
type ProbeServer struct {
	conns [2][2]*net.UDPConn // [address][port]
	sink  *net.TCPListener

	mu         sync.Mutex
	pending    int
	pendingSrc map[netip.Addr]int
	wg         sync.WaitGroup
}

// ListenProbeServer binds the four UDP sockets and the TCP sink.
func ListenProbeServer(addrs [2]netip.Addr, ports [2]uint16) (*ProbeServer, error) {
	s := &ProbeServer{pendingSrc: map[netip.Addr]int{}}
	for i, a := range addrs {
		for j, p := range ports {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, p)))
			if err != nil {
				s.Close()
				return nil, fmt.Errorf("probe server: %w", err)
			}
			s.conns[i][j] = c
		}
	}
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addrs[0], ports[0])))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("probe server sink: %w", err)
	}
	s.sink = l
	return s, nil
}

// Close closes all sockets; Serve returns after it.
func (s *ProbeServer) Close() {
	for i := range s.conns {
		for j := range s.conns[i] {
			if c := s.conns[i][j]; c != nil {
				c.Close()
			}
		}
	}
	if s.sink != nil {
		s.sink.Close()
	}
}

// Serve runs until ctx ends.
func (s *ProbeServer) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	for i := range s.conns {
		for j := range s.conns[i] {
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serveUDP(ctx, i, j) }()
		}
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.serveSink(ctx) }()
	s.wg.Wait()
	return nil
}

func (s *ProbeServer) serveUDP(ctx context.Context, i, j int) {
	c := s.conns[i][j]
	buf := make([]byte, 1500)
	out := make([]byte, 0, MsgSizeProbe)
	stunOut := make([]byte, 0, 64)
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if IsSTUN(buf[:n]) {
			resp, fl, err := AnswerSTUN(buf[:n], src, stunOut)
			if err != nil {
				continue // bad input changes nothing and gets no answer
			}
			_, _ = s.replyConn(i, j, fl).WriteToUDPAddrPort(resp, src)
			continue
		}
		m, err := Decode(buf[:n])
		if err != nil || m.Kind != KindRequest {
			continue // bad input changes nothing and gets no answer
		}
		rc := s.replyConn(i, j, m.Flags)
		resp := Message{Kind: KindResponse, ID: m.ID, Observed: src,
			Responder: rc.LocalAddr().(*net.UDPAddr).AddrPort()}
		out, err = resp.Append(out[:0])
		if err != nil {
			continue
		}
		if m.DelayMillis == 0 {
			_, _ = rc.WriteToUDPAddrPort(out, src)
			continue
		}
		if !s.reserveDelayed(src.Addr()) {
			continue
		}
		pkt := append([]byte(nil), out...)
		time.AfterFunc(time.Duration(m.DelayMillis)*time.Millisecond, func() {
			defer s.releaseDelayed(src.Addr())
			if ctx.Err() == nil {
				_, _ = rc.WriteToUDPAddrPort(pkt, src)
			}
		})
	}
}

// replyConn is the socket that answers a request received on conns[i][j]:
// the other address and/or port when the request asks for it.
func (s *ProbeServer) replyConn(i, j int, f Flags) *net.UDPConn {
	if f&FlagChangeIP != 0 {
		i ^= 1
	}
	if f&FlagChangePort != 0 {
		j ^= 1
	}
	return s.conns[i][j]
}

func (s *ProbeServer) reserveDelayed(a netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending >= maxPendingDelayed || s.pendingSrc[a] >= maxPendingDelayedPerSrc {
		return false
	}
	s.pending++
	s.pendingSrc[a]++
	return true
}

func (s *ProbeServer) releaseDelayed(a netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending--
	if s.pendingSrc[a]--; s.pendingSrc[a] <= 0 {
		delete(s.pendingSrc, a)
	}
}

// serveSink counts the bytes of each TCP connection until EOF and answers
// with the count (8 bytes, big endian).
func (s *ProbeServer) serveSink(ctx context.Context) {
	sem := make(chan struct{}, maxSinkConns)
	for {
		c, err := s.sink.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-sem }()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(sinkTimeout))
			n, err := io.Copy(io.Discard, io.LimitReader(c, maxSinkBytes))
			if err != nil {
				return
			}
			_, _ = c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
		}()
	}
}
