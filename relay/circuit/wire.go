package circuit

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/elacity/pc2/core/identity"
)

// ALPN is the TLS application protocol of a peer's control connection.
const ALPN = "pc2-relay/1"

// TypeData is the first byte of a relayed data packet. It is below 0x40 so
// that the packet shares a node's socket with QUIC, and outside the ranges
// of STUN (0x00-0x01), the NAT lab's probes (0x31-0x34) and hole punching
// (0x3a-0x3b).
const TypeData = 0x24

// HeaderLen is the size of a data packet's header: type and session id.
const HeaderLen = 1 + SessionIDLen

// MaxPacket is the largest relayed datagram: what quic-go delivers whole
// from a shared socket. Longer datagrams may have been truncated and are
// dropped.
const MaxPacket = 1452

// MaxPayload is the largest end-to-end packet that fits in a relayed
// datagram. quic-go keeps its packets at its initial size (1280 bytes)
// on a [PacketConn], since path MTU discovery needs a real UDP socket.
const MaxPayload = MaxPacket - HeaderLen

// SessionIDLen is the size of a session id.
const SessionIDLen = 8

// SessionID names one relayed session. The relay picks it at random; it
// identifies, it does not authorize (the source address does).
type SessionID [SessionIDLen]byte

func (s SessionID) String() string { return hex.EncodeToString(s[:]) }

// Errors of the data packet format.
var (
	ErrShortPacket = errors.New("circuit: packet shorter than its header")
	ErrNotData     = errors.New("circuit: not a relay data packet")
	ErrLongPacket  = errors.New("circuit: packet longer than a relayed datagram")
)

// AppendData appends a data packet carrying payload for session to dst.
func AppendData(dst []byte, session SessionID, payload []byte) []byte {
	dst = append(dst, TypeData)
	dst = append(dst, session[:]...)
	return append(dst, payload...)
}

// ParseData splits a data packet into its session id and payload (which
// aliases pkt). An empty payload is valid (it keeps a NAT mapping alive).
func ParseData(pkt []byte) (SessionID, []byte, error) {
	var s SessionID
	if len(pkt) < HeaderLen {
		return s, nil, ErrShortPacket
	}
	if pkt[0] != TypeData {
		return s, nil, ErrNotData
	}
	if len(pkt) > MaxPacket {
		return s, nil, ErrLongPacket
	}
	copy(s[:], pkt[1:HeaderLen])
	return s, pkt[HeaderLen:], nil
}

// MsgType is the kind of a control message.
type MsgType uint8

// Control messages. Client → relay: Reserve, Connect, Accept (answering
// Incoming), Closed (releasing a session; the relay answers Closed).
// Relay → client: Reserved, Connected, Incoming, Closed. Error answers any
// request.
const (
	MsgReserve   MsgType = 1 // become reachable through the relay, or refresh
	MsgReserved  MsgType = 2 // TTL, Limits
	MsgConnect   MsgType = 3 // Peer: the reserved peer to reach
	MsgConnected MsgType = 4 // Session, Peer, Limits
	MsgIncoming  MsgType = 5 // Session, Peer (the initiator), Limits
	MsgAccept    MsgType = 6 // Session
	MsgClosed    MsgType = 7 // Session, Reason
	MsgError     MsgType = 8 // Code, Text
)

func (t MsgType) String() string {
	switch t {
	case MsgReserve:
		return "reserve"
	case MsgReserved:
		return "reserved"
	case MsgConnect:
		return "connect"
	case MsgConnected:
		return "connected"
	case MsgIncoming:
		return "incoming"
	case MsgAccept:
		return "accept"
	case MsgClosed:
		return "closed"
	case MsgError:
		return "error"
	}
	return fmt.Sprintf("msg(%d)", uint8(t))
}

// Reason says why the relay ended a session.
type Reason uint8

// Reasons a session ends.
const (
	ReasonNone     Reason = 0
	ReasonBytes    Reason = 1 // the session's byte quota is used up
	ReasonDuration Reason = 2 // the session's time is up
	ReasonIdle     Reason = 3 // no packet for the idle timeout
	ReasonPeerGone Reason = 4 // one peer's control connection ended
	ReasonShutdown Reason = 5 // the relay is stopping
	ReasonReleased Reason = 6 // one peer released it
)

func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "open"
	case ReasonBytes:
		return "byte quota used up"
	case ReasonDuration:
		return "duration limit reached"
	case ReasonIdle:
		return "idle"
	case ReasonPeerGone:
		return "peer gone"
	case ReasonShutdown:
		return "relay shutting down"
	case ReasonReleased:
		return "released by a peer"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// ErrCode classifies an Error message.
type ErrCode uint8

// Error codes.
const (
	CodeInternal    ErrCode = 1
	CodeBadRequest  ErrCode = 2
	CodeRateLimited ErrCode = 3 // too many new reservations or sessions per second
	CodeNoCapacity  ErrCode = 4 // the relay's or the peer's count limits are reached
	CodeNoPeer      ErrCode = 5 // the target holds no reservation here
	CodeRefused     ErrCode = 6 // the target refused or did not answer
)

// Limits are what a relay grants one session (and, for Reserved, each
// session of the reservation). Zero means unlimited.
type Limits struct {
	BytesPerSecond uint64        // token bucket rate, both directions summed
	MaxBytes       uint64        // total bytes forwarded, both directions
	MaxDuration    time.Duration // from the session's start; whole milliseconds
}

// Msg is one control message. Only the fields of its Type are encoded.
type Msg struct {
	Type    MsgType
	Session SessionID
	Peer    identity.ID
	TTL     time.Duration // Reserved; whole milliseconds
	Limits  Limits
	Reason  Reason
	Code    ErrCode
	Text    string // Error; at most MaxText bytes
}

