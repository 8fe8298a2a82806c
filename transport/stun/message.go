// Package stun finds a node's reflexive address and classifies the NAT in
// front of it, and answers the same questions for others as a supernode
// service. It speaks standard STUN (RFC 8489/5389 Binding), so the client
// also works against any STUN server (coturn, public servers), and the
// RFC 5780 behaviour-discovery extension (CHANGE-REQUEST, RESPONSE-ORIGIN,
// OTHER-ADDRESS), which is what tells endpoint-independent from
// address-dependent mapping and filtering.
//
// It exists because hole punching needs both answers before it starts: the
// reflexive address is what a peer must send to, and the NAT class decides
// whether to punch, guess ports or go straight to a relay. The client runs
// over any packet sender, in particular the node's shared socket
// (transport/udpmux), so the mapping it reports is the one QUIC uses.
//
// Encoding and decoding use github.com/pion/stun; this package adds the
// strictness a server of untrusted input needs (exact length, bounded size,
// known attributes, a checked FINGERPRINT) and the RFC 5780 tests.
//
// Amplification. A STUN server answers unauthenticated UDP, so a spoofed
// source turns it into a reflector. The Server therefore never sends more
// than the request unless the answer is the minimal one a standard client
// needs: the header and one XOR-MAPPED-ADDRESS (32 bytes for IPv4, 44 for
// IPv6, plus 8 if the request carried a FINGERPRINT), at most 2.2× the
// smallest valid request. The RFC 5780 attributes (RESPONSE-ORIGIN,
// OTHER-ADDRESS) are added only when the request is at least as long as the
// full answer, which this package's client ensures by padding its requests
// (with a SOFTWARE attribute: see NewRequest). With ServerConfig.Strict even the minimal answer must
// fit in the request (factor ≤ 1.0; plain 20-byte requests then get no
// answer). Every source IP is also rate limited.
package stun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	pstun "github.com/pion/stun/v3"
)

// Wire limits.
const (
	// MaxMessage is the largest STUN message this package decodes (RFC 8489
	// §6.1: 548 bytes fit any IPv4 path without fragmentation).
	MaxMessage = 548
	headerSize = 20
	// PaddedRequest is the size of the client's requests: enough for the
	// full answer over IPv6 (header, three 24-byte addresses, FINGERPRINT).
	PaddedRequest = 112
)

// Change is the CHANGE-REQUEST flags (RFC 5780 §7.2).
type Change uint32

