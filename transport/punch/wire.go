package punch

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash"
	"sync"
)

// Punch packets are fixed-size UDP datagrams (and the TCP hello):
//
//	offset size  field
//	0      1     type: 0x3a punch, 0x3b ack. Below 0x40 so that the node's
//	             shared socket tells them from QUIC (first byte ≥ 0x40);
//	             not 0x00/0x01 (STUN) nor 0x31..0x34 (the NAT lab's probes)
//	1      1     version (1)
//	2      1     flags: bit 0 sender is the initiator, bit 1 birthday probe
//	             (an ack copies it from the punch it answers); others zero
//	3      1     reserved, zero
//	4      8     attempt id (from the initiator's offer)
//	12     4     sequence number (an ack echoes the punch's)
//	16     2     sender's socket index (birthday: which of the hard side's
//	             sockets; 0 is the main socket)
//	18     2     reserved, zero
//	20     16    tag: HMAC-SHA256(token, bytes 0..19), first 16 bytes
//
// The token is 32 random bytes the initiator puts in its offer and only the
// two peers (and their signalling channel) know: a packet with a wrong tag,
// another attempt's id or our own role is ignored, so stray packets, other
// attempts and forgeries cannot steer an attempt. Decoding is strict (exact
// length, zero reserved bits) and allocation-free.

// Type is the first byte of a punch packet.
type Type byte

// Packet types.
const (
	TypePunch Type = 0x3a
	TypeAck   Type = 0x3b
)

// Flags of a punch packet.
type Flags byte

// Flag bits.
const (
	// FlagInitiator marks packets sent by the attempt's initiator.
	FlagInitiator Flags = 1 << 0
	// FlagProbe marks birthday probes and the acks that answer them.
	FlagProbe Flags = 1 << 1

	flagsKnown = FlagInitiator | FlagProbe
)

// Wire constants.
const (
	Version    = 1
	PacketSize = 36
	TokenSize  = 32
	tagOffset  = 20
	tagSize    = 16
)

// Packet is a decoded punch packet.
type Packet struct {
	Type    Type
	Flags   Flags
	Attempt [8]byte
	Seq     uint32
	Socket  uint16
}

// ErrMalformed matches (errors.Is) every structural decode failure;
// ErrForeign matches packets of another attempt, with a wrong tag or from
// our own role.
var (
	ErrMalformed = errors.New("punch: malformed packet")
	ErrForeign   = errors.New("punch: packet of another attempt or forged")
)

type wireError struct {
	reason string
	kind   error
}

func (e *wireError) Error() string        { return e.kind.Error() + ": " + e.reason }
func (e *wireError) Is(target error) bool { return target == e.kind }

// Static errors: decoding garbage must not allocate.
var (
	errLength   = &wireError{"wrong length", ErrMalformed}
	errType     = &wireError{"unknown type", ErrMalformed}
	errVersion  = &wireError{"unsupported version", ErrMalformed}
	errFlags    = &wireError{"unknown flags", ErrMalformed}
	errReserved = &wireError{"non-zero reserved bytes", ErrMalformed}
	errAttempt  = &wireError{"another attempt", ErrForeign}
	errTag      = &wireError{"bad tag", ErrForeign}
)

// IsPunch reports whether b looks like a punch packet (type and length), for
// demultiplexing a shared socket cheaply.
func IsPunch(b []byte) bool {
	return len(b) == PacketSize && (Type(b[0]) == TypePunch || Type(b[0]) == TypeAck)
}

// ParseHeader decodes the structure of b without checking its tag: what a
// relay that forwards by attempt id needs. Use [Key.Open] to accept a packet.
func ParseHeader(b []byte) (Packet, error) {
	var p Packet
	if len(b) != PacketSize {
		return p, errLength
	}
	p.Type = Type(b[0])
	if p.Type != TypePunch && p.Type != TypeAck {
		return p, errType
	}
	if b[1] != Version {
		return p, errVersion
	}
	p.Flags = Flags(b[2])
	if p.Flags&^flagsKnown != 0 {
		return p, errFlags
	}
	if b[3] != 0 || b[18] != 0 || b[19] != 0 {
		return p, errReserved
	}
	copy(p.Attempt[:], b[4:12])
	p.Seq = binary.BigEndian.Uint32(b[12:16])
	p.Socket = binary.BigEndian.Uint16(b[16:18])
	return p, nil
}

// Key authenticates the packets of one attempt. It is safe for concurrent use.
type Key struct {
	attempt [8]byte
	mu      sync.Mutex
	mac     hash.Hash
	sum     [sha256.Size]byte
}

// NewKey returns the key of attempt id with token.
func NewKey(attempt [8]byte, token [TokenSize]byte) *Key {
	return &Key{attempt: attempt, mac: hmac.New(sha256.New, token[:])}
}

// Attempt returns the attempt id.
func (k *Key) Attempt() [8]byte { return k.attempt }

func (k *Key) tag(hdr []byte) [tagSize]byte {
	k.mu.Lock()
	k.mac.Reset()
	k.mac.Write(hdr)
	s := k.mac.Sum(k.sum[:0])
	var t [tagSize]byte
	copy(t[:], s)
	k.mu.Unlock()
	return t
}

// Append encodes p (with this key's attempt id) onto dst.
func (k *Key) Append(dst []byte, p Packet) []byte {
	start := len(dst)
	dst = append(dst, byte(p.Type), Version, byte(p.Flags&flagsKnown), 0)
	dst = append(dst, k.attempt[:]...)
	dst = binary.BigEndian.AppendUint32(dst, p.Seq)
	dst = binary.BigEndian.AppendUint16(dst, p.Socket)
	dst = append(dst, 0, 0)
	t := k.tag(dst[start:])
	return append(dst, t[:]...)
}

// Open decodes b and checks that it belongs to this key's attempt and carries
// a valid tag. It does not allocate.
func (k *Key) Open(b []byte) (Packet, error) {
	p, err := ParseHeader(b)
	if err != nil {
		return p, err
	}
	if p.Attempt != k.attempt {
		return p, errAttempt
	}
	t := k.tag(b[:tagOffset])
	if subtle.ConstantTimeCompare(t[:], b[tagOffset:]) != 1 {
		return p, errTag
	}
	return p, nil
}
