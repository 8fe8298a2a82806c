package natlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// The probe protocol is a fixed-size UDP message family. Every message starts
// with a kind byte in 0x31..0x34: below 0x40 so that a later PC2 node can
// demultiplex it from QUIC (whose first byte always has bit 0x40 set) on one
// socket, and above 0x03 so that it is never mistaken for STUN (first byte 0x00
// or 0x01).
//
//	offset size  field
//	0      1     kind
//	1      1     version (1)
//	2      8     transaction / session id
//	requests (MsgSizeProbe bytes):
//	10     1     flags (bit 0 change IP, bit 1 change port; others zero)
//	11     2     reply delay in milliseconds (big endian, <= MaxReplyDelayMillis)
//	13     35    zero padding: a request is as long as its response, so a
//	             probe server never amplifies (response bytes <= request bytes)
//	responses (MsgSizeProbe bytes):
//	10     19    observed source endpoint of the request
//	29     19    responder endpoint (the server socket the reply is sent from)
//	punch and punch-ack (MsgSizePunch bytes): no body; an ack echoes the id of
//	the punch it answers.
//
// An endpoint is family (4 or 6), a 16-byte address (IPv4 in its IPv4-mapped
// form) and a big-endian port. Decoding is strict (exact lengths, canonical
// addresses, zero padding and reserved bits), so a decoded message re-encodes
// to the identical bytes.

// Kind identifies a probe protocol message.
type Kind byte

// Message kinds.
const (
	KindRequest  Kind = 0x31 // client → probe server: tell me my address
	KindResponse Kind = 0x32 // probe server → client: observed address
	KindPunch    Kind = 0x33 // peer → peer: hole-punch packet
	KindPunchAck Kind = 0x34 // peer → peer: answer to a punch, sent to its observed source
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindResponse:
		return "response"
	case KindPunch:
		return "punch"
	case KindPunchAck:
		return "punch-ack"
	}
	return fmt.Sprintf("kind(%#x)", byte(k))
}

// Flags of a probe request (RFC 5780 CHANGE-REQUEST equivalents).
type Flags byte

const (
	// FlagChangeIP asks the server to reply from its alternate address.
	FlagChangeIP Flags = 1 << 0
	// FlagChangePort asks the server to reply from its alternate port.
	FlagChangePort Flags = 1 << 1

	flagsKnown = FlagChangeIP | FlagChangePort
)

// Protocol constants.
const (
	WireVersion = 1
	// MsgSizeProbe is the exact size of requests and responses.
	MsgSizeProbe = 48
	// MsgSizePunch is the exact size of punch and punch-ack messages.
	MsgSizePunch = 10
	// MaxReplyDelayMillis bounds the delayed-reply option (mapping timeout tests).
	MaxReplyDelayMillis = 10000

	headerSize   = 10
	endpointSize = 19
)

// Message is one decoded probe protocol message. Fields that do not belong to
// the message's kind are zero.
type Message struct {
	Kind Kind
	ID   [8]byte

	// Request fields.
	Flags       Flags
	DelayMillis uint16
	Observed    netip.AddrPort // response: where the request came from
	Responder   netip.AddrPort // response: the server socket that answered
}

// ErrMalformed matches (errors.Is) every decode failure.
var ErrMalformed = errors.New("natlab probe: malformed message")

// malformedError is a static decode error: the probe server decodes every
// datagram it receives, so rejecting garbage must not allocate.
type malformedError struct{ reason string }

func (e *malformedError) Error() string        { return "natlab probe: malformed message: " + e.reason }
func (e *malformedError) Is(target error) bool { return target == ErrMalformed }

var (
	errShort        = &malformedError{"shorter than the header"}
	errVersion      = &malformedError{"unsupported version"}
	errKind         = &malformedError{"unknown kind"}
	errLength       = &malformedError{"wrong length for its kind"}
	errFlags        = &malformedError{"unknown request flags"}
	errDelay        = &malformedError{"reply delay too long"}
	errPadding      = &malformedError{"non-zero request padding"}
	errFamily       = &malformedError{"unknown address family"}
	errNotMapped    = &malformedError{"family 4 with a non IPv4-mapped address"}
	errMappedAsIPv6 = &malformedError{"family 6 with an IPv4-mapped address"}
)

