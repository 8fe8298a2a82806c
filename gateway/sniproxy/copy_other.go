//go:build !linux

package sniproxy

import (
	"io"
	"net"
)

// copyConn is io.Copy where there is no splice to manage.
func copyConn(dst, src net.Conn) (int64, error) { return io.Copy(dst, src) }
