package sniproxy

import (
	"context"
	"fmt"
	"net"
)

// Listen opens n TCP listeners on addr for Serve (run one Serve per
// listener). With n > 1 they share the port with SO_REUSEPORT, so the
// kernel spreads new connections over n accept loops instead of one
// (Linux and the BSDs). Accepted connections get no TCP keep-alive: the
// relay's idle timeout already finds dead peers, and keep-alive would
// cost four setsockopt calls per connection.
func Listen(ctx context.Context, addr string, n int) ([]net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	if n > 1 {
		lc.Control = reusePort
	}
	lns := make([]net.Listener, 0, max(n, 1))
	for range max(n, 1) {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("sniproxy: listen: %w", err)
		}
		lns = append(lns, ln)
		if n > 1 && addr != ln.Addr().String() {
			addr = ln.Addr().String() // port 0: the others join the first's port
		}
	}
	return lns, nil
}
