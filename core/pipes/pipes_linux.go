// Package pipes keeps a free list of kernel pipes for splice(2) relays:
// the SNI gateway and the tunnel's data connections move bytes socket →
// pipe → socket without copying them through user space, and take a pipe
// only while a burst is in flight, so a quiet connection holds none.
package pipes

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Size is the capacity asked for each splice pipe (F_SETPIPE_SZ), so
// one burst moves up to this much with two splice calls. 1 MiB used 25-30%
// less proxy CPU per byte than 256 KiB and half as much as the default 64
// KiB in bench/sni (the splice calls and their wakeups are what a pipe
// size changes). A pipe holds bytes only while a burst is in flight.
const Size = 1 << 20

// maxFree bounds the pipes a pool keeps for reuse: a pipe is only
// held while a burst is in flight, so a handful is enough; more would only
// keep descriptors open.
const maxFree = 32

// Pipe is a non-blocking pipe: splice into W, out of R.
type Pipe struct {
	R, W int
	Data int // bytes spliced in and not yet out
}

// Pool is a free list of empty pipes. The zero value is ready.
type Pool struct {
	mu   sync.Mutex
	free []*Pipe
}

// Shared serves goroutine relays; an event loop may keep its own Pool.
var Shared Pool

// Get returns an empty pipe from the free list or a new one.
func (pp *Pool) Get() (*Pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	// A smaller pipe still works, with more calls per byte; the limit is
	// /proc/sys/fs/pipe-max-size and, unprivileged, pipe-user-pages-soft.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, Size)
	return &Pipe{R: fds[0], W: fds[1]}, nil
}

// Put keeps an empty pipe for reuse; one still holding bytes (the burst
// failed halfway) is closed, which drops them.
func (pp *Pool) Put(p *Pipe) {
	if p.Data == 0 {
		pp.mu.Lock()
		if len(pp.free) < maxFree {
			pp.free = append(pp.free, p)
			pp.mu.Unlock()
			return
		}
		pp.mu.Unlock()
	}
	p.Close()
}

// Close closes both ends.
func (p *Pipe) Close() {
	unix.Close(p.R)
	unix.Close(p.W)
}

// Drain closes every pooled pipe.
func (pp *Pool) Drain() {
	pp.mu.Lock()
	free := pp.free
	pp.free = nil
	pp.mu.Unlock()
	for _, p := range free {
		p.Close()
	}
}
