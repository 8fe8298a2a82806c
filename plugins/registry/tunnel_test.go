package registry_test

import (
	"context"
	"testing"

	"github.com/elacity/pc2/gateway/sniproxy"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// TestTunnelTargetRoutes: a name registered with target and http
// "tunnel" passes the address policy (no private-address exemption
// needed), survives a restart, gives the SNI router the word the gateway
// knows, gives the HTTP router the owner to reach through its tunnel, and
// has no direct DNS answer.
func TestTunnelTargetRoutes(t *testing.T) {
	if wire.TargetTunnel != sniproxy.TunnelTarget {
		t.Fatalf("wire.TargetTunnel %q != sniproxy.TunnelTarget %q", wire.TargetTunnel, sniproxy.TunnelTarget)
	}
	e := newEnv(t, func(o *registry.Options, _ *registry.APIOptions) { o.AllowPrivateTargets = false })
	kp := key(t, 1)
	if _, err := e.client(kp).Register(context.Background(), client.Registration{Name: "alice.ela.city", Target: wire.TargetTunnel, HTTP: wire.TargetTunnel}); err != nil {
		t.Fatal(err)
	}
	_, err := e.client(kp).Register(context.Background(), client.Registration{Name: "alice.ela.city", Target: wire.TargetTunnel, DNSDirect: true})
	wantCode(t, err, wire.CodeBadRequest)
	e.reopen()
	if addr, ok := e.reg.TLSTarget("alice.ela.city"); !ok || addr != sniproxy.TunnelTarget {
		t.Fatalf("TLSTarget = %q %v", addr, ok)
	}
	if b, ok := e.reg.HTTPBackend([]byte("alice.ela.city")); !ok || b.Tunnel != kp.ID() || b.Addr != "" {
		t.Fatalf("HTTPBackend = %+v %v", b, ok)
	}
	if owner, ok := e.reg.Owner("alice.ela.city"); !ok || owner != kp.ID() {
		t.Fatalf("Owner = %v %v", owner, ok)
	}
	if addrs, ok := e.reg.LookupName("alice.ela.city"); !ok || len(addrs) != 0 {
		t.Fatalf("LookupName = %v %v; want no direct address", addrs, ok)
	}
}