// MaxText bounds an Error message's text.
const MaxText = 200

// MaxMsg bounds an encoded control message.
const MaxMsg = 512

const limitsLen = 8 + 8 + 4

// Errors of the control message format.
var (
	ErrBadMsg  = errors.New("circuit: malformed control message")
	ErrLongMsg = errors.New("circuit: control message too long")
)

func appendLimits(b []byte, l Limits) []byte {
	b = binary.BigEndian.AppendUint64(b, l.BytesPerSecond)
	b = binary.BigEndian.AppendUint64(b, l.MaxBytes)
	return binary.BigEndian.AppendUint32(b, millis(l.MaxDuration))
}

func parseLimits(b []byte) Limits {
	return Limits{
		BytesPerSecond: binary.BigEndian.Uint64(b),
		MaxBytes:       binary.BigEndian.Uint64(b[8:]),
		MaxDuration:    time.Duration(binary.BigEndian.Uint32(b[16:])) * time.Millisecond,
	}
}

func millis(d time.Duration) uint32 {
	ms := d.Milliseconds()
	switch {
	case ms < 0:
		return 0
	case ms > 1<<32-1:
		return 1<<32 - 1
	}
	return uint32(ms)
}

// bodyLen is the exact body size of each fixed-size message.
func bodyLen(t MsgType) int {
	switch t {
	case MsgReserve:
		return 0
	case MsgReserved:
		return 4 + limitsLen
	case MsgConnect:
		return identity.IDSize
	case MsgConnected, MsgIncoming:
		return SessionIDLen + identity.IDSize + limitsLen
	case MsgAccept:
		return SessionIDLen
	case MsgClosed:
		return SessionIDLen + 1
	}
	return -1
}

// Append encodes m after dst.
func (m *Msg) Append(dst []byte) ([]byte, error) {
	dst = append(dst, byte(m.Type))
	switch m.Type {
	case MsgReserve:
	case MsgReserved:
		dst = binary.BigEndian.AppendUint32(dst, millis(m.TTL))
		dst = appendLimits(dst, m.Limits)
	case MsgConnect:
		dst = append(dst, m.Peer[:]...)
	case MsgConnected, MsgIncoming:
		dst = append(dst, m.Session[:]...)
		dst = append(dst, m.Peer[:]...)
		dst = appendLimits(dst, m.Limits)
	case MsgAccept:
		dst = append(dst, m.Session[:]...)
	case MsgClosed:
		dst = append(dst, m.Session[:]...)
		dst = append(dst, byte(m.Reason))
	case MsgError:
		if len(m.Text) > MaxText {
			return nil, fmt.Errorf("%w: error text of %d bytes", ErrLongMsg, len(m.Text))
		}
		dst = append(dst, byte(m.Code), byte(len(m.Text)))
		dst = append(dst, m.Text...)
	default:
		return nil, fmt.Errorf("%w: unknown type %d", ErrBadMsg, m.Type)
	}
	return dst, nil
}

// ParseMsg decodes one control message; it accepts exactly what Append
// produces, so a parsed message re-encodes to the same bytes.
func ParseMsg(b []byte) (Msg, error) {
	var m Msg
	if len(b) == 0 {
		return m, fmt.Errorf("%w: empty", ErrBadMsg)
	}
	if len(b) > MaxMsg {
		return m, ErrLongMsg
	}
	m.Type = MsgType(b[0])
	body := b[1:]
	if m.Type == MsgError {
		if len(body) < 2 || int(body[1]) != len(body)-2 || len(body)-2 > MaxText {
			return Msg{}, fmt.Errorf("%w: error body of %d bytes", ErrBadMsg, len(body))
		}
		m.Code = ErrCode(body[0])
		m.Text = string(body[2:])
		return m, nil
	}
	n := bodyLen(m.Type)
	if n < 0 {
		return Msg{}, fmt.Errorf("%w: unknown type %d", ErrBadMsg, m.Type)
	}
	if len(body) != n {
		return Msg{}, fmt.Errorf("%w: %s body of %d bytes, want %d", ErrBadMsg, m.Type, len(body), n)
	}
	switch m.Type {
	case MsgReserved:
		m.TTL = time.Duration(binary.BigEndian.Uint32(body)) * time.Millisecond
		m.Limits = parseLimits(body[4:])
	case MsgConnect:
		copy(m.Peer[:], body)
	case MsgConnected, MsgIncoming:
		copy(m.Session[:], body)
		copy(m.Peer[:], body[SessionIDLen:])
		m.Limits = parseLimits(body[SessionIDLen+identity.IDSize:])
	case MsgAccept:
		copy(m.Session[:], body)
	case MsgClosed:
		copy(m.Session[:], body)
		m.Reason = Reason(body[SessionIDLen])
	}
	return m, nil
}

// WriteMsg writes m with its 2-byte length prefix.
func WriteMsg(w io.Writer, m *Msg) error {
	b, err := m.Append(make([]byte, 2, 64))
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("circuit: write %s: %w", m.Type, err)
	}
	return nil
}

// ReadMsg reads one length-prefixed message, refusing lengths over MaxMsg
// before reading the body.
func ReadMsg(r io.Reader) (Msg, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Msg{}, fmt.Errorf("circuit: read message length: %w", err)
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > MaxMsg {
		return Msg{}, fmt.Errorf("%w: %d bytes", ErrLongMsg, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return Msg{}, fmt.Errorf("circuit: read message: %w", err)
	}
	return ParseMsg(buf)
}

// RemoteError is an Error message received from the other side.
type RemoteError struct {
	Code ErrCode
	Text string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("circuit: relay refused (code %d): %s", e.Code, e.Text)
}