// Decode parses one datagram. It never allocates and rejects anything that
// is not the canonical encoding of a message.
func Decode(b []byte) (Message, error) {
	var m Message
	if len(b) < headerSize {
		return m, errShort
	}
	m.Kind = Kind(b[0])
	if b[1] != WireVersion {
		return m, errVersion
	}
	copy(m.ID[:], b[2:10])
	switch m.Kind {
	case KindRequest:
		if len(b) != MsgSizeProbe {
			return m, errLength
		}
		m.Flags = Flags(b[10])
		if m.Flags&^flagsKnown != 0 {
			return m, errFlags
		}
		m.DelayMillis = binary.BigEndian.Uint16(b[11:13])
		if m.DelayMillis > MaxReplyDelayMillis {
			return m, errDelay
		}
		for _, c := range b[13:] {
			if c != 0 {
				return m, errPadding
			}
		}
	case KindResponse:
		if len(b) != MsgSizeProbe {
			return m, errLength
		}
		var err error
		if m.Observed, err = decodeEndpoint(b[10 : 10+endpointSize]); err != nil {
			return m, err
		}
		if m.Responder, err = decodeEndpoint(b[10+endpointSize : 10+2*endpointSize]); err != nil {
			return m, err
		}
	case KindPunch, KindPunchAck:
		if len(b) != MsgSizePunch {
			return m, errLength
		}
	default:
		return m, errKind
	}
	return m, nil
}

func decodeEndpoint(b []byte) (netip.AddrPort, error) {
	a := netip.AddrFrom16([16]byte(b[1:17]))
	port := binary.BigEndian.Uint16(b[17:19])
	switch b[0] {
	case 4:
		if !a.Is4In6() {
			return netip.AddrPort{}, errNotMapped
		}
		a = a.Unmap()
	case 6:
		if a.Is4In6() {
			return netip.AddrPort{}, errMappedAsIPv6
		}
	default:
		return netip.AddrPort{}, errFamily
	}
	return netip.AddrPortFrom(a, port), nil
}

// Append encodes m onto dst. It fails for messages that Decode would reject
// (unknown kind or flags, delay too long, invalid or zoned response endpoints).
func (m Message) Append(dst []byte) ([]byte, error) {
	switch m.Kind {
	case KindRequest, KindResponse, KindPunch, KindPunchAck:
	default:
		return dst, fmt.Errorf("natlab probe: cannot encode kind %#x", byte(m.Kind))
	}
	dst = append(dst, byte(m.Kind), WireVersion)
	dst = append(dst, m.ID[:]...)
	switch m.Kind {
	case KindRequest:
		if m.Flags&^flagsKnown != 0 {
			return dst, fmt.Errorf("natlab probe: unknown flags %#x", byte(m.Flags))
		}
		if m.DelayMillis > MaxReplyDelayMillis {
			return dst, fmt.Errorf("natlab probe: reply delay %d ms above %d", m.DelayMillis, MaxReplyDelayMillis)
		}
		dst = append(dst, byte(m.Flags))
		dst = binary.BigEndian.AppendUint16(dst, m.DelayMillis)
		dst = append(dst, make([]byte, MsgSizeProbe-13)...)
	case KindResponse:
		var err error
		if dst, err = appendEndpoint(dst, m.Observed); err != nil {
			return dst, fmt.Errorf("observed endpoint: %w", err)
		}
		if dst, err = appendEndpoint(dst, m.Responder); err != nil {
			return dst, fmt.Errorf("responder endpoint: %w", err)
		}
	}
	return dst, nil
}

func appendEndpoint(dst []byte, ap netip.AddrPort) ([]byte, error) {
	a := ap.Addr()
	if !a.IsValid() {
		return dst, errors.New("natlab probe: invalid address")
	}
	if a.Zone() != "" {
		return dst, errors.New("natlab probe: zoned address")
	}
	fam := byte(6)
	if a.Is4() || a.Is4In6() {
		fam = 4
	}
	dst = append(dst, fam)
	b16 := a.As16()
	dst = append(dst, b16[:]...)
	return binary.BigEndian.AppendUint16(dst, ap.Port()), nil
}
