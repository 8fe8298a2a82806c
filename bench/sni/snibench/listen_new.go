package main

import (
	"context"
	"net"

	"github.com/elacity/pc2/gateway/sniproxy"
)

// listenProxy opens the proxy's listeners (a separate file so that an
// older gateway/sniproxy without Listen can be built for A/B runs by
// swapping in listen_old.go).
func listenProxy(ctx context.Context, addr string, n int) ([]net.Listener, error) {
	return sniproxy.Listen(ctx, addr, n)
}
