package registry

import (
	"net/netip"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/gateway/names"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// The lookups below serve the gateway's data paths. They take the
// index's read lock, fold the name into a stack buffer and read one map
// entry: no allocation (see BenchmarkLookup).

func (r *Registry) lookup(b []byte) *entry {
	now := r.o.Clock.Now().Unix()
	r.mu.RLock()
	e := r.index[string(b)]
	r.mu.RUnlock()
	if e == nil || e.expires <= now {
		return nil
	}
	return e
}

// TLSTarget returns the TLS endpoint (IP:port, or wire.TargetTunnel for a
// name served only through its owner's tunnel) of a server name, for the
// :443 SNI router. The lead's adapter to sniproxy.Router is:
//
//	sniproxy.RouterFunc(func(_ context.Context, sn string) (sniproxy.Target, error) {
//		if addr, ok := reg.TLSTarget(sn); ok {
//			return sniproxy.Target{Addr: addr}, nil
//		}
//		return sniproxy.Target{}, sniproxy.ErrUnknownName
//	})
func (r *Registry) TLSTarget(serverName string) (string, bool) {
	var buf [names.MaxName]byte
	b, ok := names.Fold(buf[:], serverName)
	if !ok {
		return "", false
	}
	if e := r.lookup(b); e != nil {
		return e.target, true
	}
	return "", false
}

// Owner returns the node id that owns a live server name; the gateway
// uses it to send the name's visitors over the owner's tunnel.
func (r *Registry) Owner(serverName string) (identity.ID, bool) {
	var buf [names.MaxName]byte
	b, ok := names.Fold(buf[:], serverName)
	if !ok {
		return identity.ID{}, false
	}
	if e := r.lookup(b); e != nil {
		return e.owner, true
	}
	return identity.ID{}, false
}

// Registered reports whether id owns at least one name; by default only
// such nodes may open a tunnel.
func (r *Registry) Registered(id identity.ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.owners[id] > 0
}

// HTTPBackend implements httproute.Router.
func (r *Registry) HTTPBackend(host []byte) (httproute.Backend, bool) {
	var buf [names.MaxName]byte
	b, ok := names.Fold(buf[:], host)
	if !ok {
		return httproute.Backend{}, false
	}
	if e := r.lookup(b); e != nil {
		if e.http == wire.TargetTunnel {
			return httproute.Backend{Tunnel: e.owner, RedirectHTTPS: e.redirect}, true
		}
		return httproute.Backend{Addr: e.http, RedirectHTTPS: e.redirect}, true
	}
	return httproute.Backend{}, false
}

// Zones implements dns.Source.
func (r *Registry) Zones() []string { return r.o.Rules.Suffixes() }

// LookupName implements dns.Source.
func (r *Registry) LookupName(name string) ([]netip.Addr, bool) {
	var buf [names.MaxName]byte
	b, ok := names.Fold(buf[:], name)
	if !ok {
		return nil, false
	}
	if e := r.lookup(b); e != nil {
		return e.direct, true
	}
	return nil, false
}

// ACMEChallenge implements dns.Source. Values past their expiry are left
// out until the sweeper drops them.
func (r *Registry) ACMEChallenge(name string) ([]string, bool) {
	var buf [names.MaxName]byte
	b, ok := names.Fold(buf[:], name)
	if !ok {
		return nil, false
	}
	e := r.lookup(b)
	if e == nil {
		return nil, false
	}
	now := r.o.Clock.Now().Unix()
	for _, exp := range e.acmeExp {
		if exp <= now {
			live := make([]string, 0, len(e.acme))
			for i, v := range e.acme {
				if e.acmeExp[i] > now {
					live = append(live, v)
				}
			}
			return live, true
		}
	}
	return e.acme, true
}
