package sniproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/elacity/pc2/core/pipes"

	"github.com/elacity/pc2/gateway/clienthello"
	"github.com/elacity/pc2/gateway/proxyproto"
)

// The event loops: the default data path on Linux (see doc.go for why).
// Each loop owns an epoll set and the connections it accepted, from the
// first byte of the ClientHello to the close, as plain descriptors: no
// goroutine, no net.Conn, no netpoller registration per connection. Both
// sockets of a connection are registered once, edge-triggered, for input
// and output; the loop keeps the readiness it has seen in four flags and
// moves bytes with splice(2) through a pipe taken from the loop's pool for
// as long as a burst is in flight.

const (
	evIn  = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
	evOut = unix.EPOLLOUT | unix.EPOLLHUP | unix.EPOLLERR

	// Event data for the two descriptors that are not connections.
	dataListener = -1
	dataWake     = -2

	drainTime  = time.Second // how long an alert's sender reads what the client still sends
	drainBytes = 64 << 10
	burstLimit = pipes.Size // bytes one direction moves before others get a turn (1 MiB: 11% more with 8 streams than 4 MiB)
	acceptMax  = 64         // accepts per listener event, for fairness
)

type lstate uint8

const (
	stHello lstate = iota // reading the ClientHello
	stDial                // connecting to the backend, then writing the hello to it
	stRelay               // moving bytes both ways
	stDrain               // alert sent: reading what the client still sends, then closing
)

// lconn is one client connection in a loop. Its fields are the loop's
// alone.
type lconn struct {
	slot, gen int32
	state     lstate
	inPending bool // counted in the Server's per-IP pending map
	cfd, bfd  int32
	ip        netip.Addr
	peer      netip.AddrPort // client address, for a PROXY header
	t         int64          // loop clock: accept, dial start, drain start or last activity
	helloT    int64
	list      *llist
	prev      *lconn
	next      *lconn
	partial   []byte             // hello bytes received so far
	hello     *clienthello.Hello // while dialing: replayed to the backend
	out       []byte             // preamble bytes still to write
	cin, cout bool               // client readable / writable (edge-triggered state)
	chup      bool               // the client's end of stream has been signalled
	bin, bout bool               // backend readable / writable
	up, down  ldir
	queued    bool // on the loop's ready list
	drained   int
}

// ldir is one direction of a relayed connection.
type ldir struct {
	p   *pipes.Pipe
	eof bool
	n   int64
}

// llist is an intrusive list of lconns, oldest (or least recently active)
// first.
type llist struct {
	head, tail *lconn
	n          int
}

func (l *llist) push(c *lconn) {
	c.list, c.prev, c.next = l, l.tail, nil
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	l.n++
}

func (l *llist) remove(c *lconn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.list, c.prev, c.next = nil, nil, nil
	l.n--
}

type loop struct {
	s       *Server
	ctx     context.Context
	epfd    int
	epf     *os.File        // epfd, registered with Go's netpoller
	eprc    syscall.RawConn // waits on epfd through the netpoller
	wakefd  int
	ln      syscall.RawConn
	lnOn    bool  // the listener is in the epoll set
	lnErr   error // the listener was closed from outside
	lnCheck int64 // when to look whether it was
	retry   int64
	base    time.Time
	now     int64

	events []unix.EpollEvent
	slots  []*lconn
	free   []int32
	ready  []*lconn

	gen int32

	hello, dial, drain, relay llist
	maxPending                int
	pipes                     pipes.Pool
	scratch                   []byte
	stop                      atomic.Bool

	peers     []*loop         // all loops of this Serve, for balance and evictions
	handedOff *sync.WaitGroup // connections this Serve's loops handed to goroutines
	pendingN  atomic.Int32    // published l.hello.n
	evictReq  atomic.Int32    // evictions asked by other loops
	askedAt   int64           // when this loop last asked another to evict
	asked     *loop           // the loop it asked
	count     atomic.Int32    // connections owned

	inboxMu sync.Mutex
	inbox   []accepted // connections accepted by another loop for this one
}

type accepted struct {
	fd   int
	peer netip.AddrPort
}

// loopsFor reports whether Serve runs event loops for ln: on Linux, for a
// TCP listener, when the backend dial is the built-in one.
func (s *Server) loopsFor(ln net.Listener) (*net.TCPListener, bool) {
	tl, ok := ln.(*net.TCPListener)
	return tl, ok && s.cfg.Dial == nil
}

