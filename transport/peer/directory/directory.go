// Package directory keeps a node's reachability record in the Boson DHT:
// who relays for it, its direct candidates and its NAT class, signed by the
// node's own key and found by anyone who knows its id (DID).
//
// It exists because a node behind NAT has no fixed address: a peer that
// wants to reach it by DID needs a current, authentic answer to "where?".
// The record is a v3.1 signed mutable value whose id is the node's public
// key (dht/record): anyone can compute where it lives, only the DID's key
// can write it, and a newer sequence number (issued time) replaces the old
// one on every storing node. (Names use peer records instead, see
// plugins/registry/dhtpub: a name-derived key would be public; here the
// key is the node's own.)
//
// The payload is JSON: small, readable by other implementations, and
// decoded strictly (unknown fields, oversize, too many entries, bad
// addresses refused), so a record means one thing to every reader. A
// signed value carries at most 896 bytes (record.MaxSignedData); a record
// with every list full of IPv6 addresses is larger, so Fit drops the least
// useful entries (last TCP candidates, supernodes, last UDP candidates,
// extra relays) before signing rather than not publishing at all. Lookups check owner, signature
// and age before anything is believed.
package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/record"
)

// Limits of a record.
const (
	MaxCandidates = 8
	MaxRelays     = 4
	MaxSupernodes = 4
	MaxNATClass   = 64
	// MaxAge is how old a record may be before readers ignore it;
	// publishers refresh well before.
	MaxAge = 2 * time.Hour
	// MaxSkew is how far in the future a record's time may be.
	MaxSkew = 5 * time.Minute
	// seqEpoch makes issued times fit an int32 sequence number until 2093.
	seqEpoch = 1_735_689_600 // 2025-01-01T00:00:00Z
)

// Errors.
var (
	ErrMalformed = errors.New("directory: malformed peer record")
	ErrNotFound  = errors.New("directory: no peer record")
	ErrExpired   = errors.New("directory: peer record too old or from the future")
	ErrForged    = errors.New("directory: peer record not signed by its node")
)

// Relay is a relay (relay/circuit service) where the node holds a
// reservation.
type Relay struct {
	ID   identity.ID    `json:"id"`
	Addr netip.AddrPort `json:"addr"`
}

// Record is a node's reachability.
type Record struct {
	ID identity.ID `json:"-"` // the owner (the value's key)
	// Issued is when the record was made (Unix seconds).
	Issued int64 `json:"t"`
	// NAT is the mapping class seen by STUN ("endpoint-independent", …).
	NAT string `json:"nat,omitempty"`
	// Hard: the mapping depends on the destination (symmetric).
	Hard bool `json:"hard,omitempty"`
	// UDP and TCP are direct candidates, best first.
	UDP []netip.AddrPort `json:"udp,omitempty"`
	TCP []netip.AddrPort `json:"tcp,omitempty"`
	// Relays reach the node at any time.
	Relays []Relay `json:"relays,omitempty"`
	// Supernodes hold tunnels of the node.
	Supernodes []identity.ID `json:"sn,omitempty"`
}

func malformed(why string) error { return fmt.Errorf("%w: %s", ErrMalformed, why) }

func (r *Record) check() error {
	if len(r.UDP) > MaxCandidates || len(r.TCP) > MaxCandidates {
		return malformed("too many candidates")
	}
	if len(r.Relays) > MaxRelays {
		return malformed("too many relays")
	}
	if len(r.Supernodes) > MaxSupernodes {
		return malformed("too many supernodes")
	}
	if len(r.NAT) > MaxNATClass {
		return malformed("NAT class too long")
	}
	for _, c := range append(append([]netip.AddrPort(nil), r.UDP...), r.TCP...) {
		if !c.IsValid() || c.Port() == 0 || c.Addr().IsUnspecified() || c.Addr().IsMulticast() {
			return malformed(fmt.Sprintf("candidate %v", c))
		}
	}
	for _, rl := range r.Relays {
		if rl.ID.IsZero() || !rl.Addr.IsValid() || rl.Addr.Port() == 0 || rl.Addr.Addr().IsUnspecified() {
			return malformed(fmt.Sprintf("relay %v", rl.Addr))
		}
	}
	if r.Issued < seqEpoch {
		return malformed("issued before 2025")
	}
	return nil
}

// Marshal encodes r's payload.
func (r *Record) Marshal() ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) > record.MaxSignedData {
		return nil, malformed(fmt.Sprintf("%d bytes", len(b)))
	}
	return b, nil
}