// CHANGE-REQUEST bits.
const (
	ChangeIP   Change = 0x4
	ChangePort Change = 0x2
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("stun: malformed message")

// Response is a decoded Binding response.
type Response struct {
	TxID [pstun.TransactionIDSize]byte
	// Mapped is XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS from an RFC 3489 server).
	Mapped netip.AddrPort
	// Origin is RESPONSE-ORIGIN (zero if absent).
	Origin netip.AddrPort
	// Other is OTHER-ADDRESS, or CHANGED-ADDRESS of RFC 3489 (zero if absent).
	Other netip.AddrPort
	// ErrorCode is the ERROR-CODE of an error response (0 for success).
	ErrorCode int
}

// IsMessage reports whether b is shaped like a STUN message: two top bits
// zero (so it passes a udpmux) and the magic cookie.
func IsMessage(b []byte) bool {
	return len(b) >= headerSize && b[0]&0xc0 == 0 && pstun.IsMessage(b)
}

// IsResponse reports whether b looks like a Binding success or error
// response: the matcher a client registers on a udpmux.
func IsResponse(b []byte) bool {
	return IsMessage(b) && (b[0] == 0x01 && (b[1] == 0x01 || b[1] == 0x11))
}

// IsRequest reports whether b looks like a Binding request.
func IsRequest(b []byte) bool {
	return IsMessage(b) && b[0] == 0x00 && b[1] == 0x01
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// decode parses b strictly: at most MaxMessage bytes, the length field
// covering b exactly, a correct FINGERPRINT (last) if any.
func decode(b []byte) (*pstun.Message, error) {
	if !IsMessage(b) {
		return nil, malformed("not a STUN message")
	}
	if len(b) > MaxMessage {
		return nil, malformed("%d bytes, max %d", len(b), MaxMessage)
	}
	m := &pstun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		return nil, malformed("%v", err)
	}
	if int(m.Length)+headerSize != len(b) || m.Length%4 != 0 {
		return nil, malformed("length field %d for a %d-byte datagram", m.Length, len(b))
	}
	for i, a := range m.Attributes {
		if a.Type == pstun.AttrFingerprint {
			if i != len(m.Attributes)-1 {
				return nil, malformed("FINGERPRINT is not the last attribute")
			}
			if err := pstun.Fingerprint.Check(m); err != nil {
				return nil, malformed("FINGERPRINT: %v", err)
			}
		}
	}
	return m, nil
}

// NewRequest builds a Binding request with transaction id tx, the given
// CHANGE-REQUEST flags (none if 0), padded to pad bytes (no padding if pad
// ≤ its natural size) and ending with a FINGERPRINT.
func NewRequest(tx [pstun.TransactionIDSize]byte, change Change, pad int) ([]byte, error) {
	m := &pstun.Message{Type: pstun.BindingRequest, TransactionID: tx}
	m.WriteHeader()
	if change != 0 {
		var v [4]byte
		binary.BigEndian.PutUint32(v[:], uint32(change))
		m.Add(pstun.AttrChangeRequest, v[:])
	}
	// Natural size so far + FINGERPRINT (8); SOFTWARE adds 4 + its length.
	// Padding goes into SOFTWARE ("pc2" and spaces), which every server
	// ignores, rather than RFC 5780's PADDING: coturn answers a PADDING
	// request with a 1500-byte response, longer than a shared socket
	// delivers (udpmux.MaxPacket) and a tenfold amplification.
	if n := pad - (int(m.Length) + headerSize + 8 + 4); n > 0 {
		sw := make([]byte, n&^3)
		for i := range sw {
			sw[i] = ' '
		}
		copy(sw, "pc2")
		m.Add(pstun.AttrSoftware, sw)
	}
	if err := pstun.Fingerprint.AddTo(m); err != nil {
		return nil, fmt.Errorf("stun: fingerprint: %w", err)
	}
	return m.Raw, nil
}

// ParseResponse decodes a Binding success or error response.
func ParseResponse(b []byte) (Response, error) {
	m, err := decode(b)
	if err != nil {
		return Response{}, err
	}
	r := Response{TxID: m.TransactionID}
	switch m.Type {
	case pstun.BindingSuccess:
	case pstun.BindingError:
		var ec pstun.ErrorCodeAttribute
		if err := ec.GetFrom(m); err != nil {
			return Response{}, malformed("error response: %v", err)
		}
		// RFC 5389 §15.6: classes 3 to 6. A code outside them (0 would
		// read as success) makes the response malformed.
		if ec.Code < 300 || ec.Code > 699 {
			return Response{}, malformed("error code %d", ec.Code)
		}
		r.ErrorCode = int(ec.Code)
		return r, nil
	default:
		return Response{}, malformed("message type %v, want a binding response", m.Type)
	}
	var xa pstun.XORMappedAddress
	if err := xa.GetFrom(m); err == nil {
		r.Mapped, err = addrPort(xa.IP, xa.Port)
		if err != nil {
			return Response{}, malformed("XOR-MAPPED-ADDRESS: %v", err)
		}
	} else {
		var ma pstun.MappedAddress
		if err := ma.GetFrom(m); err != nil {
			return Response{}, malformed("no mapped address: %v", err)
		}
		if r.Mapped, err = addrPort(ma.IP, ma.Port); err != nil {
			return Response{}, malformed("MAPPED-ADDRESS: %v", err)
		}
	}
	for _, at := range []struct {
		t   pstun.AttrType
		dst *netip.AddrPort
	}{
		{pstun.AttrResponseOrigin, &r.Origin},
		{pstun.AttrOtherAddress, &r.Other},
		{pstun.AttrChangedAddress, &r.Other},
	} {
		if !m.Contains(at.t) || at.dst.IsValid() {
			continue
		}
		var a pstun.MappedAddress
		if err := a.GetFromAs(m, at.t); err != nil {
			return Response{}, malformed("%v: %v", at.t, err)
		}
		if *at.dst, err = addrPort(a.IP, a.Port); err != nil {
			return Response{}, malformed("%v: %v", at.t, err)
		}
	}
	return r, nil
}

func addrPort(ip net.IP, port int) (netip.AddrPort, error) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("bad address %v port %d", ip, port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}

// Request is a decoded Binding request as a server sees it.
type Request struct {
	TxID        [pstun.TransactionIDSize]byte
	Change      Change
	Fingerprint bool
	Size        int
}

// ParseRequest decodes a Binding request strictly: at most one well-formed
// CHANGE-REQUEST with known bits, FINGERPRINT (checked), PADDING, SOFTWARE
// and other comprehension-optional attributes; anything
// comprehension-required and unknown (authentication included) is an error.
func ParseRequest(b []byte) (Request, error) {
	m, err := decode(b)
	if err != nil {
		return Request{}, err
	}
	if m.Type != pstun.BindingRequest {
		return Request{}, malformed("message type %v, want binding request", m.Type)
	}
	r := Request{TxID: m.TransactionID, Size: len(b)}
	seenChange := false
	for _, a := range m.Attributes {
		switch a.Type {
		case pstun.AttrChangeRequest:
			if seenChange || len(a.Value) != 4 {
				return Request{}, malformed("malformed or repeated CHANGE-REQUEST")
			}
			seenChange = true
			v := Change(binary.BigEndian.Uint32(a.Value))
			if v&^(ChangeIP|ChangePort) != 0 {
				return Request{}, malformed("CHANGE-REQUEST %#x has unknown bits", uint32(v))
			}
			r.Change = v
		case pstun.AttrFingerprint:
			r.Fingerprint = true
		case pstun.AttrPadding:
		default:
			if a.Type.Required() {
				return Request{}, malformed("unsupported comprehension-required attribute %v", a.Type)
			}
		}
	}
	return r, nil
}

// AnswerInfo is what a server puts in an answer besides the mapped address.
type AnswerInfo struct {
	Observed netip.AddrPort // the request's source: XOR-MAPPED-ADDRESS
	Origin   netip.AddrPort // the socket the answer leaves from (zero: omit)
	Other    netip.AddrPort // OTHER-ADDRESS (zero: omit)
	// Strict refuses any answer longer than the request.
	Strict bool
}

// ErrNoAnswer is returned by AppendAnswer when the amplification rule leaves
// nothing to send.
var ErrNoAnswer = errors.New("stun: answer would amplify")

// AppendAnswer appends to buf the Binding success response to req (see the
// package doc for which attributes fit).
func AppendAnswer(buf []byte, req Request, info AnswerInfo) ([]byte, error) {
	minimal := headerSize + addrAttrLen(info.Observed)
	if req.Fingerprint {
		minimal += 8
	}
	if full := minimal + addrAttrLen(info.Origin) + addrAttrLen(info.Other); full <= req.Size {
		return buildAnswer(buf, req, info, true), nil
	}
	if info.Strict && minimal > req.Size {
		return buf, ErrNoAnswer
	}
	return buildAnswer(buf, req, info, false), nil
}

// addrAttrLen is the encoded size of an address attribute (0 if omitted).
func addrAttrLen(ap netip.AddrPort) int {
	switch {
	case !ap.IsValid():
		return 0
	case ap.Addr().Unmap().Is4():
		return 4 + 8
	default:
		return 4 + 20
	}
}

func buildAnswer(buf []byte, req Request, info AnswerInfo, full bool) []byte {
	m := &pstun.Message{Raw: buf[len(buf):], Type: pstun.BindingSuccess, TransactionID: req.TxID}
	m.WriteHeader()
	add := func(t pstun.AttrType, ap netip.AddrPort) {
		if !ap.IsValid() {
			return
		}
		ip := net.IP(ap.Addr().Unmap().AsSlice())
		if t == pstun.AttrXORMappedAddress {
			_ = (&pstun.XORMappedAddress{IP: ip, Port: int(ap.Port())}).AddTo(m)
			return
		}
		_ = (&pstun.MappedAddress{IP: ip, Port: int(ap.Port())}).AddToAs(m, t)
	}
	add(pstun.AttrXORMappedAddress, info.Observed)
	if full {
		add(pstun.AttrResponseOrigin, info.Origin)
		add(pstun.AttrOtherAddress, info.Other)
	}
	if req.Fingerprint {
		_ = pstun.Fingerprint.AddTo(m)
	}
	return append(buf, m.Raw...)
}

// AppendError appends a Binding error response with code (e.g. 420 for a
// CHANGE-REQUEST the server cannot honour), subject to the same
// amplification rule as answers.
func AppendError(buf []byte, req Request, code int, strict bool) ([]byte, error) {
	m := &pstun.Message{Raw: buf[len(buf):], Type: pstun.BindingError, TransactionID: req.TxID}
	m.WriteHeader()
	_ = pstun.ErrorCodeAttribute{Code: pstun.ErrorCode(code)}.AddTo(m)
	if code == int(pstun.CodeUnknownAttribute) {
		_ = pstun.UnknownAttributes{pstun.AttrChangeRequest}.AddTo(m)
	}
	if strict && len(m.Raw) > req.Size {
		return buf, ErrNoAnswer
	}
	return append(buf, m.Raw...), nil
}