// serveLoops runs one event loop per P on ln until ctx ends.
func (s *Server) serveLoops(ctx context.Context, ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return fmt.Errorf("sniproxy: listener: %w", err)
	}
	n := max(runtime.GOMAXPROCS(0), 1)
	loops := make([]*loop, 0, n)
	defer func() {
		for _, l := range loops {
			for _, a := range l.inbox { // given after the loop stopped
				s.loopConns.Add(-1)
				unix.Close(a.fd)
			}
			l.epf.Close()
			unix.Close(l.wakefd)
			l.pipes.Drain()
		}
	}()
	for range n {
		l, err := s.newLoop(ctx, rc, n)
		if err != nil {
			return err
		}
		loops = append(loops, l)
	}
	var handedOff sync.WaitGroup
	for _, l := range loops {
		l.peers = loops
		l.handedOff = &handedOff
	}
	errc := make(chan error, n)
	for _, l := range loops {
		go func() { errc <- l.run() }()
	}
	stopAll := func() {
		for _, l := range loops {
			l.stop.Store(true)
			l.wake()
		}
	}
	// stopAll writes to the loops' wake descriptors, which the deferred
	// cleanup closes: when the context fired, wait for it to be done, or
	// its last writes could land on a descriptor number reused meanwhile.
	stopped := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(stopped)
		stopAll()
	})
	var first error
	for range loops {
		if err := <-errc; err != nil && first == nil {
			first = err
			stopAll()
		}
	}
	if !stop() {
		<-stopped
	}
	ln.Close()
	if ctx.Err() != nil {
		s.closeAll() // connections handed to goroutines, of every Serve
		s.wg.Wait()
		return nil
	}
	// The listener failed. The Server may be serving other listeners:
	// end only what this Serve's loops handed over, and leave the Server
	// open.
	s.closeHandedOff(&handedOff)
	handedOff.Wait()
	return first
}

func (s *Server) newLoop(ctx context.Context, ln syscall.RawConn, n int) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sniproxy: epoll_create1: %w", err)
	}
	// The loop sleeps in Go's netpoller on its epoll descriptor (nested
	// epoll) rather than in a blocking epoll_wait: a goroutine blocked in
	// a system call makes the runtime's monitor hand its processor over
	// and poll every 20 µs, which cost 15% of the proxy's CPU.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("sniproxy: epoll: %w", err)
	}
	epf := os.NewFile(uintptr(epfd), "epoll")
	eprc, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		return nil, fmt.Errorf("sniproxy: epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		epf.Close()
		return nil, fmt.Errorf("sniproxy: eventfd: %w", err)
	}
	l := &loop{
		s: s, ctx: ctx, epfd: epfd, epf: epf, eprc: eprc, wakefd: wakefd, ln: ln, base: time.Now(),
		events:     make([]unix.EpollEvent, 256),
		maxPending: (s.cfg.MaxPending + n - 1) / n,
		askedAt:    -int64(time.Hour),
		scratch:    make([]byte, 16<<10),
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: dataWake}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		epf.Close()
		unix.Close(wakefd)
		return nil, fmt.Errorf("sniproxy: epoll_ctl: %w", err)
	}
	if err := l.listen(true); err != nil {
		epf.Close()
		unix.Close(wakefd)
		return nil, err
	}
	return l, nil
}

// listen adds the listener to (on) or removes it from the epoll set. The
// loops share it with EPOLLEXCLUSIVE, so a new connection wakes one loop.
func (l *loop) listen(on bool) error {
	if l.lnOn == on {
		return nil
	}
	var err error
	cerr := l.ln.Control(func(fd uintptr) {
		if on {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: dataListener}
			err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		} else {
			err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		}
	})
	if err = errors.Join(cerr, err); err != nil {
		return fmt.Errorf("sniproxy: epoll_ctl listener: %w", err)
	}
	l.lnOn = on
	return nil
}

func (l *loop) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(l.wakefd, one[:])
}

func (l *loop) clock() int64 { return int64(time.Since(l.base)) }

