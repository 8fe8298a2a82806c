package sniproxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/elacity/pc2/core/pipes"
)

// relay moves bytes between two *net.TCPConn with splice(2). Each
// direction (half) runs on a goroutine while bytes flow:
//
//	splice(src → pipe)  as much as is queued, up to pipes.Size
//	splice(pipe → dst)  until the pipe is empty
//
// waiting in Go's netpoller when src has nothing or dst is full. The pipe
// comes from a small free list and goes back whenever src runs dry, so a
// quiet direction holds none. A direction that has waited ParkAfter for
// its source (the read deadline set when it starts waiting) hands the
// socket to the parker and its goroutine exits: an idle connection holds
// no goroutine, only this struct, its sockets and an epoll registration.
// The parker starts a goroutine again when bytes arrive.
type relay struct {
	s        *Server
	cs       *conn
	up, down half
	// client and backend as given, closed at the end (a wrapper's Close
	// must run, see tcpOf)
	client, backend net.Conn
	lastMove        atomic.Int64 // unix ns of the last burst either way
	left            atomic.Int32 // halves not finished
	shutOnce        sync.Once

	imu      sync.Mutex
	parkedN  int         // halves parked (guarded by imu)
	idle     *time.Timer // armed while both halves are parked
	finished bool
}

type half struct {
	r        *relay
	src, dst *net.TCPConn
	srcRC    syscall.RawConn
	dstRC    syscall.RawConn
	srcFD    int32
	p        *pipes.Pipe
	n        int64  // bytes moved; read by the last finisher
	added    bool   // srcFD is in the parker's epoll set
	copyBuf  []byte // only when no pipe could be made (descriptor limit)
}

var (
	errEOF     = errors.New("eof")
	errPark    = errors.New("park")
	errStalled = errors.New("stalled")
)

func (s *Server) startRelay(cs *conn, client, backend net.Conn) {
	ct, cok := tcpOf(client)
	bt, bok := tcpOf(backend)
	if !cok || !bok {
		s.startCopyRelay(cs, client, backend)
		return
	}
	crc, err1 := ct.SyscallConn()
	brc, err2 := bt.SyscallConn()
	cfd, err3 := rawFD(crc)
	bfd, err4 := rawFD(brc)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		s.startCopyRelay(cs, client, backend)
		return
	}
	r := &relay{s: s, cs: cs, client: client, backend: backend}
	r.up = half{r: r, src: ct, dst: bt, srcRC: crc, dstRC: brc, srcFD: cfd}
	r.down = half{r: r, src: bt, dst: ct, srcRC: brc, dstRC: crc, srcFD: bfd}
	r.left.Store(2)
	r.lastMove.Store(time.Now().UnixNano())
	cs.setRelay(r)
	// The setup goroutine carries one direction: one goroutine fewer to
	// start per connection. Its grown stack goes when that direction parks.
	go r.up.run()
	r.down.run()
}

// tcpOf returns the TCP socket under c: c itself, or the one a wrapper
// exposes because it must still see Close (a tunnel data connection
// counts its node's visitors).
func tcpOf(c net.Conn) (*net.TCPConn, bool) {
	switch t := c.(type) {
	case *net.TCPConn:
		return t, true
	case interface{ TCP() *net.TCPConn }:
		tc := t.TCP()
		return tc, tc != nil
	}
	return nil, false
}

func rawFD(rc syscall.RawConn) (int32, error) {
	var fd int32
	err := rc.Control(func(f uintptr) { fd = int32(f) })
	return fd, err
}

// shutdown wakes both halves wherever they wait (netpoller or parker) by
// shutting both sockets down; the last half to finish closes them.
func (r *relay) shutdown() {
	r.shutOnce.Do(func() {
		for _, rc := range []syscall.RawConn{r.up.srcRC, r.down.srcRC} {
			_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
		}
	})
}

// waitFor returns how long a half waits for its source before it parks
// (park true) or checks whether the connection is idle; 0: forever.
func (r *relay) waitFor() (d time.Duration, park bool) {
	cfg := &r.s.cfg
	if cfg.ParkAfter > 0 && (cfg.IdleTimeout <= 0 || cfg.ParkAfter < cfg.IdleTimeout) {
		return cfg.ParkAfter, true
	}
	return max(cfg.IdleTimeout, 0), false
}

func (h *half) run() {
	for {
		err := h.burst()
		switch err {
		case nil:
			continue
		case errPark:
			if h.park() == nil {
				return // the parker runs h again
			}
			continue // could not park: wait in the netpoller instead
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if h.r.idleFor() < h.r.s.cfg.IdleTimeout {
				// The other direction is busy: clear the expired
				// deadline (the next wait arms a new one) and go on.
				if err := h.src.SetReadDeadline(time.Time{}); err == nil {
					continue
				}
			}
			err = errStalled
		}
		if err == errStalled {
			h.r.idleClose()
		}
		h.end(err)
		return
	}
}

