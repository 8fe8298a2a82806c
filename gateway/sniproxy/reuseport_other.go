//go:build !unix

package sniproxy

import (
	"errors"
	"syscall"
)

func reusePort(_, _ string, _ syscall.RawConn) error {
	return errors.New("sniproxy: SO_REUSEPORT is not available here")
}