func (l *loop) run() error {
	defer l.closeAll()
	for {
		n, err := l.wait()
		if err != nil {
			return err
		}
		l.now = l.clock()
		for i := range max(n, 0) {
			ev := &l.events[i]
			switch ev.Fd {
			case dataListener:
				l.accept()
			case dataWake:
				var b [8]byte
				_, _ = unix.Read(l.wakefd, b[:])
				l.takeInbox()
			default:
				slot, side := ev.Fd>>1, ev.Fd&1
				if int(slot) >= len(l.slots) {
					continue
				}
				c := l.slots[slot]
				if c == nil || c.gen != ev.Pad {
					continue // closed earlier in this batch
				}
				l.event(c, side, ev.Events)
			}
		}
		if l.stop.Load() {
			return nil
		}
		if l.lnErr != nil {
			return fmt.Errorf("sniproxy: accept: %w", l.lnErr)
		}
		l.runReady()
		l.expire()
		// A listener closed from outside leaves the epoll sets without an
		// event: look once a second, busy or not.
		if l.now >= l.lnCheck {
			l.lnCheck = l.now + int64(time.Second)
			if l.ln.Control(func(uintptr) {}) != nil && !l.stop.Load() {
				return fmt.Errorf("sniproxy: accept: %w", net.ErrClosed)
			}
		}
		l.pendingN.Store(int32(l.hello.n))
	}
}

// wait returns the next events: at once when some are queued, else after
// sleeping in the netpoller until epfd is readable or the next deadline.
func (l *loop) wait() (int, error) {
	n, err := rawEpollWait(l.epfd, l.events)
	if err != nil && err != unix.EINTR {
		return 0, fmt.Errorf("sniproxy: epoll_wait: %w", err)
	}
	if n > 0 || len(l.ready) > 0 {
		return max(n, 0), nil
	}
	// Wake at least once a second: a listener closed from outside leaves
	// the epoll set without an event, and only a check notices it.
	next := l.nextDeadline()
	if limit := l.clock() + int64(time.Second); next < 0 || next > limit {
		next = limit
	}
	dl := l.base.Add(time.Duration(next))
	if err := l.epf.SetReadDeadline(dl); err != nil {
		return 0, fmt.Errorf("sniproxy: epoll deadline: %w", err)
	}
	n = 0
	rerr := l.eprc.Read(func(fd uintptr) bool {
		n, err = rawEpollWait(int(fd), l.events)
		return n > 0 || (err != nil && err != unix.EINTR)
	})
	if err != nil && err != unix.EINTR {
		return 0, fmt.Errorf("sniproxy: epoll_wait: %w", err)
	}
	if rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
		return 0, fmt.Errorf("sniproxy: epoll wait: %w", rerr)
	}
	return max(n, 0), nil
}

// nextDeadline is the loop clock time of the earliest deadline; -1: none.
func (l *loop) nextDeadline() int64 {
	next := int64(-1)
	at := func(c *lconn, d time.Duration) {
		if c != nil && d > 0 {
			if t := c.t + int64(d); next < 0 || t < next {
				next = t
			}
		}
	}
	cfg := &l.s.cfg
	at(l.hello.head, cfg.HelloTimeout)
	at(l.dial.head, cfg.DialTimeout)
	at(l.drain.head, drainTime)
	at(l.relay.head, cfg.IdleTimeout)
	if !l.lnOn && (next < 0 || l.retry < next) {
		next = l.retry
	}
	return next
}

// expire enforces the deadlines of the lists' oldest entries.
func (l *loop) expire() {
	cfg := &l.s.cfg
	m := l.s.m
	for c := l.hello.head; c != nil && l.now-c.t >= int64(cfg.HelloTimeout); c = l.hello.head {
		m.HelloTimeout.Inc()
		l.close(c)
	}
	for c := l.dial.head; c != nil && l.now-c.t >= int64(cfg.DialTimeout); c = l.dial.head {
		m.DialErrors.Inc()
		l.s.log.Warn("sniproxy: dial timed out")
		l.alert(c, l.version(c), alertInternalError)
	}
	for c := l.drain.head; c != nil && l.now-c.t >= int64(drainTime); c = l.drain.head {
		l.close(c)
	}
	if cfg.IdleTimeout > 0 {
		for c := l.relay.head; c != nil && l.now-c.t >= int64(cfg.IdleTimeout); c = l.relay.head {
			m.IdleClosed.Inc()
			l.close(c)
		}
	}
	// Each request is counted down only after its eviction has freed the
	// slot, so that the asking loop, which waits for the count to reach
	// zero, never sees neither room nor an outstanding request (and asks
	// twice for one connection).
	for l.evictReq.Load() > 0 {
		c := l.hello.head
		if c == nil || l.now-c.t < int64(l.s.evictAge) {
			l.evictReq.Store(0) // nothing to give; askers retry
			break
		}
		m.PendingEvicted.Inc()
		l.close(c)
		l.evictReq.Add(-1)
	}
	if !l.lnOn && l.now >= l.retry {
		if l.room() {
			_ = l.listen(true)
		} else {
			l.retry = l.now + int64(10*time.Millisecond)
			l.askEviction()
		}
	}
}

