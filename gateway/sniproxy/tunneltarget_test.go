package sniproxy_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/sniproxy"
)

type oneName struct {
	target string
	owner  identity.ID
}

func (n oneName) TLSTarget(name string) (string, bool)  { return n.target, name == testName }
func (n oneName) Owner(name string) (identity.ID, bool) { return n.owner, name == testName }

type fakeTunnels struct {
	up      atomic.Bool
	backend string
}

func (f *fakeTunnels) Has(identity.ID) bool { return f.up.Load() }
func (f *fakeTunnels) Dial(ctx context.Context, _ identity.ID, service string, _ net.Addr) (net.Conn, error) {
	if service != sniproxy.TunnelService {
		return nil, net.UnknownNetworkError(service)
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", f.backend)
	if err != nil {
		return nil, err
	}
	return nonTCPConn{c}, nil
}

// TestTunnelTarget: a name registered with the target "tunnel" is served
// through its owner's tunnel when it has one here, and refused at once
// with a TLS internal_error alert when it has none (no dial, no hang).
func TestTunnelTarget(t *testing.T) {
	for _, tc := range []struct {
		name       string
		configDial bool // a Config.Dial selects the goroutine path
	}{{"loops", false}, {"goroutines", true}} {
		t.Run(tc.name, func(t *testing.T) { testTunnelTarget(t, tc.configDial) })
	}
}

func testTunnelTarget(t *testing.T, configDial bool) {
	cert, pool := newCert(t)
	backend := listen(t)
	tlsBackend(t, backend, cert, false, nil)
	tun := &fakeTunnels{backend: backend.Addr().String()}
	cfg := sniproxy.Config{Router: sniproxy.NewTunnelRouter(oneName{target: sniproxy.TunnelTarget}, oneName{}, tun, false)}
	if configDial {
		cfg.Dial = func(context.Context, string) (net.Conn, error) {
			t.Error("dialled the placeholder target of a tunnel-only name")
			return nil, net.ErrClosed
		}
	}
	e := startProxy(t, cfg, false)

	d := &net.Dialer{Timeout: 5 * time.Second, Deadline: time.Now().Add(5 * time.Second)}
	_, err := tls.DialWithDialer(d, "tcp", e.proxyAddr, clientConfig(pool))
	if err == nil || !strings.Contains(err.Error(), "tls: internal error") {
		t.Fatalf("no tunnel: err = %v, want tls: internal error", err)
	}
	if metrics.Value(e.m.RouteErrors) != 1 {
		t.Fatalf("RouteErrors = %v", metrics.Value(e.m.RouteErrors))
	}

	tun.up.Store(true)
	c, err := tls.DialWithDialer(d, "tcp", e.proxyAddr, clientConfig(pool))
	if err != nil {
		t.Fatalf("with a tunnel: %v", err)
	}
	defer c.Close()
	echoOnce(t, c)
}
