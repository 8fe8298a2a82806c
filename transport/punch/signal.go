package punch

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Role says which side of an attempt we are.
type Role uint8

// Roles.
const (
	Initiator Role = iota + 1
	Responder
)

func (r Role) String() string {
	switch r {
	case Initiator:
		return "initiator"
	case Responder:
		return "responder"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

func (r Role) flag() Flags {
	if r == Initiator {
		return FlagInitiator
	}
	return 0
}

// MaxCandidates bounds the candidates of each transport in an offer.
const MaxCandidates = 8

// Offer is what one side tells the other through signalling.
type Offer struct {
	// Attempt and Token are chosen by the initiator (NewOffer) and echoed
	// (Attempt only) by the responder.
	Attempt [8]byte
	Token   [TokenSize]byte
	// UDP and TCP are candidate endpoints, best first (reflexive, then local).
	UDP []netip.AddrPort
	TCP []netip.AddrPort
	// Hard is set when our NAT's mapping depends on the destination
	// (symmetric): our reflexive address is useless to the peer.
	Hard bool
}

// NewOffer returns an initiator's offer with a fresh attempt id and token.
func NewOffer() Offer {
	var o Offer
	_, _ = rand.Read(o.Attempt[:])
	_, _ = rand.Read(o.Token[:])
	return o
}

// SignalKind is the type of a signalling message.
type SignalKind uint8

// Signalling message kinds.
const (
	KindOffer  SignalKind = 1
	KindAnswer SignalKind = 2
	KindSync   SignalKind = 3
)

// SignalMsg is one signalling message.
type SignalMsg struct {
	Kind  SignalKind
	Offer Offer
	// RTT is the initiator's measured round trip (Sync only).
	RTT time.Duration
}

// Signal carries signalling messages to and from the peer of one attempt,
// in order. The lab's rendezvous server implements it today; the supernode's
// signalling channel will. It must be authenticated and private: the token
// travels through it.
type Signal interface {
	Send(ctx context.Context, m SignalMsg) error
	Recv(ctx context.Context) (SignalMsg, error)
}

// Signalling wire format (what a Signal moves as bytes):
//
//	0   1   kind (1 offer, 2 answer, 3 sync)
//	1   1   version (1)
//	2   8   attempt id
//	10  32  token (zero except in the initiator's offer)
//	42  1   flags: bit 0 hard
//	43  4   RTT in microseconds (sync only, else zero)
//	47  1   number of UDP candidates (≤ 8)
//	48  1   number of TCP candidates (≤ 8)
//	49  19× endpoints: family (4 or 6), 16-byte address (IPv4-mapped for
//	        family 4), port
const (
	signalHeader   = 49
	endpointSize   = 19
	maxSignalSize  = signalHeader + 2*MaxCandidates*endpointSize
	maxRTTMicros   = 60_000_000
	signalFlagHard = 1
)

// ErrBadSignal matches every signalling decode failure.
var ErrBadSignal = errors.New("punch: malformed signalling message")

func badSignal(reason string) error { return fmt.Errorf("%w: %s", ErrBadSignal, reason) }

// MarshalSignal encodes m.
func MarshalSignal(m SignalMsg) ([]byte, error) {
	if m.Kind < KindOffer || m.Kind > KindSync {
		return nil, fmt.Errorf("punch: signal kind %d", m.Kind)
	}
	if len(m.Offer.UDP) > MaxCandidates || len(m.Offer.TCP) > MaxCandidates {
		return nil, fmt.Errorf("punch: more than %d candidates", MaxCandidates)
	}
	us := m.RTT.Microseconds()
	if us < 0 || us > maxRTTMicros || (m.Kind != KindSync && us != 0) {
		return nil, fmt.Errorf("punch: rtt %v out of range", m.RTT)
	}
	b := make([]byte, 0, signalHeader+(len(m.Offer.UDP)+len(m.Offer.TCP))*endpointSize)
	b = append(b, byte(m.Kind), Version)
	b = append(b, m.Offer.Attempt[:]...)
	b = append(b, m.Offer.Token[:]...)
	var fl byte
	if m.Offer.Hard {
		fl = signalFlagHard
	}
	b = append(b, fl)
	b = binary.BigEndian.AppendUint32(b, uint32(us))
	b = append(b, byte(len(m.Offer.UDP)), byte(len(m.Offer.TCP)))
	for _, set := range [][]netip.AddrPort{m.Offer.UDP, m.Offer.TCP} {
		for _, ap := range set {
			a := ap.Addr()
			if !a.IsValid() || a.Zone() != "" {
				return nil, fmt.Errorf("punch: bad candidate %v", ap)
			}
			fam := byte(6)
			if a.Is4() || a.Is4In6() {
				fam = 4
			}
			a16 := a.As16()
			b = append(b, fam)
			b = append(b, a16[:]...)
			b = binary.BigEndian.AppendUint16(b, ap.Port())
		}
	}
	return b, nil
}

// UnmarshalSignal decodes a signalling message strictly: a decoded message
// re-encodes to the same bytes.
func UnmarshalSignal(b []byte) (SignalMsg, error) {
	var m SignalMsg
	if len(b) < signalHeader || len(b) > maxSignalSize {
		return m, badSignal("length")
	}
	m.Kind = SignalKind(b[0])
	if m.Kind < KindOffer || m.Kind > KindSync {
		return m, badSignal("kind")
	}
	if b[1] != Version {
		return m, badSignal("version")
	}
	copy(m.Offer.Attempt[:], b[2:10])
	copy(m.Offer.Token[:], b[10:42])
	if b[42]&^signalFlagHard != 0 {
		return m, badSignal("flags")
	}
	m.Offer.Hard = b[42]&signalFlagHard != 0
	us := binary.BigEndian.Uint32(b[43:47])
	if us > maxRTTMicros || (m.Kind != KindSync && us != 0) {
		return m, badSignal("rtt")
	}
	m.RTT = time.Duration(us) * time.Microsecond
	nu, nt := int(b[47]), int(b[48])
	if nu > MaxCandidates || nt > MaxCandidates || len(b) != signalHeader+(nu+nt)*endpointSize {
		return m, badSignal("candidate count")
	}
	off := signalHeader
	for i := range nu + nt {
		e := b[off : off+endpointSize]
		off += endpointSize
		a := netip.AddrFrom16([16]byte(e[1:17]))
		switch e[0] {
		case 4:
			if !a.Is4In6() {
				return m, badSignal("family 4 with a non IPv4-mapped address")
			}
			a = a.Unmap()
		case 6:
			if a.Is4In6() {
				return m, badSignal("family 6 with an IPv4-mapped address")
			}
		default:
			return m, badSignal("address family")
		}
		ap := netip.AddrPortFrom(a, binary.BigEndian.Uint16(e[17:19]))
		if i < nu {
			m.Offer.UDP = append(m.Offer.UDP, ap)
		} else {
			m.Offer.TCP = append(m.Offer.TCP, ap)
		}
	}
	return m, nil
}

// Plan is the outcome of signalling: everything both sides need to punch.
type Plan struct {
	Role   Role
	Key    *Key
	Local  Offer
	Remote Offer
	// RTT is the signalling round trip the initiator measured.
	RTT time.Duration
	// Sync is when the initiator sent Sync (initiator) or when Sync arrived
	// (responder): time to the first direct packet is counted from it.
	Sync time.Time
	// Start is when to send the first punch: Sync + RTT/2 on the
	// initiator, Sync on the responder, so both first punches leave at about
	// the same moment.
	Start time.Time
}

// Negotiate runs offer, answer and sync over sig. The initiator's local offer
// must carry the attempt id and token (NewOffer); the responder's are taken
// from the initiator's offer.
func Negotiate(ctx context.Context, sig Signal, role Role, local Offer) (Plan, error) {
	p := Plan{Role: role, Local: local}
	switch role {
	case Initiator:
		if local.Token == ([TokenSize]byte{}) {
			return p, errors.New("punch: initiator offer without token")
		}
		t0 := time.Now()
		if err := sig.Send(ctx, SignalMsg{Kind: KindOffer, Offer: local}); err != nil {
			return p, fmt.Errorf("send offer: %w", err)
		}
		ans, err := sig.Recv(ctx)
		if err != nil {
			return p, fmt.Errorf("receive answer: %w", err)
		}
		if ans.Kind != KindAnswer || ans.Offer.Attempt != local.Attempt {
			return p, fmt.Errorf("punch: expected the answer of attempt %x, got kind %d of %x", local.Attempt, ans.Kind, ans.Offer.Attempt)
		}
		p.RTT = time.Since(t0)
		p.Remote = ans.Offer
		p.Key = NewKey(local.Attempt, local.Token)
		if err := sig.Send(ctx, SignalMsg{Kind: KindSync, Offer: Offer{Attempt: local.Attempt}, RTT: p.RTT}); err != nil {
			return p, fmt.Errorf("send sync: %w", err)
		}
		p.Sync = time.Now()
		p.Start = p.Sync.Add(p.RTT / 2)
	case Responder:
		off, err := sig.Recv(ctx)
		if err != nil {
			return p, fmt.Errorf("receive offer: %w", err)
		}
		if off.Kind != KindOffer || off.Offer.Token == ([TokenSize]byte{}) {
			return p, fmt.Errorf("punch: expected an offer with a token, got kind %d", off.Kind)
		}
		p.Remote = off.Offer
		p.Local.Attempt, p.Local.Token = off.Offer.Attempt, [TokenSize]byte{}
		p.Key = NewKey(off.Offer.Attempt, off.Offer.Token)
		if err := sig.Send(ctx, SignalMsg{Kind: KindAnswer, Offer: p.Local}); err != nil {
			return p, fmt.Errorf("send answer: %w", err)
		}
		syn, err := sig.Recv(ctx)
		if err != nil {
			return p, fmt.Errorf("receive sync: %w", err)
		}
		if syn.Kind != KindSync || syn.Offer.Attempt != off.Offer.Attempt {
			return p, fmt.Errorf("punch: expected sync of attempt %x, got kind %d", off.Offer.Attempt, syn.Kind)
		}
		p.RTT = syn.RTT
		p.Sync = time.Now()
		p.Start = p.Sync
	default:
		return p, fmt.Errorf("punch: bad role %v", role)
	}
	return p, nil
}