func (l *loop) version(c *lconn) uint16 {
	if c.hello != nil {
		return c.hello.RecordVersion()
	}
	return 0
}

// room reports whether a new connection can be admitted now: a slot is
// free, or the oldest pending hello is old enough to be evicted.
func (l *loop) room() bool {
	s := l.s
	if s.loopConns.Load() < int64(s.cfg.MaxConns) && l.hello.n < l.maxPending {
		return true
	}
	return l.evictable()
}

func (l *loop) accept() {
	s := l.s
	for range acceptMax {
		// A free slot is taken (reserved) before the accept, so that loops
		// accepting at once, and connections given to a loop that has not
		// taken them from its inbox yet, cannot exceed MaxConns. Without
		// one, the oldest pending hello of this loop may make way (admit
		// evicts it).
		reserved := l.reserve()
		if !(reserved && l.hello.n < l.maxPending) && !l.evictable() {
			if reserved {
				s.loopConns.Add(-1)
			}
			// Full: stop listening until a slot frees (or shortly, for
			// slots freed by other loops); the kernel queues meanwhile.
			// A loop holding pending hellos is asked to evict its oldest.
			_ = l.listen(false)
			l.retry = l.now + int64(10*time.Millisecond)
			l.askEviction()
			return
		}
		var (
			fd   int
			peer netip.AddrPort
			err  error
		)
		cerr := l.ln.Control(func(lfd uintptr) {
			fd, peer, err = rawAccept4(int(lfd))
		})
		if (cerr != nil || err != nil) && reserved {
			s.loopConns.Add(-1)
		}
		if cerr != nil {
			l.lnErr = cerr // closed under Serve: it returns the error
			return
		}
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue
		default: // EMFILE, ENFILE, ENOBUFS: retry a little later
			s.log.Warn("sniproxy: accept failed, retrying", "err", err)
			_ = l.listen(false)
			l.retry = l.now + int64(50*time.Millisecond)
			return
		}
		// Only a connection with a slot of its own is spread: one that
		// takes an evicted hello's place must stay with that hello's loop.
		if reserved {
			if t := l.balance(); t != l {
				t.give(fd, peer)
				continue
			}
		}
		l.admit(fd, peer, reserved)
	}
}

