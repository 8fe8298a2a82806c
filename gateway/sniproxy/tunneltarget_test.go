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

// wrappedTCP is a tunnel data connection as relay/tunnel returns it: a TCP
// socket that the relay may splice (TCP), wrapped so that its Close runs.
type wrappedTCP struct {
	*net.TCPConn
	closes *atomic.Int32
}

func (w wrappedTCP) TCP() *net.TCPConn { return w.TCPConn }
func (w wrappedTCP) Close() error      { w.closes.Add(1); return w.TCPConn.Close() }

type wrappingTunnels struct {
	backend string
	closes  atomic.Int32
}

func (f *wrappingTunnels) Has(identity.ID) bool { return true }
func (f *wrappingTunnels) Dial(ctx context.Context, _ identity.ID, _ string, _ net.Addr) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", f.backend)
	if err != nil {
		return nil, err
	}
	return wrappedTCP{c.(*net.TCPConn), &f.closes}, nil
}

// TestWrappedTCPBackend: a tunnel target that returns a wrapped TCP socket
// (a data connection) is relayed like any TCP backend, and the wrapper's
// Close, which returns the node's stream quota, runs exactly once when the
// visitor leaves.
func TestWrappedTCPBackend(t *testing.T) {
	cert, pool := newCert(t)
	backend := listen(t)
	tlsBackend(t, backend, cert, false, nil)
	tun := &wrappingTunnels{backend: backend.Addr().String()}
	e := startProxy(t, sniproxy.Config{Router: sniproxy.NewTunnelRouter(oneName{target: sniproxy.TunnelTarget}, oneName{}, tun, false)}, false)
	d := &net.Dialer{Timeout: 5 * time.Second, Deadline: time.Now().Add(5 * time.Second)}
	c, err := tls.DialWithDialer(d, "tcp", e.proxyAddr, clientConfig(pool))
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, c)
	if n := tun.closes.Load(); n != 0 {
		t.Fatalf("backend closed %d times while the visitor is connected", n)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for tun.closes.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := tun.closes.Load(); n != 1 {
		t.Fatalf("wrapper closed %d times, want 1", n)
	}
}
