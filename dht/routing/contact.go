package routing

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/elacity/pc2/core/identity"
)

// Contact is a node as the table stores and hands it out: an id and the
// one address of this table's family.
type Contact struct {
	ID   identity.ID
	Addr netip.AddrPort
}

func (c Contact) String() string { return fmt.Sprintf("%s@%s", c.ID, c.Addr) }

// ErrUnroutable is wrapped by Routable's errors.
var ErrUnroutable = errors.New("unroutable address")

// Special-purpose IPv4 and IPv6 ranges that never carry a public DHT node
// (RFC 6890 and friends). Private, loopback, link-local, multicast and
// unspecified are tested through netip's predicates.
var bogons = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // CGNAT shared space
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"), // documentation
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved and broadcast
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("3fff::/20"),       // documentation
}

var globalUnicast6 = netip.MustParsePrefix("2000::/3")

// IsGlobal reports whether a is a globally routable unicast address, the
// only kind a public DHT node may have. IPv4-mapped IPv6 counts as IPv4.
func IsGlobal(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.Zone() != "" || !a.IsGlobalUnicast() || a.IsPrivate() {
		return false
	}
	if a.Is6() && !globalUnicast6.Contains(a) {
		return false
	}
	for _, p := range bogons {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// Routable reports why ap cannot be a DHT contact, or nil. Outside
// developer mode only global unicast addresses are allowed; in developer
// mode loopback and private addresses are too (tests, the NAT lab), but
// never the unspecified address, multicast or port 0.
func Routable(ap netip.AddrPort, developerMode bool) error {
	a := ap.Addr().Unmap()
	switch {
	case !a.IsValid():
		return fmt.Errorf("%w: no address", ErrUnroutable)
	case ap.Port() == 0:
		return fmt.Errorf("%w: %s has port 0", ErrUnroutable, ap)
	case a.IsUnspecified() || a.IsMulticast() || a.Zone() != "":
		return fmt.Errorf("%w: %s", ErrUnroutable, ap)
	case !developerMode && !IsGlobal(a):
		return fmt.Errorf("%w: %s is not global (developer mode is off)", ErrUnroutable, ap)
	}
	return nil
}

// Subnet is the admission unit of an address: its IPv4 /24 or IPv6 /64.
// Only global addresses have one; others (admitted in developer mode) are
// not subject to subnet limits, like geth exempts LAN addresses.
type Subnet struct {
	prefix [8]byte
	v6     bool
}

// SubnetOf returns a's source unit and whether limits apply to it.
func SubnetOf(a netip.Addr) (Subnet, bool) {
	a = a.Unmap()
	if !IsGlobal(a) {
		return Subnet{}, false
	}
	var s Subnet
	if a.Is4() {
		b := a.As4()
		copy(s.prefix[:3], b[:3])
		return s, true
	}
	b := a.As16()
	copy(s.prefix[:], b[:8])
	s.v6 = true
	return s, true
}
