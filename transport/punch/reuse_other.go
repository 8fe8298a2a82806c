//go:build !unix

package punch

import (
	"errors"
	"syscall"
)

// reuseControl: TCP hole punching needs SO_REUSEPORT, which only unix
// systems offer.
func reuseControl(network, address string, c syscall.RawConn) error {
	return errors.New("punch: SO_REUSEPORT is not available on this system")
}
