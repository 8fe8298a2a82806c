package tunnel

import (
	"io"
	"net"
	"syscall"
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
