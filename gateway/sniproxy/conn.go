package sniproxy

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// conn is the Server's record of one client connection from accept to
// close: where it is accounted (pending or active list) and how to stop it.
type conn struct {
	c     net.Conn
	ip    netip.Addr
	since time.Time // accepted
	// handedOff is set for a connection an event loop handed over: it
	// holds one of the loops' slots (Server.loopConns) and counts in its
	// Serve's group until release.
	handedOff *sync.WaitGroup

	// Guarded by Server.mu.
	prev, next *conn
	where      int8
	evicted    bool // closed to make room; its slot went to a newer connection

	mu     sync.Mutex
	relay  shutdowner // set once relaying
	killed bool
}

const (
	nowhere int8 = iota
	inPending
	inActive
)

// shutdowner stops a relay wherever its halves wait.
type shutdowner interface{ shutdown() }

func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return sourceOf(a.AddrPort().Addr())
	}
	return netip.Addr{}
}

// sourceOf is the key that per-source bounds count a client address under:
// the IPv4 address, or the /64 of an IPv6 one. An IPv6 client picks its
// source address from at least a /64, so a bound per address would bound
// nothing.
func sourceOf(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if !a.Is6() {
		return a
	}
	p, err := a.WithZone("").Prefix(64)
	if err != nil {
		return a
	}
	return p.Addr()
}

func (s *Server) wasEvicted(cs *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cs.evicted
}

// setRelay records the relay that now owns cs; if cs was killed while it
// was being set up, the relay is stopped at once.
func (cs *conn) setRelay(r shutdowner) {
	cs.mu.Lock()
	cs.relay = r
	killed := cs.killed
	cs.mu.Unlock()
	if killed {
		r.shutdown()
	}
}

// kill stops cs from another goroutine: the relay if there is one, else
// the client socket is shut down (not closed: its owner closes it), which
// wakes a goroutine waiting for the hello.
func (cs *conn) kill() {
	cs.mu.Lock()
	cs.killed = true
	r := cs.relay
	cs.mu.Unlock()
	if r != nil {
		r.shutdown()
		return
	}
	shutdownConn(cs.c)
}

// shutdownConn shuts a TCP connection down both ways, waking whatever
// waits on it; other connections are closed.
func shutdownConn(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return
	}
	_ = tc.CloseRead()
	_ = tc.CloseWrite()
}

// clist is an intrusive doubly linked list of conns, oldest first.
type clist struct {
	head, tail *conn
	n          int
}

func (l *clist) push(cs *conn) {
	cs.prev, cs.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = cs
	} else {
		l.head = cs
	}
	l.tail = cs
	l.n++
}

func (l *clist) remove(cs *conn) {
	if cs.prev != nil {
		cs.prev.next = cs.next
	} else {
		l.head = cs.next
	}
	if cs.next != nil {
		cs.next.prev = cs.prev
	} else {
		l.tail = cs.prev
	}
	cs.prev, cs.next = nil, nil
	l.n--
}
