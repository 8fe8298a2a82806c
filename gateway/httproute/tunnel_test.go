package httproute

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
)

type fakeTunnels struct {
	up      atomic.Bool
	backend string
	dials   atomic.Int64
}

func (f *fakeTunnels) Has(identity.ID) bool { return f.up.Load() }
func (f *fakeTunnels) Dial(ctx context.Context, _ identity.ID, service string, _ net.Addr) (net.Conn, error) {
	if service != TunnelService {
		return nil, net.UnknownNetworkError(service)
	}
	f.dials.Add(1)
	return (&net.Dialer{}).DialContext(ctx, "tcp", f.backend)
}

// TestTunnelBackend: a name whose http is "tunnel" is proxied over its
// owner's tunnel (service "http") when it has one, and answered at once
// with a 502 and a short body when it has none.
func TestTunnelBackend(t *testing.T) {
	var id identity.ID
	id[0], id[31] = 0xAB, 0x01
	tun := &fakeTunnels{backend: backend(t)}
	cfg := DefaultConfig(true)
	s := NewServer(mapRouter{"alice.ela.city": {Tunnel: id}}, cfg, nil)
	s.Tunnels = tun
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	addr := ln.Addr().String()

	res, body := do(t, addr, "GET", "alice.ela.city", "/", nil)
	if res.StatusCode != 502 || body != "node offline: it holds no tunnel to this supernode\n" || tun.dials.Load() != 0 {
		t.Fatalf("no tunnel: %d %q, %d dials", res.StatusCode, body, tun.dials.Load())
	}
	tun.up.Store(true)
	res, body = do(t, addr, "GET", "alice.ela.city", "/x", nil)
	if res.StatusCode != 200 || !strings.HasPrefix(body, "host=alice.ela.city path=/x xff=127.0.0.1") || tun.dials.Load() != 1 {
		t.Fatalf("through the tunnel: %d %q, %d dials", res.StatusCode, body, tun.dials.Load())
	}
	if got, ok := parseTunnelAddr(tunnelAddr(id)); !ok || got != id {
		t.Fatalf("tunnel address round trip: %v %v", got, ok)
	}
	for _, bad := range []string{"alice.ela.city:80", "ab.tunnel:80", strings.Repeat("zz", 32) + ".tunnel:80"} {
		if _, ok := parseTunnelAddr(bad); ok {
			t.Errorf("parseTunnelAddr(%q) accepted", bad)
		}
	}
}
