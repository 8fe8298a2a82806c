// Package proxyproto writes and parses PROXY protocol version 2 headers
// (haproxy doc/proxy-protocol.txt), so a backend behind the SNI gateway
// learns the client's real address and the routed server name.
//
// Why not github.com/pires/go-proxyproto: the gateway only needs the binary
// v2 form, wants the header appended to a pooled buffer with no allocation
// on the write path, and needs a parser with an explicit size bound and
// typed errors that can be fuzzed with round-trip properties. That is a few
// hundred lines, smaller than the dependency.
package proxyproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
)

// Signature starts every v2 header.
const Signature = "\r\n\r\n\x00\r\nQUIT\n"

const (
	fixedLen = 16 // signature, ver_cmd, fam, len

	// DefaultMaxLen bounds a parsed header (fixed part, addresses and TLVs)
	// when the caller passes 0. A header this gateway writes is < 600 bytes.
	DefaultMaxLen = 2048

	famUnspec = 0x00
	famTCP4   = 0x11
	famUDP4   = 0x12
	famTCP6   = 0x21
	famUDP6   = 0x22
	famUnixS  = 0x31
	famUnixD  = 0x32

	// TLV types (proxy-protocol.txt §2.2).
	TypeALPN      = 0x01
	TypeAuthority = 0x02
	TypeCRC32C    = 0x03
	TypeNOOP      = 0x04
)

// Command says whether the addresses describe a proxied client (Proxy) or
// the connection was made by the proxy itself, e.g. a health check (Local).
type Command byte

const (
	Local Command = 0
	Proxy Command = 1
)

// TLV is a type-length-value field this package does not interpret.
type TLV struct {
	Type  byte
	Value []byte
}

// Header is a PROXY v2 header. Source and Destination are invalid (zero)
// for Local and for the UNSPEC family.
type Header struct {
	Command     Command
	Datagram    bool // UDP rather than TCP
	Source      netip.AddrPort
	Destination netip.AddrPort
	ALPN        []byte // PP2_TYPE_ALPN, nil when absent
	Authority   string // PP2_TYPE_AUTHORITY (the TLS server name), "" when absent
	CRC32C      bool   // write / a verified PP2_TYPE_CRC32C checksum
	TLVs        []TLV  // other TLVs, in order
}

