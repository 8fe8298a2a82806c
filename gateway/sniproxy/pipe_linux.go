package sniproxy

import (
	"sync"

	"golang.org/x/sys/unix"
)

// pipeSize is the capacity asked for each splice pipe (F_SETPIPE_SZ). One
// burst moves at most this much with two splice calls. 256 KiB measured as
// fast as 1 MiB for 1 and 8 streams on loopback (bench/RESULTS.md) while a
// stalled reader can pin at most a quarter as much kernel memory per
// direction; the default 64 KiB needed 4x the syscalls per byte.
const pipeSize = 256 << 10

// maxFreePipes bounds the pipes kept for reuse. A pipe is only held while
// a burst is in flight, so a handful per core is enough; more would only
// keep descriptors open.
const maxFreePipes = 64

type pipe struct {
	r, w int
	data int // bytes spliced in and not yet out
}

var pipes struct {
	mu   sync.Mutex
	free []*pipe
}

// getPipe returns an empty pipe from the free list or a new one.
func getPipe() (*pipe, error) {
	pipes.mu.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.mu.Unlock()
		return p, nil
	}
	pipes.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	// A smaller pipe still works, with more calls per byte; the limit is
	// /proc/sys/fs/pipe-max-size and, unprivileged, pipe-user-pages-soft.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe keeps an empty pipe for reuse; one still holding bytes (the
// burst failed halfway) is closed, which drops them.
func putPipe(p *pipe) {
	if p.data == 0 {
		pipes.mu.Lock()
		if len(pipes.free) < maxFreePipes {
			pipes.free = append(pipes.free, p)
			pipes.mu.Unlock()
			return
		}
		pipes.mu.Unlock()
	}
	unix.Close(p.r)
	unix.Close(p.w)
}
