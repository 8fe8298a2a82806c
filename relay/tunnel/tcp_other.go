//go:build !linux

package tunnel

import (
	"net"
	"time"
)

// setUserTimeout is Linux only; elsewhere TCP keep-alive alone finds a
// dead peer, and unacknowledged data fails at the system's retransmission
// limit.
func setUserTimeout(net.Conn, time.Duration) {}
