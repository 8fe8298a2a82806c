package tunnel

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/elacity/pc2/core/pipes"
)

// copyFromTCP copies src to dst and holds a pooled buffer only while
// reading queued bytes: each read happens inside RawConn.Read, and when
// the socket has nothing queued (EAGAIN) the buffer goes back to the pool
// before the goroutine parks in the netpoller. Same syscalls as a plain
// read loop; an idle connection holds no buffer.
func copyFromTCP(dst io.Writer, src *net.TCPConn) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return copyPooled(dst, src)
	}
	var total int64
	for {
		var (
			bp   *[]byte
			n    int
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			if bp == nil {
				bp = copyBufs.Get().(*[]byte)
			}
			for {
				n, rerr = syscall.Read(int(fd), *bp)
				if rerr != syscall.EINTR {
					break
				}
			}
			if rerr == syscall.EAGAIN {
				copyBufs.Put(bp)
				bp = nil
				return false // park without a buffer
			}
			return true
		})
		if err == nil && rerr != nil {
			err = rerr
		}
		if err != nil {
			if bp != nil {
				copyBufs.Put(bp)
			}
			return total, err
		}
		if n <= 0 { // EOF
			copyBufs.Put(bp)
			return total, nil
		}
		_, werr := dst.Write((*bp)[:n])
		copyBufs.Put(bp)
		total += int64(n)
		if werr != nil {
			return total, werr
		}
	}
}

// copyTCP moves src to dst with splice(2) through a pipe from the shared
// pool, taken only while src has bytes queued (Go's own TCPConn.ReadFrom
// splices too, but holds its pipes, two descriptors each, for the whole
// connection: idle visitors would each keep two). Without a pipe (out of
// descriptors) it copies through user space.
func copyTCP(dst, src *net.TCPConn) (int64, error) {
	srcRC, err1 := src.SyscallConn()
	dstRC, err2 := dst.SyscallConn()
	if err1 != nil || err2 != nil {
		return copyFromTCP(dst, src)
	}
	var total int64
	for {
		var (
			p    *pipes.Pipe
			serr error
		)
		err := srcRC.Read(func(fd uintptr) bool {
			if p == nil {
				if p, serr = pipes.Shared.Get(); serr != nil {
					return true
				}
			}
			for {
				n, err := unix.Splice(int(fd), nil, p.W, nil, pipes.Size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				switch err {
				case nil:
					p.Data = int(n)
					return true
				case unix.EINTR:
					continue
				case unix.EAGAIN:
					pipes.Shared.Put(p) // nothing queued: wait without it
					p = nil
					return false
				}
				serr = err
				return true
			}
		})
		if p == nil && serr != nil && err == nil {
			// No pipe: this burst goes through user space.
			n, cerr := copyFromTCP(dst, src)
			return total + n, cerr
		}
		if err == nil {
			err = serr
		}
		if err != nil || p.Data == 0 {
			if p != nil {
				pipes.Shared.Put(p)
			}
			return total, err // nil at EOF
		}
		total += int64(p.Data)
		var werr error
		err = dstRC.Write(func(fd uintptr) bool {
			for p.Data > 0 {
				n, err := unix.Splice(p.R, nil, int(fd), nil, p.Data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				switch err {
				case nil:
					p.Data -= int(n)
				case unix.EINTR:
				case unix.EAGAIN:
					return false // dst full: wait for room
				default:
					werr = err
					return true
				}
			}
			return true
		})
		pipes.Shared.Put(p) // closed, with its bytes, if the write failed
		if err == nil {
			err = werr
		}
		if err != nil {
			return total, err
		}
	}
}
