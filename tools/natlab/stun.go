package natlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/pion/stun/v3"
)

// The probe server also answers STUN Binding requests (RFC 8489) on its four
// sockets, honouring the classic CHANGE-REQUEST attribute (RFC 3489 §11.2.4,
// RFC 5780 §7.2). It exists for miniupnpd: the lab's WAN addresses are
// documentation prefixes, which miniupnpd treats as reserved, and the only
// way it accepts such an address and enables port forwarding is a STUN test
// (ext_perform_stun) that finds no NAT and no filtering in front of the
// router. That test sends four requests (no change, change port, change IP,
// change both) and needs all four answers, so a plain STUN server is not
// enough: the answers must come from the server's other address and port.
//
// Decoding and encoding use github.com/pion/stun; this file only adds the
// strictness a server of untrusted input wants (exact length, known
// attributes, a checked FINGERPRINT) and the choice of reply socket.

// STUN answer limits: a request is at most MaxSTUNRequest bytes; an answer is
// a header and one XOR-MAPPED-ADDRESS (32 bytes for IPv4, 44 for IPv6): at
// most 1.6× the smallest valid request (20 bytes), 1.14× miniupnpd's (28).
const (
	MaxSTUNRequest = 548
	stunHeaderSize = 20
)

// ErrSTUNRejected is wrapped by every error of AnswerSTUN: the input is not a
// STUN Binding request the probe server answers. It gets no answer.
var ErrSTUNRejected = errors.New("natlab: stun request rejected")

// IsSTUN reports whether b is shaped like a STUN message (RFC 8489 §5: the two
// top bits zero, the magic cookie at bytes 4..7). Probe protocol messages
// never are (their first byte is 0x31..0x34, their bytes 4..7 part of an id).
func IsSTUN(b []byte) bool {
	return len(b) >= stunHeaderSize && b[0]&0xc0 == 0 && stun.IsMessage(b)
}

// AnswerSTUN decodes a STUN Binding request from a client seen at observed
// and returns the Binding success response (XOR-MAPPED-ADDRESS = observed),
// built in buf's storage when it is large enough, together with the
// CHANGE-REQUEST flags: the caller sends the answer from its other address
// (FlagChangeIP) and/or other port (FlagChangePort).
//
// Accepted: a Binding request whose length field covers the datagram
// exactly, with at most one well-formed CHANGE-REQUEST, a correct
// FINGERPRINT if any, PADDING, and comprehension-optional attributes (which
// are ignored). Anything else (other methods or classes, authentication,
// unknown comprehension-required attributes, trailing bytes) is rejected
// with an error wrapping ErrSTUNRejected.
func AnswerSTUN(req []byte, observed netip.AddrPort, buf []byte) ([]byte, Flags, error) {
	reject := func(format string, args ...any) ([]byte, Flags, error) {
		return nil, 0, fmt.Errorf("%w: "+format, append([]any{ErrSTUNRejected}, args...)...)
	}
	if !IsSTUN(req) {
		return reject("not a STUN message")
	}
	// Only the first MaxSTUNRequest bytes are decoded, which bounds the
	// work; the exact-length check then rejects anything longer. (No branch
	// of its own for long input: Go's fuzz minimizer is quadratic in the
	// length of an input that reaches new code.)
	m := stun.Message{Raw: req[:min(len(req), MaxSTUNRequest)]}
	if err := m.Decode(); err != nil {
		return reject("%v", err)
	}
	if m.Type != stun.BindingRequest {
		return reject("message type %v, want binding request", m.Type)
	}
	if int(m.Length)+stunHeaderSize != len(req) || m.Length%4 != 0 {
		return reject("length field %d for a %d-byte datagram (max %d)", m.Length, len(req), MaxSTUNRequest)
	}
	var flags Flags
	seenChange := false
	for i, a := range m.Attributes {
		switch a.Type {
		case stun.AttrChangeRequest:
			if seenChange || len(a.Value) != 4 {
				return reject("malformed or repeated CHANGE-REQUEST")
			}
			seenChange = true
			v := binary.BigEndian.Uint32(a.Value)
			if v&^0x6 != 0 {
				return reject("CHANGE-REQUEST %#x has unknown bits", v)
			}
			if v&0x4 != 0 {
				flags |= FlagChangeIP
			}
			if v&0x2 != 0 {
				flags |= FlagChangePort
			}
		case stun.AttrFingerprint:
			if i != len(m.Attributes)-1 {
				return reject("FINGERPRINT is not the last attribute")
			}
			if err := stun.Fingerprint.Check(&m); err != nil {
				return reject("FINGERPRINT: %v", err)
			}
		case stun.AttrPadding:
		default:
			if a.Type.Required() {
				return reject("unsupported comprehension-required attribute %v", a.Type)
			}
		}
	}
	if !observed.IsValid() {
		return reject("no observed address")
	}
	addr := observed.Addr().Unmap()
	var ip net.IP
	if addr.Is4() {
		a4 := addr.As4()
		ip = a4[:]
	} else {
		a16 := addr.As16()
		ip = a16[:]
	}
	resp := stun.Message{Raw: buf[:0], Type: stun.BindingSuccess, TransactionID: m.TransactionID}
	resp.WriteHeader()
	if err := (stun.XORMappedAddress{IP: ip, Port: int(observed.Port())}).AddTo(&resp); err != nil {
		return reject("encode answer: %v", err)
	}
	return resp.Raw, flags, nil
}