// reserve takes one of the MaxConns slots if one is free.
func (l *loop) reserve() bool {
	s := l.s
	for {
		n := s.loopConns.Load()
		if n >= int64(s.cfg.MaxConns) {
			return false
		}
		if s.loopConns.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// evictable reports whether this loop's oldest pending hello is old
// enough to make way for a new connection.
func (l *loop) evictable() bool {
	h := l.hello.head
	return h != nil && l.clock()-h.t >= int64(l.s.evictAge)
}

// balance picks the loop for a new connection: this one, unless another
// has at least two fewer (a burst of connections wakes one loop, which
// would otherwise take them all and leave the other cores idle).
func (l *loop) balance() *loop {
	best, n := l, l.count.Load()
	for _, p := range l.peers {
		if c := p.count.Load(); c+2 <= n && c < best.count.Load() {
			best = p
		}
	}
	return best
}

// give queues an accepted descriptor, which holds a reserved slot, for l
// and wakes it.
func (l *loop) give(fd int, peer netip.AddrPort) {
	l.count.Add(1) // counted now, so that a burst spreads
	l.inboxMu.Lock()
	l.inbox = append(l.inbox, accepted{fd, peer})
	l.inboxMu.Unlock()
	l.wake()
}

func (l *loop) takeInbox() {
	l.inboxMu.Lock()
	in := l.inbox
	l.inbox = nil
	l.inboxMu.Unlock()
	for _, a := range in {
		l.count.Add(-1) // admit counts it again
		if l.stop.Load() {
			l.s.loopConns.Add(-1)
			unix.Close(a.fd)
			continue
		}
		l.admit(a.fd, a.peer, true)
	}
}

// askEviction asks the loop with the most pending hellos to evict its
// oldest one, when this loop has none old enough.
func (l *loop) askEviction() {
	if l.asked != nil && l.asked.evictReq.Load() > 0 {
		return // the last request is still being served
	}
	if l.now-l.askedAt < int64(100*time.Millisecond) {
		return // served, and its slot perhaps taken by another loop: not too often
	}
	l.askedAt = l.now
	var best *loop
	for _, p := range l.peers {
		if p != l && p.pendingN.Load() > 0 && (best == nil || p.pendingN.Load() > best.pendingN.Load()) {
			best = p
		}
	}
	l.asked = best
	if best != nil {
		best.evictReq.Add(1)
		best.wake()
	}
}

// admit takes an accepted connection in; reserved says it holds a slot
// already (see accept), else it takes the place of the oldest pending
// hello.
func (l *loop) admit(fd int, peer netip.AddrPort, reserved bool) {
	s := l.s
	m := s.m
	m.Accepted.Inc()
	ip := sourceOf(peer.Addr())
	s.mu.Lock()
	if s.perIP[ip] >= s.cfg.MaxPendingPerIP {
		s.mu.Unlock()
		if reserved {
			s.loopConns.Add(-1)
		}
		m.RejectedPerIP.Inc()
		rawClose(fd)
		return
	}
	s.perIP[ip]++
	s.mu.Unlock()
	if !reserved {
		s.loopConns.Add(1)
	}
	if s.loopConns.Load() > int64(s.cfg.MaxConns) || l.hello.n >= l.maxPending {
		// accept found the oldest pending hello old enough to make way.
		if l.evictable() {
			m.PendingEvicted.Inc()
			l.close(l.hello.head)
		}
	}
	l.count.Add(1)
	c := &lconn{cfd: int32(fd), bfd: -1, ip: ip, peer: peer, t: l.now, helloT: l.now, inPending: true}
	l.addSlot(c)
	m.Active.Inc()
	m.Pending.Inc()
	l.hello.push(c)
	rawSetNoDelay(fd)
	if err := l.register(c, 0); err != nil {
		s.log.Warn("sniproxy: epoll_ctl", "err", err)
		l.close(c)
		return
	}
	c.cin = true // the hello may already be queued
	l.readHello(c)
}

func (l *loop) addSlot(c *lconn) {
	if n := len(l.free); n > 0 {
		c.slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		c.slot = int32(len(l.slots))
		l.slots = append(l.slots, nil)
	}
	l.gen++ // tells an event for a closed connection from one for its successor in the slot
	c.gen = l.gen
	l.slots[c.slot] = c
}

// register adds one of c's sockets (side 0 client, 1 backend) to the
// epoll set, once for its whole life.
func (l *loop) register(c *lconn, side int32) error {
	fd := c.cfd
	if side == 1 {
		fd = c.bfd
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: c.slot<<1 | side, Pad: c.gen}
	return rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
}

func (l *loop) event(c *lconn, side int32, ev uint32) {
	in, out := ev&evIn != 0, ev&evOut != 0
	if side == 0 {
		c.cin, c.cout = c.cin || in, c.cout || out
		c.chup = c.chup || ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	} else {
		c.bin, c.bout = c.bin || in, c.bout || out
	}
	switch c.state {
	case stHello:
		if side == 0 && in {
			l.readHello(c)
		}
	case stDial:
		if side == 1 {
			l.dialProgress(c, ev)
		} else if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			l.close(c) // the client is gone
		}
	case stRelay:
		l.pump(c)
	case stDrain:
		if side == 0 && in {
			l.drainRead(c)
		}
	}
}

// readHello reads what the client has sent, keeping only the bytes of an
// incomplete hello between reads (clienthello.Resume).
func (l *loop) readHello(c *lconn) {
	for c.cin {
		var eof bool
		h, partial, err := clienthello.Resume(c.partial, func(buf []byte) (int, error) {
			for {
				n, err := rawRead(int(c.cfd), buf)
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					c.cin = false
					return 0, nil
				case err != nil:
					return 0, fmt.Errorf("clienthello: read: %w", err)
				case n == 0:
					eof = true
				case n < len(buf) && !c.chup:
					// A short read took all that was queued; the
					// edge-triggered registration reports anything newer.
					// (Not after an end-of-stream edge: that edge may have
					// come with these bytes, and the EOF is read next.)
					c.cin = false
				}
				return n, nil
			}
		})
		c.partial = partial
		if err == nil {
			c.partial = nil
			l.routeHello(c, h)
			return
		}
		if !errors.Is(err, clienthello.ErrTruncated) {
			l.helloFailed(c, err)
			return
		}
		if eof {
			l.helloFailed(c, fmt.Errorf("%w (%w)", err, io.EOF))
			return
		}
	}
}

