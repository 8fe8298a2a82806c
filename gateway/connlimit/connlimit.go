// Package connlimit bounds the connections a TCP listener hands out: in
// total, and per source (an IPv4 address, or the /64 of an IPv6 one).
//
// It exists because fasthttp's own per-IP limit (Server.MaxConnsPerIP)
// counts IPv4 sources only and races with Shutdown (its pooled connection
// wrapper is closed from another goroutine while being read; seen under
// -race with v1.74.0). Wrapping the listener keeps the accounting where
// the connection is born and dies, independent of the server above it.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
)

// Listener wraps a net.Listener. A connection beyond a limit is closed at
// once and Accept waits for the next one, so one source cannot hold every
// slot of a server.
type Listener struct {
	net.Listener
	max, perSource int

	mu     sync.Mutex
	total  int
	counts map[netip.Addr]int
}

// New limits ln to max connections at once, perSource of them from one
// source. A limit ≤ 0 is no limit.
func New(ln net.Listener, max, perSource int) *Listener {
	return &Listener{Listener: ln, max: max, perSource: perSource, counts: map[netip.Addr]int{}}
}

// Source returns the key a remote address is counted under.
func Source(a net.Addr) netip.Addr {
	var ip netip.Addr
	if t, ok := a.(*net.TCPAddr); ok {
		ip, _ = netip.AddrFromSlice(t.IP)
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip
}

// Accept returns the next connection within the limits.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := Source(c.RemoteAddr())
		l.mu.Lock()
		over := (l.max > 0 && l.total >= l.max) || (l.perSource > 0 && l.counts[src] >= l.perSource)
		if !over {
			l.total++
			l.counts[src]++
		}
		l.mu.Unlock()
		if over {
			c.Close()
			continue
		}
		return &conn{Conn: c, l: l, src: src}, nil
	}
}

// Open returns the number of connections open now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

func (l *Listener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.counts[src]--; l.counts[src] <= 0 {
		delete(l.counts, src)
	}
}

type conn struct {
	net.Conn
	l    *Listener
	src  netip.Addr
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}
