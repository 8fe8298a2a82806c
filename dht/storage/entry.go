package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/record"
)

// Kind is the kind of a stored record. Values and peers of the two wire
// generations live in separate key spaces: their ids and signatures are
// computed differently, so a v2 record must never answer a v3 query.
type Kind uint8

// Record kinds; the byte is the first byte of the database key.
const (
	KindValue   Kind = 'v' // v3.1 value, keyed by Value.ID()
	KindValueV2 Kind = 'w' // v2 value, keyed by Value.IDV2()
	KindPeer    Kind = 'p' // v3.1 peer record, keyed by (id, fingerprint)
	KindPeerV2  Kind = 'q' // v2 peer record, keyed by (id, node id, origin)
)

func (k Kind) String() string {
	switch k {
	case KindValue:
		return "value"
	case KindValueV2:
		return "value-v2"
	case KindPeer:
		return "peer"
	case KindPeerV2:
		return "peer-v2"
	}
	return fmt.Sprintf("kind(%#x)", uint8(k))
}

// IsValue reports whether k is a value kind.
func (k Kind) IsValue() bool { return k == KindValue || k == KindValueV2 }

// Entry is one stored record with its timestamp: when it was last stored
// or refreshed (records kept for others) or last announced (the node's own
// persistent items).
type Entry struct {
	Kind   Kind
	Time   time.Time
	Value  record.Value      // KindValue, KindValueV2
	Peer   record.PeerInfo   // KindPeer
	PeerV2 record.PeerInfoV2 // KindPeerV2
}

// ID returns the id the record is found under.
func (e *Entry) ID() identity.ID {
	switch e.Kind {
	case KindValue:
		return e.Value.ID()
	case KindValueV2:
		return e.Value.IDV2()
	case KindPeer:
		return e.Peer.ID
	}
	return e.PeerV2.ID
}

// Clone returns a copy of e that does not alias any buffer.
func (e *Entry) Clone() Entry {
	c := *e
	c.Value = e.Value.Clone()
	c.Peer = e.Peer.Clone()
	return c
}

// Seq returns the record's sequence number (0 for kinds without one).
func (e *Entry) Seq() int32 {
	switch e.Kind {
	case KindValue, KindValueV2:
		return e.Value.Seq
	case KindPeer:
		return e.Peer.Seq
	}
	return 0
}

// Key sizes.
const (
	keyValue  = 1 + identity.IDSize
	keyPeer   = 1 + identity.IDSize + 8
	keyPeerV2 = 1 + 3*identity.IDSize
	// MaxKey is the longest key AppendKey produces.
	MaxKey = keyPeerV2
)

// AppendKey appends e's database key: kind ‖ id, plus the fingerprint
// (v3 peers) or node id ‖ origin (v2 peers), which tell apart several
// records of one peer id.
func AppendKey(dst []byte, e *Entry) []byte {
	id := e.ID()
	dst = append(dst, byte(e.Kind))
	dst = append(dst, id[:]...)
	switch e.Kind {
	case KindPeer:
		dst = binary.BigEndian.AppendUint64(dst, uint64(e.Peer.Fingerprint))
	case KindPeerV2:
		dst = append(dst, e.PeerV2.NodeID[:]...)
		dst = append(dst, e.PeerV2.Origin[:]...)
	}
	return dst
}

// AppendValue appends e's database value: the timestamp (unix ns, 8 bytes
// big-endian) and the record. Values and v3 peers use the CBOR map forms of
// package record; a v2 peer, which has none, is port(2) ‖ sig(64) ‖ alt
// (the ids are in the key).
func AppendValue(dst []byte, e *Entry) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Time.UnixNano()))
	switch e.Kind {
	case KindValue, KindValueV2:
		return e.Value.AppendCBOR(dst)
	case KindPeer:
		return e.Peer.AppendCBOR(dst)
	}
	dst = binary.BigEndian.AppendUint16(dst, e.PeerV2.Port)
	dst = append(dst, e.PeerV2.Sig[:]...)
	return append(dst, e.PeerV2.Alt...)
}

// ErrEntry is wrapped by ParseEntry's errors.
var ErrEntry = errors.New("storage: bad entry")

// maxEntryValue bounds a database value: the timestamp and the largest
// record any kind allows, with room for CBOR framing.
const maxEntryValue = 8 + 4096

// ParseEntry decodes a database entry written by AppendKey and AppendValue.
// The database is input the node did not necessarily write (a copied or
// damaged file), so it checks structure and consistency: the key must name
// the record it holds. It does not verify signatures; the node validated
// every record before storing it, and every reader validates what it gets
// from the network. The returned entry does not alias key or val.
func ParseEntry(key, val []byte) (Entry, error) {
	var e Entry
	if len(key) == 0 {
		return e, fmt.Errorf("%w: empty key", ErrEntry)
	}
	if len(val) < 8 || len(val) > maxEntryValue {
		return e, fmt.Errorf("%w: value of %d bytes", ErrEntry, len(val))
	}
	e.Kind = Kind(key[0])
	ns := int64(binary.BigEndian.Uint64(val))
	if ns <= 0 {
		return e, fmt.Errorf("%w: timestamp %d", ErrEntry, ns)
	}
	e.Time = time.Unix(0, ns)
	body := val[8:]
	want := 0
	switch e.Kind {
	case KindValue, KindValueV2:
		want = keyValue
		if err := e.Value.DecodeCBOR(body); err != nil {
			return e, fmt.Errorf("%w: %v", ErrEntry, err)
		}
		if e.Kind == KindValueV2 && e.Value.Mutable() && !e.Value.HasNonce {
			return e, fmt.Errorf("%w: v2 mutable value without nonce", ErrEntry)
		}
		e.Value = e.Value.Clone()
	case KindPeer:
		want = keyPeer
		if err := e.Peer.DecodeCBOR(body); err != nil {
			return e, fmt.Errorf("%w: %v", ErrEntry, err)
		}
		e.Peer = e.Peer.Clone()
	case KindPeerV2:
		want = keyPeerV2
		if len(body) < 2+record.SignatureSize {
			return e, fmt.Errorf("%w: v2 peer of %d bytes", ErrEntry, len(body))
		}
		if len(key) == keyPeerV2 {
			p := &e.PeerV2
			copy(p.ID[:], key[1:])
			copy(p.NodeID[:], key[1+identity.IDSize:])
			copy(p.Origin[:], key[1+2*identity.IDSize:])
			p.Port = binary.BigEndian.Uint16(body)
			copy(p.Sig[:], body[2:])
			alt := body[2+record.SignatureSize:]
			if !utf8.Valid(alt) {
				return e, fmt.Errorf("%w: v2 peer alternative URL is not UTF-8", ErrEntry)
			}
			p.Alt = string(alt)
			if p.ID.IsZero() || p.NodeID.IsZero() || p.Origin.IsZero() || p.Port == 0 {
				return e, fmt.Errorf("%w: v2 peer without id, node, origin or port", ErrEntry)
			}
		}
	default:
		return e, fmt.Errorf("%w: unknown kind %#x", ErrEntry, key[0])
	}
	if len(key) != want {
		return e, fmt.Errorf("%w: %v key of %d bytes", ErrEntry, e.Kind, len(key))
	}
	var buf [MaxKey]byte
	if got := AppendKey(buf[:0], &e); string(got) != string(key) {
		return e, fmt.Errorf("%w: key does not name the %v it holds", ErrEntry, e.Kind)
	}
	return e, nil
}