func (l *loop) helloFailed(c *lconn, err error) {
	l.leavePending(c)
	desc := l.s.helloVerdict(err)
	l.s.log.Debug("sniproxy: bad clienthello", "client", c.peer, "err", err)
	if desc == 0 {
		l.close(c)
		return
	}
	l.alert(c, 0, desc)
}

// leavePending ends c's pending accounting (hello list, per-IP count).
func (l *loop) leavePending(c *lconn) {
	if !c.inPending {
		return
	}
	c.inPending = false
	if c.list == &l.hello {
		l.hello.remove(c)
	}
	s := l.s
	s.mu.Lock()
	if s.perIP[c.ip] <= 1 {
		delete(s.perIP, c.ip)
	} else {
		s.perIP[c.ip]--
	}
	s.mu.Unlock()
	s.m.Pending.Dec()
}

func (l *loop) routeHello(c *lconn, h *clienthello.Hello) {
	s := l.s
	m := s.m
	l.leavePending(c)
	m.HelloSeconds.Observe(float64(l.now-c.helloT) / 1e9)
	name := h.ServerName()
	target, err := s.cfg.Router.Route(l.ctx, name)
	if err != nil {
		ver := h.RecordVersion()
		h.Release()
		l.alert(c, ver, s.routeFailed(name, err))
		return
	}
	m.Routed.Inc()
	if target.Dial != nil {
		l.handoff(c, h, target, name) // a custom dial (a tunnel stream) may block
		return
	}
	ap, perr := netip.ParseAddrPort(target.Addr)
	if perr != nil || ap.Addr().Zone() != "" {
		// A host name: resolve and dial on a goroutine. So too an
		// address with a zone (a link-local backend): its interface
		// index is looked up, not known from memory.
		l.handoff(c, h, target, name)
		return
	}
	c.hello = h
	if target.ProxyProtocol {
		hdr, err := l.proxyHeader(c, name)
		if err != nil {
			m.DialErrors.Inc()
			s.log.Warn("sniproxy: proxy header", "err", err)
			l.alert(c, h.RecordVersion(), alertInternalError)
			return
		}
		c.out = append(hdr, h.Raw()...)
	}
	if err := l.connect(c, ap); err != nil {
		m.DialErrors.Inc()
		s.log.Warn("sniproxy: dial failed", "name", name, "target", target.Addr, "err", err)
		l.alert(c, h.RecordVersion(), alertInternalError)
		return
	}
	c.state = stDial
	c.t = l.now
	l.dial.push(c)
}

func (l *loop) proxyHeader(c *lconn, name string) ([]byte, error) {
	local, err := rawGetsockname(int(c.cfd))
	if err != nil {
		return nil, err
	}
	h := proxyproto.Header{Command: proxyproto.Proxy, Source: c.peer, Destination: local, Authority: name}
	return h.AppendBinary(make([]byte, 0, 256+len(c.hello.Raw())))
}

// connect starts a non-blocking connect to ap; dialProgress finishes it.
func (l *loop) connect(c *lconn, ap netip.AddrPort) error {
	fam := unix.AF_INET
	if !ap.Addr().Unmap().Is4() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	rawSetNoDelay(fd)
	if err := rawConnect(fd, ap); err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		rawClose(fd)
		return err
	}
	c.bfd = int32(fd)
	if err := l.register(c, 1); err != nil {
		rawClose(fd)
		c.bfd = -1
		return err
	}
	return nil
}

