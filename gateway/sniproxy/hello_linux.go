package sniproxy

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"

	"github.com/elacity/pc2/gateway/clienthello"
)

// readHello waits for a complete ClientHello on c, bounded by c's read
// deadline. On a TCP socket it reads straight into a pooled Hello when
// bytes are queued and, while the hello is incomplete, keeps only the
// bytes received so far (clienthello.Resume): a connection that never
// finishes its hello holds what it sent, not a 16 KiB buffer, and leaves
// nothing queued in the kernel.
func readHello(c net.Conn) (*clienthello.Hello, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return clienthello.Read(c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return clienthello.Read(c)
	}
	var (
		h       *clienthello.Hello
		partial []byte
		herr    error
	)
	err = rc.Read(func(fd uintptr) bool {
		for {
			var eof, again bool
			h, partial, herr = clienthello.Resume(partial, func(buf []byte) (int, error) {
				for {
					n, err := unix.Read(int(fd), buf)
					switch {
					case err == unix.EINTR:
						continue
					case err == unix.EAGAIN:
						again = true
						return 0, nil
					case err != nil:
						return 0, fmt.Errorf("clienthello: read: %w", err)
					case n == 0:
						eof = true
					}
					return n, nil
				}
			})
			if herr == nil || !errors.Is(herr, clienthello.ErrTruncated) {
				return true // complete, or malformed, too large, a socket error
			}
			if eof {
				herr = fmt.Errorf("%w (%w)", herr, io.EOF)
				return true
			}
			if again {
				herr = nil
				return false // incomplete: wait for more bytes
			}
			// Bytes came but not the whole hello: read on until the socket
			// is empty, as the poller only reports what arrives later.
		}
	})
	if err != nil {
		return nil, err // the hello deadline, or the socket was shut down
	}
	return h, herr
}
