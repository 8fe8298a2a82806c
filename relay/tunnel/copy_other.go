//go:build !linux

package tunnel

import (
	"io"
	"net"
)

func copyFromTCP(dst io.Writer, src *net.TCPConn) (int64, error) { return copyPooled(dst, src) }

func copyTCP(dst, src *net.TCPConn) (int64, error) { return copyPooled(dst, src) }
