// Package directory publishes and finds a node's reachability record in the
// Boson DHT (GitHub issue 8, direct node-to-node connections).
//
// It exists because a peer that wants to dial a node directly knows only the
// node's DID. The record (candidates, relays, NAT class, supernodes) is stored
// as a v3.1 signed mutable value whose key is the node's own public key: anyone
// who knows the DID can compute where it lives, and only the DID's key can
// write it. Peer records are not used because their id is a service key, not
// the node key (see plugins/registry/dhtpub).
//
// Encoding is JSON with a bounded size and DisallowUnknownFields: the record is
// small, read rarely (once per dial, cached), and JSON keeps it debuggable;
// strictness (field counts, address syntax, one trailing value) is checked
// after decoding so a record either decodes to exactly one meaning or fails.
package directory

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/record"
)

// Limits on a record's lists.
const (
	MaxUDP        = 8
	MaxTCP        = 8
	MaxRelays     = 4
	MaxSupernodes = 4
	MaxNATClass   = 32
)

// SeqEpoch makes issued times fit the DHT's int32 sequence numbers until 2093.
const SeqEpoch = 1_735_689_600 // 2025-01-01T00:00:00Z

// Typed errors returned by decoding and lookup.
var (
	ErrMalformed = errors.New("directory: malformed record")
	ErrTooLarge  = errors.New("directory: record too large")
	ErrNotFound  = errors.New("directory: record not found")
	ErrExpired   = errors.New("directory: record expired")
	ErrFuture    = errors.New("directory: record issued in the future")
)

// Relay is a relay node the record's owner holds a reservation on.
type Relay struct {
	ID   identity.ID    `json:"id"`
	Addr netip.AddrPort `json:"addr"`
}

// Record is a node's reachability record.
type Record struct {
	ID         identity.ID      `json:"-"` // the owner; not encoded, it is the value's key
	Issued     time.Time        `json:"-"` // encoded as Unix seconds
	NAT        string           `json:"nat,omitempty"`
	Hard       bool             `json:"hard,omitempty"`
	UDP        []netip.AddrPort `json:"udp,omitempty"`
	TCP        []netip.AddrPort `json:"tcp,omitempty"`
	Relays     []Relay          `json:"relays,omitempty"`
	Supernodes []identity.ID    `json:"sn,omitempty"`
}

type wire struct {
	Issued int64 `json:"t"`
	Record
}

// Check reports whether the record's fields are within limits.
func (r *Record) Check() error {
	switch {
	case len(r.NAT) > MaxNATClass:
		return fmt.Errorf("%w: nat class longer than %d", ErrMalformed, MaxNATClass)
	case len(r.UDP) > MaxUDP:
		return fmt.Errorf("%w: %d udp candidates, max %d", ErrMalformed, len(r.UDP), MaxUDP)
	case len(r.TCP) > MaxTCP:
		return fmt.Errorf("%w: %d tcp candidates, max %d", ErrMalformed, len(r.TCP), MaxTCP)
	case len(r.Relays) > MaxRelays:
		return fmt.Errorf("%w: %d relays, max %d", ErrMalformed, len(r.Relays), MaxRelays)
	case len(r.Supernodes) > MaxSupernodes:
		return fmt.Errorf("%w: %d supernodes, max %d", ErrMalformed, len(r.Supernodes), MaxSupernodes)
	}
	for _, l := range [][]netip.AddrPort{r.UDP, r.TCP} {
		for _, a := range l {
			if !a.IsValid() || a.Port() == 0 {
				return fmt.Errorf("%w: bad candidate %v", ErrMalformed, a)
			}
		}
	}
	for _, rl := range r.Relays {
		if rl.ID.IsZero() || !rl.Addr.IsValid() || rl.Addr.Port() == 0 {
			return fmt.Errorf("%w: bad relay %v %v", ErrMalformed, rl.ID, rl.Addr)
		}
	}
	for _, s := range r.Supernodes {
		if s.IsZero() {
			return fmt.Errorf("%w: zero supernode id", ErrMalformed)
		}
	}
	return nil
}

// Encode returns the record's data bytes (without the owner id).
func (r *Record) Encode() ([]byte, error) {
	if err := r.Check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(wire{Issued: r.Issued.Unix(), Record: *r})
	if err != nil {
		return nil, fmt.Errorf("directory: encode: %w", err)
	}
	if len(b) > record.MaxSignedData {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, len(b), record.MaxSignedData)
	}
	return b, nil
}

// Decode parses data bytes strictly; owner is the value's key.
func Decode(owner identity.ID, b []byte) (Record, error) {
	if len(b) > record.MaxSignedData {
		return Record{}, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, len(b), record.MaxSignedData)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var w wire
	if err := d.Decode(&w); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return Record{}, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	if w.Issued <= SeqEpoch || w.Issued > SeqEpoch+1<<31-1 {
		return Record{}, fmt.Errorf("%w: issued time %d out of range", ErrMalformed, w.Issued)
	}
	r := w.Record
	r.ID = owner
	r.Issued = time.Unix(w.Issued, 0).UTC()
	if err := r.Check(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// Seq is the DHT sequence number for a record issued at t.
func Seq(t time.Time) int32 { return int32(t.Unix() - SeqEpoch) }

// Sign encodes rec and signs it as a v3.1 mutable value owned by kp.
func Sign(kp *identity.KeyPair, rec Record) (record.Value, error) {
	rec.ID = kp.ID()
	if rec.Issued.Unix() <= SeqEpoch {
		return record.Value{}, fmt.Errorf("%w: issued before %d", ErrMalformed, SeqEpoch)
	}
	b, err := rec.Encode()
	if err != nil {
		return record.Value{}, err
	}
	return record.NewSigned(kp, Seq(rec.Issued), b)
}

// Open checks that v is a signed value owned by id, verifies it, decodes it
// strictly and checks its sequence number against its issued time.
func Open(id identity.ID, v *record.Value) (Record, error) {
	if v.Owner != id || v.Kind() != record.Signed {
		return Record{}, fmt.Errorf("%w: value is not a signed value of %v", ErrMalformed, id)
	}
	if err := v.Validate(); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	r, err := Decode(id, v.Data)
	if err != nil {
		return Record{}, err
	}
	if Seq(r.Issued) != v.Seq {
		return Record{}, fmt.Errorf("%w: seq %d does not match issued time", ErrMalformed, v.Seq)
	}
	return r, nil
}
