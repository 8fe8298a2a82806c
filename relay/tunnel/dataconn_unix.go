//go:build unix

package tunnel

import (
	"net"

	"golang.org/x/sys/unix"
)

// dataConnGone reports whether an idle data connection was closed or reset
// by the node, or sent bytes it must not send: a node writes nothing
// before the supernode's header, so anything readable means the
// connection is unusable. One non-blocking peek.
func dataConnGone(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	gone := true
	err = rc.Control(func(fd uintptr) {
		var b [1]byte
		_, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		gone = rerr != unix.EAGAIN && rerr != unix.EWOULDBLOCK
	})
	return err != nil || gone
}
