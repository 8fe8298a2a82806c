package mesh

import (
	"net/netip"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// The lookups below answer from the local registry and the remote claims
// together, by the conflict rule: the gateway (sniproxy.TLSTargets and
// Owners, httproute.Router), DNS (dns.Source, dns.LiveSupernodes) and
// tunnel admission (tunnel.Registrations) use the mesh in place of the
// registry. A name nobody else claims costs one remote-table read more
// than the registry alone.

// resolve returns the remote claim to route for name, or nil when the
// local registration (if any) wins.
func (m *Mesh) resolve(name string) (*wire.Record, bool) {
	name = normal(name)
	remote := m.names.best(name, time.Now().Unix())
	lowner, lok := m.o.Registry.Owner(name)
	if remote == nil && !lok && m.lookupMiss(name) {
		remote = m.names.best(name, time.Now().Unix())
	}
	switch {
	case remote == nil:
		return nil, lok
	case !lok:
		return remote, true
	case lowner == remote.Owner:
		return nil, true // same owner: the local record is as good
	}
	local, err := m.o.Registry.Get(name)
	if err != nil || Better(remote, local) {
		return remote, true
	}
	return nil, true
}

// Owner implements sniproxy.Owners.
func (m *Mesh) Owner(name string) (identity.ID, bool) {
	r, ok := m.resolve(name)
	if r != nil {
		return r.Owner, true
	}
	if ok {
		return m.o.Registry.Owner(name)
	}
	return identity.ID{}, false
}

// TLSTarget implements sniproxy.TLSTargets.
func (m *Mesh) TLSTarget(name string) (string, bool) {
	r, ok := m.resolve(name)
	if r != nil {
		return r.Target, true
	}
	if ok {
		return m.o.Registry.TLSTarget(name)
	}
	return "", false
}

// HTTPBackend implements httproute.Router.
func (m *Mesh) HTTPBackend(host []byte) (httproute.Backend, bool) {
	r, ok := m.resolve(string(host))
	if r != nil {
		if r.HTTP == wire.TargetTunnel { // served through the owner's tunnel, wherever it is
			return httproute.Backend{Tunnel: r.Owner, RedirectHTTPS: r.RedirectHTTPS}, true
		}
		return httproute.Backend{Addr: r.HTTP, RedirectHTTPS: r.RedirectHTTPS}, true
	}
	if ok {
		return m.o.Registry.HTTPBackend(host)
	}
	return httproute.Backend{}, false
}

// Zones implements dns.Source.
func (m *Mesh) Zones() []string { return m.o.Registry.Zones() }

// LookupName implements dns.Source.
func (m *Mesh) LookupName(name string) ([]netip.Addr, bool) {
	r, ok := m.resolve(name)
	if r != nil {
		if r.DNSDirect {
			if ap, err := netip.ParseAddrPort(r.Target); err == nil {
				return []netip.Addr{ap.Addr().Unmap()}, true
			}
		}
		return nil, true
	}
	if ok {
		return m.o.Registry.LookupName(name)
	}
	return nil, false
}

// ACMEChallenge implements dns.Source.
func (m *Mesh) ACMEChallenge(name string) ([]string, bool) {
	r, ok := m.resolve(name)
	if r != nil {
		now := time.Now().Unix()
		var vals []string
		for _, t := range r.ACME {
			if t.Expires > now {
				vals = append(vals, t.Value)
			}
		}
		return vals, true
	}
	if ok {
		return m.o.Registry.ACMEChallenge(name)
	}
	return nil, false
}

// LiveAddrs implements dns.LiveSupernodes: this supernode's addresses and
// those of every live peer.
func (m *Mesh) LiveAddrs() []netip.Addr { return *m.live.Load() }

// Registered implements tunnel.Registrations: a node that owns a name
// anywhere in the federation may hold a tunnel here.
func (m *Mesh) Registered(id identity.ID) bool {
	return m.o.Registry.Registered(id) || m.names.owns(id)
}

// ClaimedElsewhere implements registry.Claims.
func (m *Mesh) ClaimedElsewhere(name string, id identity.ID) bool {
	r := m.names.best(normal(name), time.Now().Unix())
	return r != nil && r.Owner != id
}