// Unmarshal decodes a payload strictly; id is the owner.
func Unmarshal(id identity.ID, b []byte) (Record, error) {
	if len(b) > record.MaxSignedData {
		return Record{}, malformed(fmt.Sprintf("%d bytes", len(b)))
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var r Record
	if err := d.Decode(&r); err != nil {
		return Record{}, malformed(err.Error())
	}
	if d.More() {
		return Record{}, malformed("trailing data")
	}
	r.ID = id
	if err := r.check(); err != nil {
		return Record{}, err
	}
	// One form for "none": "udp":[] and no "udp" mean the same.
	if len(r.UDP) == 0 {
		r.UDP = nil
	}
	if len(r.TCP) == 0 {
		r.TCP = nil
	}
	if len(r.Relays) == 0 {
		r.Relays = nil
	}
	if len(r.Supernodes) == 0 {
		r.Supernodes = nil
	}
	return r, nil
}

// Fit returns r with its least useful entries dropped until its payload
// fits a signed DHT value: TCP candidates from the last (no dialer uses
// them yet), then supernodes, then UDP candidates down to two (best first:
// mapping and reflexive address), then relays down to one, then the last
// UDP candidates. Lists are copied, never shortened in place. A record
// that fits, or one that is malformed, is returned as it is.
func (r Record) Fit() Record {
	if r.check() != nil || r.fits() {
		return r
	}
	r.UDP = slices.Clone(r.UDP)
	r.TCP = slices.Clone(r.TCP)
	r.Relays = slices.Clone(r.Relays)
	r.Supernodes = slices.Clone(r.Supernodes)
	for !r.fits() {
		switch {
		case len(r.TCP) > 0:
			r.TCP = r.TCP[:len(r.TCP)-1]
		case len(r.Supernodes) > 0:
			r.Supernodes = r.Supernodes[:len(r.Supernodes)-1]
		case len(r.UDP) > 2:
			r.UDP = r.UDP[:len(r.UDP)-1]
		case len(r.Relays) > 1:
			r.Relays = r.Relays[:len(r.Relays)-1]
		case len(r.UDP) > 0:
			r.UDP = r.UDP[:len(r.UDP)-1]
		default:
			return r // cannot happen within the limits: Marshal reports it
		}
	}
	return r
}

func (r *Record) fits() bool {
	b, err := json.Marshal(r)
	return err == nil && len(b) <= record.MaxSignedData
}

// Value signs r as kp's DHT value (r.ID is set to kp's id). A record too
// large for a signed value is trimmed first (see Fit).
func Value(kp *identity.KeyPair, r Record) (record.Value, error) {
	r = r.Fit()
	r.ID = kp.ID()
	b, err := r.Marshal()
	if err != nil {
		return record.Value{}, err
	}
	return record.NewSigned(kp, int32(r.Issued-seqEpoch), b)
}

// FromValue checks a value found under id and returns its record.
func FromValue(id identity.ID, v *record.Value, now time.Time) (Record, error) {
	if v.Owner != id || v.Kind() != record.Signed {
		return Record{}, ErrForged
	}
	if err := v.Validate(); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrForged, err)
	}
	r, err := Unmarshal(id, v.Data)
	if err != nil {
		return Record{}, err
	}
	if int64(v.Seq) != r.Issued-seqEpoch {
		return Record{}, malformed("sequence number is not the issued time")
	}
	t := time.Unix(r.Issued, 0)
	if now.Sub(t) > MaxAge || t.Sub(now) > MaxSkew {
		return Record{}, fmt.Errorf("%w: issued %v", ErrExpired, t.UTC())
	}
	return r, nil
}

// Publish stores r, signed by kp, in the DHT.
func Publish(ctx context.Context, n *dhtnode.Node, kp *identity.KeyPair, r Record) error {
	v, err := Value(kp, r)
	if err != nil {
		return err
	}
	if _, err := n.PutValue(ctx, v, dhtnode.PutOptions{}); err != nil {
		return fmt.Errorf("directory: publish: %w", err)
	}
	return nil
}

// Lookup finds id's record in the DHT.
func Lookup(ctx context.Context, n *dhtnode.Node, id identity.ID, now time.Time) (Record, error) {
	v, err := n.GetValue(ctx, id, dhtnode.GetOptions{})
	if errors.Is(err, dhtnode.ErrNotFound) {
		return Record{}, fmt.Errorf("%w for %s", ErrNotFound, id)
	}
	if err != nil {
		return Record{}, fmt.Errorf("directory: lookup %s: %w", id, err)
	}
	return FromValue(id, &v, now)
}

// Directory looks records up with a small cache, so repeated dials do not
// each run a DHT lookup.
type Directory struct {
	node func() *dhtnode.Node
	now  func() time.Time

	mu    sync.Mutex
	cache map[identity.ID]cached
}

type cached struct {
	r   Record
	err error
	exp time.Time
}

const (
	positiveTTL = 30 * time.Second
	negativeTTL = 5 * time.Second
	maxCached   = 4096
)

// New returns a Directory on the DHT node node returns (nil: not started).
func New(node func() *dhtnode.Node, now func() time.Time) *Directory {
	if now == nil {
		now = time.Now
	}
	return &Directory{node: node, now: now, cache: map[identity.ID]cached{}}
}

// Resolve returns id's record.
func (d *Directory) Resolve(ctx context.Context, id identity.ID) (Record, error) {
	now := d.now()
	d.mu.Lock()
	if c, ok := d.cache[id]; ok && now.Before(c.exp) {
		d.mu.Unlock()
		return c.r, c.err
	}
	d.mu.Unlock()
	n := d.node()
	if n == nil {
		return Record{}, errors.New("directory: DHT not running")
	}
	r, err := Lookup(ctx, n, id, now)
	if ctx.Err() != nil {
		return r, err // not the record's fault: do not cache
	}
	ttl := positiveTTL
	if err != nil {
		ttl = negativeTTL
	}
	d.mu.Lock()
	if len(d.cache) >= maxCached {
		for k, c := range d.cache {
			if !now.Before(c.exp) || len(d.cache) >= maxCached {
				delete(d.cache, k)
			}
		}
	}
	d.cache[id] = cached{r: r, err: err, exp: now.Add(ttl)}
	d.mu.Unlock()
	return r, err
}

// Forget drops id's cached answer (a dial with it failed).
func (d *Directory) Forget(id identity.ID) {
	d.mu.Lock()
	delete(d.cache, id)
	d.mu.Unlock()
}