// dialProgress handles an event on a connecting backend socket: once it is
// connected, the preamble (PROXY header and hello) is written, then relaying
// starts.
func (l *loop) dialProgress(c *lconn, ev uint32) {
	s := l.s
	if c.hello != nil && !c.bout {
		return
	}
	if c.hello != nil {
		if err := rawSocketError(int(c.bfd)); err != nil {
			s.m.DialErrors.Inc()
			s.log.Warn("sniproxy: dial failed", "err", err)
			l.alert(c, c.hello.RecordVersion(), alertInternalError)
			return
		}
		if c.out == nil {
			c.out = c.hello.Raw()
		}
		s.m.BytesUp.Add(float64(len(c.hello.Raw())))
	}
	for len(c.out) > 0 {
		n, err := rawWrite(int(c.bfd), c.out)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			c.bout = false
			l.keepPreamble(c)
			return
		}
		if err != nil {
			s.m.DialErrors.Inc()
			s.log.Warn("sniproxy: backend write failed", "err", err)
			l.close(c)
			return
		}
		c.out = c.out[n:]
	}
	if c.hello != nil {
		c.hello.Release()
		c.hello = nil
	}
	c.out = nil
	l.dial.remove(c)
	c.state = stRelay
	c.t = l.now
	l.relay.push(c)
	// The client's socket has not been written to yet. c.bin is kept: the
	// event that reported the connect may also have reported bytes or a
	// FIN the backend sent at once, and no new edge would come for them.
	// The client may have sent more after its hello (c.cin from readHello
	// says whether that read emptied it).
	c.cout = true
	l.pump(c)
}

// keepPreamble copies the unwritten preamble out of the pooled hello so the
// hello can go back to the pool while the backend is not writable.
func (l *loop) keepPreamble(c *lconn) {
	if c.hello != nil {
		c.out = append([]byte(nil), c.out...)
		c.hello.Release()
		c.hello = nil
	}
}

// pump moves what both directions can move now.
func (l *loop) pump(c *lconn) {
	busyUp, errUp := l.move(c, &c.up, c.cfd, c.bfd, &c.cin, &c.bout)
	busyDown, errDown := l.move(c, &c.down, c.bfd, c.cfd, &c.bin, &c.cout)
	if errUp != nil || errDown != nil {
		l.close(c)
		return
	}
	if c.up.eof && c.down.eof {
		l.close(c) // both ends finished: closing sends the last FIN
		return
	}
	if (busyUp || busyDown) && !c.queued {
		c.queued = true
		l.ready = append(l.ready, c)
	}
}

// move runs one direction: pipe → dst while dst takes it, src → pipe while
// src has bytes, up to burstLimit. It reports busy when it stopped at the
// limit with more to do. At src's end of stream it half-closes dst.
func (l *loop) move(c *lconn, d *ldir, src, dst int32, srcReady, dstReady *bool) (busy bool, err error) {
	budget := burstLimit
	moved := false
	defer func() {
		if moved {
			l.touch(c)
		}
	}()
	for {
		if d.p != nil && d.p.Data > 0 {
			if !*dstReady {
				return false, nil
			}
			n, err := rawSplice(d.p.R, int(dst), d.p.Data)
			switch err {
			case nil:
				d.p.Data -= n
				d.n += int64(n)
				moved = true
			case unix.EINTR:
			case unix.EAGAIN:
				*dstReady = false
				return false, nil
			default:
				return false, err
			}
			continue
		}
		if d.eof {
			return false, nil
		}
		if !*srcReady {
			l.putPipe(d)
			return false, nil
		}
		if budget <= 0 {
			return true, nil
		}
		if d.p == nil {
			p, err := l.pipes.Get()
			if err != nil {
				return false, err
			}
			d.p = p
		}
		n, err := rawSplice(int(src), d.p.W, pipes.Size)
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			*srcReady = false
			l.putPipe(d)
			return false, nil
		case err != nil:
			return false, err
		case n == 0:
			d.eof = true
			l.putPipe(d)
			if c.up.eof && c.down.eof {
				return false, nil // both ends done: closing sends the FIN
			}
			// The peer sees this direction end while the other goes on.
			if err := rawShutdown(int(dst), unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
				return false, err
			}
			return false, nil
		default:
			d.p.Data = n
			budget -= n
		}
	}
}

// touch marks c as active: it moves to the tail of the idle list.
func (l *loop) touch(c *lconn) {
	if c.t != l.now {
		c.t = l.now
		l.relay.remove(c)
		l.relay.push(c)
	}
}

func (l *loop) putPipe(d *ldir) {
	if d.p != nil {
		l.pipes.Put(d.p)
		d.p = nil
	}
}

// runReady gives directions that stopped at burstLimit another turn.
func (l *loop) runReady() {
	ready := l.ready
	l.ready = l.ready[len(l.ready):]
	for _, c := range ready {
		if c.slot < 0 || l.slots[c.slot] != c {
			continue
		}
		c.queued = false
		if c.state == stRelay {
			l.pump(c)
		}
	}
	if len(l.ready) == 0 {
		l.ready = ready[:0]
	}
}

