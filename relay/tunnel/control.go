package tunnel

import (
	"errors"
	"fmt"
	"io"
)

// ControlVersion is the version of control messages this package writes
// and reads.
const ControlVersion = 1

// MaxReasonLen bounds the free-text reason of a refusal.
const MaxReasonLen = 200

// MaxControlLen is the largest encoded control message.
const MaxControlLen = 4 + MaxServiceLen + 2 + 2 + MaxReasonLen

// ErrBadControl is returned (wrapped) for a control message that cannot
// be decoded.
var ErrBadControl = errors.New("tunnel: bad control message")

// MsgType is the kind of a control message.
type MsgType uint8

const (
	// MsgPortRequest (node → supernode) asks for a public port for a
	// local service.
	MsgPortRequest MsgType = 1
	// MsgPortGrant (supernode → node) answers a request with the port.
	MsgPortGrant MsgType = 2
	// MsgPortRefused (supernode → node) answers a request with a reason.
	MsgPortRefused MsgType = 3
)

// Proto is the transport of a mapped port.
type Proto uint8

const (
	ProtoTCP Proto = 1
	ProtoUDP Proto = 2
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch s {
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	}
	return 0, fmt.Errorf("proto %q: want tcp or udp", s)
}

// RefuseCode says why a port request was refused.
type RefuseCode uint8

const (
	RefuseBadRequest RefuseCode = 1 // malformed or unknown proto
	RefuseQuota      RefuseCode = 2 // the node holds its quota of ports
	RefuseExhausted  RefuseCode = 3 // no free port in the range
	RefuseDisabled   RefuseCode = 4 // this supernode maps no ports
	RefuseInternal   RefuseCode = 5 // e.g. the lease could not be stored
)

func (c RefuseCode) String() string {
	switch c {
	case RefuseBadRequest:
		return "bad request"
	case RefuseQuota:
		return "quota"
	case RefuseExhausted:
		return "range exhausted"
	case RefuseDisabled:
		return "disabled"
	case RefuseInternal:
		return "internal"
	}
	return fmt.Sprintf("code(%d)", uint8(c))
}

// Control is one message on a tunnel's control stream, which the node
// opens to the supernode. Requests are answered in order, one answer
// each.
//
// Encoding (fixed order, no padding; unused fields are zero):
//
//	version u8 (=1) | type u8 | proto u8 | serviceLen u8 (1..63) | service |
//	port u16 BE | code u8 | reasonLen u8 (0..200) | reason (printable ASCII)
type Control struct {
	Type    MsgType
	Proto   Proto
	Service string
	Port    uint16     // grant: the public port; else 0
	Code    RefuseCode // refusal: why; else 0
	Reason  string     // refusal: a short text; else empty
}

func (m Control) check() error {
	if m.Proto != ProtoTCP && m.Proto != ProtoUDP {
		return fmt.Errorf("%w: proto %d", ErrBadControl, m.Proto)
	}
	if !validService(m.Service) {
		return fmt.Errorf("%w: service %q", ErrBadControl, m.Service)
	}
	if len(m.Reason) > MaxReasonLen {
		return fmt.Errorf("%w: reason longer than %d bytes", ErrBadControl, MaxReasonLen)
	}
	for i := 0; i < len(m.Reason); i++ {
		if c := m.Reason[i]; c < ' ' || c > '~' {
			return fmt.Errorf("%w: reason is not printable ASCII", ErrBadControl)
		}
	}
	switch m.Type {
	case MsgPortRequest:
		if m.Port != 0 || m.Code != 0 || m.Reason != "" {
			return fmt.Errorf("%w: request with port, code or reason", ErrBadControl)
		}
	case MsgPortGrant:
		if m.Port == 0 || m.Code != 0 || m.Reason != "" {
			return fmt.Errorf("%w: grant needs a port and no code or reason", ErrBadControl)
		}
	case MsgPortRefused:
		if m.Port != 0 || m.Code == 0 {
			return fmt.Errorf("%w: refusal needs a code and no port", ErrBadControl)
		}
	default:
		return fmt.Errorf("%w: type %d", ErrBadControl, m.Type)
	}
	return nil
}

// AppendBinary appends the encoded message to dst.
func (m Control) AppendBinary(dst []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return dst, err
	}
	dst = append(dst, ControlVersion, byte(m.Type), byte(m.Proto), byte(len(m.Service)))
	dst = append(dst, m.Service...)
	dst = append(dst, byte(m.Port>>8), byte(m.Port), byte(m.Code), byte(len(m.Reason)))
	return append(dst, m.Reason...), nil
}

// ParseControl decodes one message at the start of b and returns it with
// its encoded length. A b too short for the message it starts is an error
// wrapping io.ErrUnexpectedEOF.
func ParseControl(b []byte) (Control, int, error) {
	short := fmt.Errorf("%w: %w", ErrBadControl, io.ErrUnexpectedEOF)
	if len(b) < 4 {
		return Control{}, 0, short
	}
	if b[0] != ControlVersion {
		return Control{}, 0, fmt.Errorf("%w: version %d, want %d", ErrBadControl, b[0], ControlVersion)
	}
	n := int(b[3])
	if n == 0 || n > MaxServiceLen {
		return Control{}, 0, fmt.Errorf("%w: service length %d", ErrBadControl, n)
	}
	off := 4 + n
	if len(b) < off+4 {
		return Control{}, 0, short
	}
	rn := int(b[off+3])
	if rn > MaxReasonLen {
		return Control{}, 0, fmt.Errorf("%w: reason length %d", ErrBadControl, rn)
	}
	end := off + 4 + rn
	if len(b) < end {
		return Control{}, 0, short
	}
	m := Control{
		Type: MsgType(b[1]), Proto: Proto(b[2]), Service: string(b[4:off]),
		Port: uint16(b[off])<<8 | uint16(b[off+1]), Code: RefuseCode(b[off+2]),
		Reason: string(b[off+4 : end]),
	}
	if err := m.check(); err != nil {
		return Control{}, 0, err
	}
	return m, end, nil
}

// ReadControl reads exactly one message from r and nothing more.
func ReadControl(r io.Reader) (Control, error) {
	var buf [MaxControlLen]byte
	if _, err := io.ReadFull(r, buf[:4]); err != nil {
		return Control{}, fmt.Errorf("%w: %w", ErrBadControl, err)
	}
	if buf[0] != ControlVersion {
		return Control{}, fmt.Errorf("%w: version %d, want %d", ErrBadControl, buf[0], ControlVersion)
	}
	n := int(buf[3])
	if n == 0 || n > MaxServiceLen {
		return Control{}, fmt.Errorf("%w: service length %d", ErrBadControl, n)
	}
	off := 4 + n
	if _, err := io.ReadFull(r, buf[4:off+4]); err != nil {
		return Control{}, fmt.Errorf("%w: %w", ErrBadControl, err)
	}
	rn := int(buf[off+3])
	if rn > MaxReasonLen {
		return Control{}, fmt.Errorf("%w: reason length %d", ErrBadControl, rn)
	}
	if _, err := io.ReadFull(r, buf[off+4:off+4+rn]); err != nil {
		return Control{}, fmt.Errorf("%w: %w", ErrBadControl, err)
	}
	m, _, err := ParseControl(buf[:off+4+rn])
	return m, err
}
