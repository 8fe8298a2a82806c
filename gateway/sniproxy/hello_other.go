//go:build !linux

package sniproxy

import (
	"net"

	"github.com/elacity/pc2/gateway/clienthello"
)

// readHello reads the ClientHello into a pooled buffer (no MSG_PEEK path
// off Linux).
func readHello(c net.Conn) (*clienthello.Hello, error) { return clienthello.Read(c) }