// alert sends a fatal TLS alert, half-closes and reads what the client
// still sends for a moment, so that closing does not turn into a reset
// that could destroy the alert before the client reads it.
func (l *loop) alert(c *lconn, version uint16, desc byte) {
	l.leavePending(c)
	if c.list != nil {
		c.list.remove(c)
	}
	l.closeBackend(c)
	rec := alertRecord(version, desc)
	if _, err := rawWrite(int(c.cfd), rec[:]); err != nil {
		l.close(c)
		return
	}
	_ = rawShutdown(int(c.cfd), unix.SHUT_WR)
	c.state = stDrain
	c.t = l.now
	l.drain.push(c)
	c.cin = true
	l.drainRead(c)
}

func (l *loop) drainRead(c *lconn) {
	for c.cin {
		n, err := rawRead(int(c.cfd), l.scratch)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			c.cin = false
			return
		case err != nil || n == 0:
			l.close(c)
			return
		}
		c.drained += n
		if c.drained >= drainBytes {
			l.close(c)
			return
		}
	}
}

func (l *loop) closeBackend(c *lconn) {
	if c.hello != nil {
		c.hello.Release()
		c.hello = nil
	}
	c.out = nil
	if c.bfd >= 0 {
		rawClose(int(c.bfd))
		c.bfd = -1
	}
}

// close ends c: both sockets closed (which also removes them from the
// epoll set), its pipes and accounting released.
func (l *loop) close(c *lconn) {
	if c.slot < 0 {
		return
	}
	s := l.s
	l.leavePending(c)
	if c.list != nil {
		c.list.remove(c)
	}
	l.closeBackend(c)
	for _, d := range []*ldir{&c.up, &c.down} {
		if d.p != nil {
			l.pipes.Put(d.p)
			d.p = nil
		}
	}
	if c.up.n > 0 || c.down.n > 0 {
		s.m.BytesUp.Add(float64(c.up.n))
		s.m.BytesDown.Add(float64(c.down.n))
	}
	if c.cfd >= 0 {
		rawClose(int(c.cfd))
		c.cfd = -1
	}
	l.slots[c.slot] = nil
	l.free = append(l.free, c.slot)
	c.slot = -1
	s.loopConns.Add(-1)
	l.count.Add(-1)
	s.m.Active.Dec()
	if !l.lnOn && l.room() {
		_ = l.listen(true)
	}
}

// closeAll ends every connection of the loop (Serve is returning).
func (l *loop) closeAll() {
	for _, c := range l.slots {
		if c != nil {
			l.close(c)
		}
	}
	_ = l.listen(false)
	l.inboxMu.Lock()
	for _, a := range l.inbox {
		l.s.loopConns.Add(-1)
		unix.Close(a.fd)
	}
	l.inbox = nil
	l.inboxMu.Unlock()
}

// handoff passes a routed connection the loop cannot connect itself (a
// host name to resolve, or a Target.Dial such as a tunnel stream) to the
// goroutine path.
func (l *loop) handoff(c *lconn, h *clienthello.Hello, target Target, name string) {
	s := l.s
	// Leave the epoll set first: the duplicate net.FileConn makes keeps
	// the socket open, so closing the loop's descriptor would not remove
	// the registration, and every event of the handed-off connection
	// would go on waking this loop.
	_ = rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(c.cfd), nil)
	f := os.NewFile(uintptr(c.cfd), "client")
	nc, err := net.FileConn(f) // a duplicate descriptor owned by the runtime
	f.Close()                  // closes the loop's descriptor
	c.cfd = -1
	// The connection keeps its slot of MaxConns (loopConns, which the
	// loops admit by) until release; close gives the loop's up.
	s.loopConns.Add(1)
	l.close(c)
	if err != nil {
		s.loopConns.Add(-1)
		h.Release()
		s.m.DialErrors.Inc()
		s.log.Warn("sniproxy: handoff", "err", err)
		return
	}
	cs := &conn{c: nc, ip: c.ip, since: time.Now(), handedOff: l.handedOff}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.loopConns.Add(-1)
		h.Release()
		nc.Close()
		return
	}
	s.total++
	s.active.push(cs)
	cs.where = inActive
	s.wg.Add(1)
	l.handedOff.Add(1)
	s.mu.Unlock()
	s.m.Active.Inc()
	go s.dialAndRelay(l.ctx, cs, nc, h, target, name)
}