// Parse failures.
var (
	ErrNoSignature = errors.New("proxyproto: no v2 signature")
	ErrVersion     = errors.New("proxyproto: unsupported version")
	ErrCommand     = errors.New("proxyproto: unknown command")
	ErrFamily      = errors.New("proxyproto: unsupported address family")
	ErrTooLarge    = errors.New("proxyproto: header exceeds the size bound")
	ErrIncomplete  = errors.New("proxyproto: incomplete header")
	ErrMalformed   = errors.New("proxyproto: malformed header")
	ErrChecksum    = errors.New("proxyproto: crc32c mismatch")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func addrLen(fam byte) int {
	switch fam {
	case famTCP4, famUDP4:
		return 12
	case famTCP6, famUDP6:
		return 36
	case famUnixS, famUnixD:
		return 216
	}
	return 0
}

// AppendBinary appends h's encoding to dst. Two IPv4 addresses are written
// as TCP4 (UDP4); anything else, including a mix, as TCP6 with IPv4
// addresses in mapped form.
func (h *Header) AppendBinary(dst []byte) ([]byte, error) {
	if h.Command != Local && h.Command != Proxy {
		return dst, ErrCommand
	}
	start := len(dst)
	dst = append(dst, Signature...)
	fam := byte(famUnspec)
	hasAddr := h.Command == Proxy && h.Source.IsValid() && h.Destination.IsValid()
	if hasAddr {
		s, d := h.Source.Addr(), h.Destination.Addr()
		if s.Is4() && d.Is4() {
			fam = famTCP4
		} else {
			fam = famTCP6
		}
		if h.Datagram {
			fam++
		}
	}
	dst = append(dst, 0x20|byte(h.Command), fam, 0, 0)
	switch fam {
	case famTCP4, famUDP4:
		s4, d4 := h.Source.Addr().As4(), h.Destination.Addr().As4()
		dst = append(dst, s4[:]...)
		dst = append(dst, d4[:]...)
	case famTCP6, famUDP6:
		s6, d6 := h.Source.Addr().As16(), h.Destination.Addr().As16()
		dst = append(dst, s6[:]...)
		dst = append(dst, d6[:]...)
	}
	if hasAddr {
		dst = binary.BigEndian.AppendUint16(dst, h.Source.Port())
		dst = binary.BigEndian.AppendUint16(dst, h.Destination.Port())
	}
	var err error
	if h.ALPN != nil {
		if dst, err = appendTLV(dst, TypeALPN, h.ALPN); err != nil {
			return dst[:start], err
		}
	}
	if h.Authority != "" {
		if dst, err = appendTLVString(dst, TypeAuthority, h.Authority); err != nil {
			return dst[:start], err
		}
	}
	for _, t := range h.TLVs {
		if t.Type == TypeALPN || t.Type == TypeAuthority || t.Type == TypeCRC32C || t.Type == TypeNOOP {
			return dst[:start], fmt.Errorf("%w: tlv type %#x belongs in a Header field", ErrMalformed, t.Type)
		}
		if dst, err = appendTLV(dst, t.Type, t.Value); err != nil {
			return dst[:start], err
		}
	}
	crcAt := -1
	if h.CRC32C {
		dst = append(dst, TypeCRC32C, 0, 4, 0, 0, 0, 0)
		crcAt = len(dst) - 4
	}
	n := len(dst) - start - fixedLen
	if n > 0xffff {
		return dst[:start], ErrTooLarge
	}
	binary.BigEndian.PutUint16(dst[start+14:], uint16(n))
	if crcAt >= 0 {
		binary.BigEndian.PutUint32(dst[crcAt:], crc32.Checksum(dst[start:], castagnoli))
	}
	return dst, nil
}

func appendTLV(dst []byte, typ byte, v []byte) ([]byte, error) {
	if len(v) > 0xffff {
		return dst, ErrTooLarge
	}
	dst = append(dst, typ, byte(len(v)>>8), byte(len(v)))
	return append(dst, v...), nil
}

func appendTLVString(dst []byte, typ byte, v string) ([]byte, error) {
	if len(v) > 0xffff {
		return dst, ErrTooLarge
	}
	dst = append(dst, typ, byte(len(v)>>8), byte(len(v)))
	return append(dst, v...), nil
}

// Parse decodes the header at the start of b, returning it and its length.
// maxLen bounds the whole header (0 means DefaultMaxLen). When b holds only
// part of a plausible header it returns ErrIncomplete. The returned Header
// does not alias b.
func Parse(b []byte, maxLen int) (Header, int, error) {
	if maxLen <= 0 {
		maxLen = DefaultMaxLen
	}
	n, err := checkFixed(b, maxLen)
	if err != nil {
		return Header{}, 0, err
	}
	if len(b) < n {
		return Header{}, 0, ErrIncomplete
	}
	h, err := parseBody(b[:n])
	if err != nil {
		return Header{}, 0, err
	}
	return h, n, nil
}

// Read reads exactly one header from r (no read-ahead, so r can be handed
// to a TLS server afterwards). maxLen bounds the header and the allocation.
func Read(r io.Reader, maxLen int) (Header, error) {
	if maxLen <= 0 {
		maxLen = DefaultMaxLen
	}
	var fixed [fixedLen]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Header{}, fmt.Errorf("proxyproto: read: %w", err)
	}
	n, err := checkFixed(fixed[:], maxLen)
	if err != nil {
		return Header{}, err
	}
	buf := make([]byte, n)
	copy(buf, fixed[:])
	if _, err := io.ReadFull(r, buf[fixedLen:]); err != nil {
		return Header{}, fmt.Errorf("proxyproto: read: %w", err)
	}
	return parseBody(buf)
}

