package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Version is the stream header version this package writes and reads.
const Version = 1

// MaxServiceLen bounds a service name in a stream header.
const MaxServiceLen = 63

// MaxHeaderLen is the largest encoded stream header: version, service
// length, service, address family, IPv6 address, port.
const MaxHeaderLen = 1 + 1 + MaxServiceLen + 1 + 16 + 2

// ErrBadHeader is returned (wrapped) for a stream header that cannot be
// decoded.
var ErrBadHeader = errors.New("tunnel: bad stream header")

// Header opens every visitor stream the supernode opens on a tunnel: which
// local service the visitor wants and where the visitor comes from.
//
// Encoding (all fields fixed order, no padding):
//
//	version u8 (=1) | serviceLen u8 (1..63) | service | family u8 (0 none, 4, 6) | addr (0, 4 or 16 bytes) | port u16 BE (absent for family 0)
type Header struct {
	Service string         // [a-z0-9-_.], 1..63 bytes
	Visitor netip.AddrPort // zero when unknown
}

func validService(s string) bool {
	if len(s) == 0 || len(s) > MaxServiceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// AppendBinary appends the encoded header to dst.
func (h Header) AppendBinary(dst []byte) ([]byte, error) {
	if !validService(h.Service) {
		return dst, fmt.Errorf("%w: service %q", ErrBadHeader, h.Service)
	}
	dst = append(dst, Version, byte(len(h.Service)))
	dst = append(dst, h.Service...)
	a := h.Visitor.Addr().Unmap()
	switch {
	case !h.Visitor.IsValid():
		return append(dst, 0), nil
	case a.Is4():
		dst = append(dst, 4)
	default:
		dst = append(dst, 6)
	}
	dst = append(dst, a.AsSlice()...)
	return append(dst, byte(h.Visitor.Port()>>8), byte(h.Visitor.Port())), nil
}

// ParseHeader decodes a header at the start of b and returns it with its
// encoded length. A b too short for the header it starts is an error
// wrapping io.ErrUnexpectedEOF.
func ParseHeader(b []byte) (Header, int, error) {
	var h Header
	if len(b) < 2 {
		return h, 0, fmt.Errorf("%w: %w", ErrBadHeader, io.ErrUnexpectedEOF)
	}
	if b[0] != Version {
		return h, 0, fmt.Errorf("%w: version %d, want %d", ErrBadHeader, b[0], Version)
	}
	n := int(b[1])
	if n == 0 || n > MaxServiceLen {
		return h, 0, fmt.Errorf("%w: service length %d", ErrBadHeader, n)
	}
	if len(b) < 2+n+1 {
		return h, 0, fmt.Errorf("%w: %w", ErrBadHeader, io.ErrUnexpectedEOF)
	}
	svc := b[2 : 2+n]
	if !validService(string(svc)) {
		return h, 0, fmt.Errorf("%w: service name has bad characters", ErrBadHeader)
	}
	off := 2 + n
	fam := b[off]
	off++
	var alen int
	switch fam {
	case 0:
		h.Service = string(svc)
		return h, off, nil
	case 4:
		alen = 4
	case 6:
		alen = 16
	default:
		return h, 0, fmt.Errorf("%w: address family %d", ErrBadHeader, fam)
	}
	if len(b) < off+alen+2 {
		return h, 0, fmt.Errorf("%w: %w", ErrBadHeader, io.ErrUnexpectedEOF)
	}
	a, _ := netip.AddrFromSlice(b[off : off+alen])
	if fam == 6 && a.Is4In6() {
		return h, 0, fmt.Errorf("%w: IPv4-mapped address in family 6", ErrBadHeader)
	}
	off += alen
	port := uint16(b[off])<<8 | uint16(b[off+1])
	off += 2
	h.Service = string(svc)
	h.Visitor = netip.AddrPortFrom(a, port)
	return h, off, nil
}

// ReadHeader reads exactly one header from r and nothing more, so the
// bytes after it stay in r.
func ReadHeader(r io.Reader) (Header, error) {
	var buf [MaxHeaderLen]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	if buf[0] != Version {
		return Header{}, fmt.Errorf("%w: version %d, want %d", ErrBadHeader, buf[0], Version)
	}
	n := int(buf[1])
	if n == 0 || n > MaxServiceLen {
		return Header{}, fmt.Errorf("%w: service length %d", ErrBadHeader, n)
	}
	end := 2 + n + 1
	if _, err := io.ReadFull(r, buf[2:end]); err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	switch buf[end-1] {
	case 4:
		end += 4 + 2
	case 6:
		end += 16 + 2
	}
	if _, err := io.ReadFull(r, buf[2+n+1:end]); err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	h, _, err := ParseHeader(buf[:end])
	return h, err
}
