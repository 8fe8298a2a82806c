//go:build !linux

package sniproxy

import "net"

func (s *Server) startRelay(cs *conn, client, backend net.Conn) {
	s.startCopyRelay(cs, client, backend)
}