// checkFixed validates as much of the fixed 16 bytes as b holds and returns
// the total header length once known.
func checkFixed(b []byte, maxLen int) (int, error) {
	m := min(len(b), len(Signature))
	if string(b[:m]) != Signature[:m] {
		return 0, ErrNoSignature
	}
	if len(b) < fixedLen {
		if len(b) > 12 {
			if err := checkVerCmd(b[12]); err != nil {
				return 0, err
			}
		}
		return 0, ErrIncomplete
	}
	if err := checkVerCmd(b[12]); err != nil {
		return 0, err
	}
	n := fixedLen + int(binary.BigEndian.Uint16(b[14:]))
	if n > maxLen {
		return 0, ErrTooLarge
	}
	return n, nil
}

func checkVerCmd(vc byte) error {
	if vc>>4 != 2 {
		return ErrVersion
	}
	if vc&0x0f > 1 {
		return ErrCommand
	}
	return nil
}

// parseBody decodes a complete header whose length is len(b).
func parseBody(b []byte) (Header, error) {
	h := Header{Command: Command(b[12] & 0x0f)}
	fam := b[13]
	al := addrLen(fam)
	if al == 0 && fam != famUnspec {
		return Header{}, ErrFamily
	}
	if h.Command == Proxy && (fam == famUnixS || fam == famUnixD) {
		return Header{}, ErrFamily // not produced by a TCP gateway
	}
	body := b[fixedLen:]
	if len(body) < al {
		return Header{}, fmt.Errorf("%w: address block longer than the header", ErrMalformed)
	}
	if h.Command == Proxy {
		switch fam {
		case famTCP4, famUDP4:
			h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:]))
			h.Destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:]))
		case famTCP6, famUDP6:
			h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:]))
			h.Destination = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:]))
		}
		h.Datagram = fam == famUDP4 || fam == famUDP6
	}
	tlvs := body[al:]
	off := fixedLen + al
	for len(tlvs) > 0 {
		if len(tlvs) < 3 {
			return Header{}, fmt.Errorf("%w: truncated tlv", ErrMalformed)
		}
		typ := tlvs[0]
		l := int(binary.BigEndian.Uint16(tlvs[1:]))
		if len(tlvs) < 3+l {
			return Header{}, fmt.Errorf("%w: tlv overruns the header", ErrMalformed)
		}
		v := tlvs[3 : 3+l]
		switch typ {
		case TypeALPN:
			if h.ALPN != nil {
				return Header{}, fmt.Errorf("%w: duplicate alpn tlv", ErrMalformed)
			}
			h.ALPN = append(make([]byte, 0, l), v...)
		case TypeAuthority:
			if h.Authority != "" || l == 0 {
				return Header{}, fmt.Errorf("%w: duplicate or empty authority tlv", ErrMalformed)
			}
			h.Authority = string(v)
		case TypeCRC32C:
			if h.CRC32C || l != 4 {
				return Header{}, fmt.Errorf("%w: bad crc32c tlv", ErrMalformed)
			}
			want := binary.BigEndian.Uint32(v)
			c := crc32.Update(0, castagnoli, b[:off+3])
			c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
			c = crc32.Update(c, castagnoli, b[off+7:])
			if c != want {
				return Header{}, ErrChecksum
			}
			h.CRC32C = true
		case TypeNOOP:
		default:
			h.TLVs = append(h.TLVs, TLV{Type: typ, Value: append(make([]byte, 0, l), v...)})
		}
		tlvs = tlvs[3+l:]
		off += 3 + l
	}
	return h, nil
}

// ForConn builds the header describing a client connection c accepted by
// the proxy: source is the client, destination the address it connected to.
func ForConn(c net.Conn) Header {
	h := Header{Command: Proxy}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		h.Source = unmap(a.AddrPort())
	}
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		h.Destination = unmap(a.AddrPort())
	}
	return h
}

// unmap turns ::ffff:a.b.c.d (how a dual-stack listener reports IPv4
// clients) into a.b.c.d so that IPv4 pairs are written as TCP4.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
