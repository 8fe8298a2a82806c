//go:build !linux

package portmap

import (
	"errors"
	"net/netip"
)

// DefaultGateway is only implemented on Linux; elsewhere set Config.Gateway.
func DefaultGateway() (netip.Addr, error) {
	return netip.Addr{}, errors.New("portmap: default gateway discovery is only implemented on Linux; set the gateway")
}
