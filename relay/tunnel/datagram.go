package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
)

// DatagramVersion is the version byte of datagram headers.
const DatagramVersion = 1

// MaxDatagramHeaderLen is the largest datagram header.
const MaxDatagramHeaderLen = 1 + 2 + 4 + 1 + 16 + 2

// ErrBadDatagram is returned (wrapped) for a datagram that cannot be
// decoded.
var ErrBadDatagram = errors.New("tunnel: bad datagram")

// Datagram heads every UDP payload of a mapped port; the payloads travel
// as QUIC datagrams on the tunnel (unreliable, no head-of-line blocking).
//
// Encoding (fixed order, no padding):
//
//	version u8 (=1) | port u16 BE (the public port) | flow u32 BE |
//	family u8 (0 none, 4, 6) | addr (0, 4 or 16 bytes) | vport u16 BE (absent for family 0) | payload
//
// The supernode sends the visitor's address (family 4 or 6) with every
// datagram, so the node needs no state to learn it; the node answers with
// family 0, and the supernode sends the reply only to the address it holds
// for that flow, so a node cannot aim a mapped port at anyone else.
type Datagram struct {
	Port    uint16
	Flow    uint32
	Visitor netip.AddrPort // zero from the node
}

// AppendBinary appends the encoded header to dst; the payload follows.
func (d Datagram) AppendBinary(dst []byte) ([]byte, error) {
	if d.Port == 0 {
		return dst, fmt.Errorf("%w: port 0", ErrBadDatagram)
	}
	dst = append(dst, DatagramVersion, byte(d.Port>>8), byte(d.Port),
		byte(d.Flow>>24), byte(d.Flow>>16), byte(d.Flow>>8), byte(d.Flow))
	if !d.Visitor.IsValid() {
		return append(dst, 0), nil
	}
	a := d.Visitor.Addr().Unmap()
	if a.Is4() {
		dst = append(dst, 4)
	} else {
		dst = append(dst, 6)
	}
	dst = append(dst, a.AsSlice()...)
	return append(dst, byte(d.Visitor.Port()>>8), byte(d.Visitor.Port())), nil
}

// ParseDatagram splits b into its header and payload.
func ParseDatagram(b []byte) (Datagram, []byte, error) {
	var d Datagram
	if len(b) < 8 {
		return d, nil, fmt.Errorf("%w: %d bytes", ErrBadDatagram, len(b))
	}
	if b[0] != DatagramVersion {
		return d, nil, fmt.Errorf("%w: version %d, want %d", ErrBadDatagram, b[0], DatagramVersion)
	}
	d.Port = uint16(b[1])<<8 | uint16(b[2])
	if d.Port == 0 {
		return Datagram{}, nil, fmt.Errorf("%w: port 0", ErrBadDatagram)
	}
	d.Flow = uint32(b[3])<<24 | uint32(b[4])<<16 | uint32(b[5])<<8 | uint32(b[6])
	var alen int
	switch b[7] {
	case 0:
		return d, b[8:], nil
	case 4:
		alen = 4
	case 6:
		alen = 16
	default:
		return Datagram{}, nil, fmt.Errorf("%w: address family %d", ErrBadDatagram, b[7])
	}
	if len(b) < 8+alen+2 {
		return Datagram{}, nil, fmt.Errorf("%w: short address", ErrBadDatagram)
	}
	a, _ := netip.AddrFromSlice(b[8 : 8+alen])
	if alen == 16 && a.Is4In6() {
		return Datagram{}, nil, fmt.Errorf("%w: IPv4-mapped address in family 6", ErrBadDatagram)
	}
	off := 8 + alen
	d.Visitor = netip.AddrPortFrom(a, uint16(b[off])<<8|uint16(b[off+1]))
	return d, b[off+2:], nil
}
