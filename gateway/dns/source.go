package dns

import "net/netip"

// Source is where the DNS server learns which names exist. Names passed
// to it are lowercase, without a trailing dot. Returned slices are shared
// and must not be modified.
type Source interface {
	// Zones returns the served suffixes (e.g. "ela.city").
	Zones() []string
	// LookupName reports whether name (one label under a zone) is
	// registered; direct, when not empty, are the node's own addresses,
	// answered instead of the supernode's because the owner asked for it.
	LookupName(name string) (direct []netip.Addr, ok bool)
	// ACMEChallenge returns the TXT values to serve at
	// _acme-challenge.<name>, and whether name is registered.
	ACMEChallenge(name string) (values []string, ok bool)
}

// LiveSupernodes is implemented by a Source that belongs to a federation
// of supernodes (federation/mesh): registered names are then answered
// with the addresses of every supernode alive now, this one included,
// instead of this supernode's alone, so a resolver never gets a dead
// supernode for longer than the TTL. An empty answer falls back to the
// configured addresses.
type LiveSupernodes interface {
	LiveAddrs() []netip.Addr
}
