package sniproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// copyConn copies src to dst until EOF, returning (n, nil) at EOF like
// io.Copy. Between two *net.TCPConn it splices burst by burst: it waits
// for readability without holding anything, asks the kernel how many bytes
// are queued, and lets Go's splice path move exactly those. A plain io.Copy
// would also splice, but it keeps its pipe (two descriptors) for the whole
// life of the connection, even while idle; with thousands of idle
// connections that doubles the descriptors and pins pipe memory.
func copyConn(dst, src net.Conn) (int64, error) {
	s, sok := src.(*net.TCPConn)
	d, dok := dst.(*net.TCPConn)
	if !sok || !dok {
		return io.Copy(dst, src)
	}
	rc, err := s.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	var total int64
	lr := io.LimitedReader{R: s}
	for {
		var (
			avail int
			eof   bool
			errno error
			peek  [1]byte
		)
		werr := rc.Read(func(fd uintptr) bool {
			n, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&peek[0])), 1,
				unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
			switch {
			case e == unix.EAGAIN:
				return false // nothing queued: park in the netpoller, no pipe held
			case e == unix.EINTR:
				return false
			case e != 0:
				errno = e
			case n == 0:
				eof = true
			default:
				avail, errno = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			}
			return true
		})
		switch {
		case werr != nil:
			return total, werr
		case errno != nil:
			return total, fmt.Errorf("sniproxy: read: %w", errno)
		case eof:
			return total, nil
		}
		lr.N = int64(max(avail, 1))
		n, err := d.ReadFrom(&lr)
		total += n
		if err != nil {
			return total, err
		}
		if n == 0 {
			// Bytes were queued yet splice moved none (it reads 0 as
			// EOF): let a plain read tell EOF, error or data apart.
			rn, rerr := s.Read(peek[:])
			if rn > 0 {
				if _, err := d.Write(peek[:rn]); err != nil {
					return total, err
				}
				total += int64(rn)
				continue
			}
			if errors.Is(rerr, io.EOF) {
				return total, nil
			}
			return total, rerr
		}
	}
}