// burst moves what src has queued to dst. It returns errEOF at the end
// of the stream, errPark after waiting ParkAfter, a deadline error when
// the wait for src ran out without parking, errStalled when dst accepted
// nothing for IdleTimeout, or the socket error.
func (h *half) burst() error {
	var (
		n    int
		serr error
	)
	rerr := h.srcRC.Read(func(fd uintptr) bool {
		if h.p == nil {
			p, err := pipes.Shared.Get()
			if err != nil {
				n, serr = h.copyBurst(int(fd))
				if serr == unix.EAGAIN {
					serr = nil
					return h.wait()
				}
				return true
			}
			h.p = p
		}
		for {
			m, err := unix.Splice(int(fd), nil, h.p.W, nil, pipes.Size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch err {
			case nil:
				n = int(m)
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				// Nothing queued: give the pipe back before waiting.
				pipes.Shared.Put(h.p)
				h.p = nil
				return h.wait()
			default:
				serr = err
				return true
			}
		}
	})
	if rerr != nil {
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			if _, park := h.r.waitFor(); park {
				return errPark
			}
		}
		return rerr
	}
	if serr != nil {
		return serr
	}
	if n == 0 {
		return errEOF
	}
	h.n += int64(n)
	h.r.lastMove.Store(time.Now().UnixNano())
	if h.p == nil {
		return nil // moved by copyBurst
	}
	h.p.Data = n
	var werr error
	waited := false
	rerr = h.dstRC.Write(func(fd uintptr) bool {
		for h.p.Data > 0 {
			m, err := unix.Splice(h.p.R, nil, int(fd), nil, h.p.Data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch err {
			case nil:
				h.p.Data -= int(m)
			case unix.EINTR:
			case unix.EAGAIN:
				// dst is full: a reader that takes nothing for
				// IdleTimeout is as good as gone.
				if t := h.r.s.cfg.IdleTimeout; t > 0 {
					_ = h.dst.SetWriteDeadline(time.Now().Add(t))
					waited = true
				}
				return false
			default:
				werr = err
				return true
			}
		}
		return true
	})
	if waited {
		_ = h.dst.SetWriteDeadline(time.Time{})
	}
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		return errStalled
	}
	return errors.Join(rerr, werr)
}

// wait arms the read deadline that ends the coming wait for src (to park,
// or to check for idleness) and returns false so that the RawConn waits.
func (h *half) wait() bool {
	if d, _ := h.r.waitFor(); d > 0 {
		_ = h.src.SetReadDeadline(time.Now().Add(d))
	}
	return false
}

// copyBurst is the fallback for when no pipe can be made (out of
// descriptors): one read and a full write through a user-space buffer.
func (h *half) copyBurst(fd int) (int, error) {
	if h.copyBuf == nil {
		h.copyBuf = make([]byte, 32<<10)
	}
	n, err := unix.Read(fd, h.copyBuf)
	if err != nil {
		return 0, err
	}
	if n > 0 {
		if _, err := h.dst.Write(h.copyBuf[:n]); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// park hands src to the parker; on success the goroutine must return
// without touching h, which then belongs to whichever goroutine the parker
// starts.
func (h *half) park() error {
	if h.p != nil {
		pipes.Shared.Put(h.p)
		h.p = nil
	}
	if err := h.src.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	pk, err := sharedParker()
	if err != nil {
		return err
	}
	h.copyBuf = nil
	h.r.parked(+1)
	wasAdded := h.added
	h.added = true
	if err := pk.park(h.srcFD, wasAdded, h); err != nil {
		h.added = wasAdded
		h.r.parked(-1)
		return err
	}
	return nil
}

// wake is called by the parker on a new goroutine when src is readable.
func (h *half) wake() {
	h.r.parked(-1)
	h.run()
}

// parked counts halves going to (+1) or leaving (-1) the parker and keeps
// the idle timer armed exactly while both are parked.
func (r *relay) parked(delta int) {
	t := r.s.cfg.IdleTimeout
	r.imu.Lock()
	defer r.imu.Unlock()
	r.parkedN += delta
	switch {
	case t <= 0 || r.finished:
	case r.parkedN == 2:
		wait := max(t-r.idleFor(), time.Millisecond)
		if r.idle == nil {
			r.idle = time.AfterFunc(wait, r.idleCheck)
		} else {
			r.idle.Reset(wait)
		}
	case r.idle != nil:
		r.idle.Stop()
	}
}

func (r *relay) idleFor() time.Duration {
	return time.Duration(time.Now().UnixNano() - r.lastMove.Load())
}

// idleCheck runs when both halves have been parked for the rest of the
// idle timeout.
func (r *relay) idleCheck() {
	r.imu.Lock()
	if r.parkedN != 2 || r.finished {
		r.imu.Unlock()
		return
	}
	if rest := r.s.cfg.IdleTimeout - r.idleFor(); rest > 0 {
		r.idle.Reset(rest)
		r.imu.Unlock()
		return
	}
	r.imu.Unlock()
	r.idleClose()
}

// idleClose counts the connection as idle-closed (once) and shuts it down.
func (r *relay) idleClose() {
	r.imu.Lock()
	first := !r.finished
	r.finished = true
	r.imu.Unlock()
	if first {
		r.s.m.IdleClosed.Inc()
	}
	r.shutdown()
}

// end finishes the half: at EOF the end of stream is passed on with a
// half-close so the other direction goes on; on error both sockets are
// shut down. The last half closes both and releases the connection.
func (h *half) end(err error) {
	if h.p != nil {
		pipes.Shared.Put(h.p)
		h.p = nil
	}
	r := h.r
	last := r.left.Add(-1) == 0
	// At EOF the peer must see the end of this direction while the other
	// goes on (half-close); the last half skips that, as closing both
	// sockets below sends the FIN anyway.
	if err != errEOF || (!last && h.dst.CloseWrite() != nil) {
		r.shutdown()
	}
	if !last {
		return
	}
	r.imu.Lock()
	r.finished = true
	if r.idle != nil {
		r.idle.Stop()
	}
	r.imu.Unlock()
	r.s.m.BytesUp.Add(float64(r.up.n))
	r.s.m.BytesDown.Add(float64(r.down.n))
	r.client.Close()
	r.backend.Close()
	r.s.release(r.cs)
}
