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

// Special-purpose IPv4 ranges that never carry a public DHT node (RFC 6890
// and friends), as (network, mask) pairs; checked with integer masks
// because every contact of every answer passes here.
var bogons4 = [...][2]uint32{
	{0x00000000, 0xff000000}, // 0.0.0.0/8
	{0x0a000000, 0xff000000}, // 10.0.0.0/8
	{0x64400000, 0xffc00000}, // 100.64.0.0/10 CGNAT
	{0x7f000000, 0xff000000}, // 127.0.0.0/8
	{0xa9fe0000, 0xffff0000}, // 169.254.0.0/16
	{0xac100000, 0xfff00000}, // 172.16.0.0/12
	{0xc0000000, 0xffffff00}, // 192.0.0.0/24
	{0xc0000200, 0xffffff00}, // 192.0.2.0/24 documentation
	{0xc0a80000, 0xffff0000}, // 192.168.0.0/16
	{0xc6120000, 0xfffe0000}, // 198.18.0.0/15
	{0xc6336400, 0xffffff00}, // 198.51.100.0/24 documentation
	{0xcb007100, 0xffffff00}, // 203.0.113.0/24 documentation
	{0xe0000000, 0xe0000000}, // 224.0.0.0/3: multicast, reserved, broadcast
}

var bogons6 = []netip.Prefix{
	netip.MustParsePrefix("2001:db8::/32"), // documentation
	netip.MustParsePrefix("3fff::/20"),     // documentation
}

var globalUnicast6 = netip.MustParsePrefix("2000::/3")

// IsGlobal reports whether a is a globally routable unicast address, the
// only kind a public DHT node may have. IPv4-mapped IPv6 counts as IPv4.
func IsGlobal(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		for _, r := range bogons4 {
			if v&r[1] == r[0] {
				return false
			}
		}
		return true
	}
	if !a.Is6() || a.Zone() != "" || !globalUnicast6.Contains(a) {
		return false
	}
	for _, p := range bogons6 {
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
