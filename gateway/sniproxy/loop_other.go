//go:build !linux

package sniproxy

import (
	"context"
	"errors"
	"net"
)

func (s *Server) loopsFor(net.Listener) (*net.TCPListener, bool) { return nil, false }

func (s *Server) serveLoops(context.Context, *net.TCPListener) error {
	return errors.New("sniproxy: no event loops on this system")
}
