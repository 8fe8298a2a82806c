package peer

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/deadline"
	"github.com/elacity/pc2/transport/punch"
	"github.com/elacity/pc2/transport/udpmux"
)

// punchViews hands the shared socket's punch packets (0x3a-0x3b) to the
// attempt they belong to, by attempt id, so that attempts with several
// peers at once do not read each other's packets.
type punchViews struct {
	mux  *udpmux.Mux
	drop *atomic.Bool // tests: the direct path is down
	mu   sync.Mutex
	m    map[[8]byte]*punchView
}

const maxAttempts = 64

func (v *punchViews) handle(pkt []byte, from netip.AddrPort) bool {
	p, err := punch.ParseHeader(pkt)
	if err != nil {
		return false
	}
	if v.drop.Load() {
		return true
	}
	v.mu.Lock()
	pv := v.m[p.Attempt]
	v.mu.Unlock()
	if pv == nil {
		return false // another user of the socket's punch packets, if any
	}
	bp := bufPool.Get().(*[]byte)
	*bp = append((*bp)[:0], pkt...)
	select {
	case pv.in <- punchPacket{bp, netip.AddrPortFrom(from.Addr().Unmap(), from.Port())}:
	default:
		bufPool.Put(bp)
	}
	return true
}

// open returns the view of attempt, or nil when too many are open.
func (v *punchViews) open(attempt [8]byte) *punchView {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.m) >= maxAttempts || v.m[attempt] != nil {
		return nil
	}
	pv := &punchView{views: v, attempt: attempt, in: make(chan punchPacket, 64), dl: deadline.New()}
	v.m[attempt] = pv
	return pv
}

type punchPacket struct {
	buf  *[]byte
	from netip.AddrPort
}

// punchView is a punch.PacketConn on the shared socket for one attempt.
type punchView struct {
	views   *punchViews
	attempt [8]byte
	in      chan punchPacket
	dl      *deadline.Deadline
}

func (p *punchView) close() {
	p.views.mu.Lock()
	delete(p.views.m, p.attempt)
	p.views.mu.Unlock()
}

// ReadFrom implements punch.PacketConn.
func (p *punchView) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case k := <-p.in:
		n := copy(b, *k.buf)
		bufPool.Put(k.buf)
		return n, net.UDPAddrFromAddrPort(k.from), nil
	case <-p.dl.Wait():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

// WriteTo implements punch.PacketConn.
func (p *punchView) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, net.InvalidAddrError("peer: punch to a non-UDP address")
	}
	if p.views.drop.Load() {
		return len(b), nil
	}
	if err := p.views.mux.WriteTo(b, ua.AddrPort()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// SetReadDeadline implements punch.PacketConn.
func (p *punchView) SetReadDeadline(t time.Time) error { return p.dl.Set(t) }

// LocalAddr implements punch.PacketConn.
func (p *punchView) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(p.views.mux.LocalAddr()) }
