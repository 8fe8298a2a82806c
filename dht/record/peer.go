package record

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/elacity/pc2/core/identity"
	"golang.org/x/text/unicode/norm"
)

// MaxPeerPayload bounds len(utf8(endpoint)) + len(extra) of a v3.1 peer record.
const MaxPeerPayload = 768

// PeerInfo is a v3.1 peer record: a service key (ID) announcing an endpoint,
// optionally vouched for by the DHT node that hosts it (Node, NodeSig).
type PeerInfo struct {
	ID          identity.ID // id (k in ANNOUNCE_PEER): the peer's (service's) public key
	Seq         int32       // seq, >= 0
	Node        identity.ID // o: hosting node; zero when not authenticated
	NodeSig     Signature   // os: present exactly when Node is set
	Sig         Signature   // sig: the peer's signature
	Fingerprint int64       // f: tells apart instances of one peer id
	Endpoint    string      // e: endpoint URI, NFC-normalised
	Extra       []byte      // ex: optional, conventionally JSON; never empty when present
}

// Authenticated reports whether a node vouches for the record.
func (p *PeerInfo) Authenticated() bool { return !p.Node.IsZero() }

// NodeDigest returns the bytes the node signs:
// SHA-256(id ‖ o ‖ f:int64 BE ‖ seq:int32 BE).
func (p *PeerInfo) NodeDigest() [32]byte {
	var b [2*identity.IDSize + 8 + 4]byte
	copy(b[:], p.ID[:])
	copy(b[identity.IDSize:], p.Node[:])
	binary.BigEndian.PutUint64(b[2*identity.IDSize:], uint64(p.Fingerprint))
	binary.BigEndian.PutUint32(b[2*identity.IDSize+8:], uint32(p.Seq))
	return sha256.Sum256(b[:])
}

const maxPeerSigned = 2*identity.IDSize + 4 + SignatureSize + 8 + MaxPeerPayload

// Digest returns the bytes the peer signs:
// SHA-256(id ‖ seq:int32 BE ‖ [o ‖ os] ‖ f:int64 BE ‖ utf8(e) ‖ [ex]).
func (p *PeerInfo) Digest() [32]byte {
	var stack [maxPeerSigned]byte
	b := append(stack[:0], p.ID[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(p.Seq))
	if p.Authenticated() {
		b = append(b, p.Node[:]...)
		b = append(b, p.NodeSig[:]...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(p.Fingerprint))
	b = append(b, p.Endpoint...)
	b = append(b, p.Extra...)
	return sha256.Sum256(b)
}

// PayloadSize is len(utf8(endpoint)) + len(extra).
func (p *PeerInfo) PayloadSize() int { return len(p.Endpoint) + len(p.Extra) }

func (p *PeerInfo) checkShape() error {
	if p.ID.IsZero() {
		return fmt.Errorf("%w: peer record without id", ErrMalformed)
	}
	if p.Seq < 0 {
		return fmt.Errorf("%w: negative sequence number %d", ErrMalformed, p.Seq)
	}
	if p.Endpoint == "" {
		return fmt.Errorf("%w: peer record without endpoint", ErrMalformed)
	}
	if !utf8.ValidString(p.Endpoint) {
		return fmt.Errorf("%w: endpoint is not UTF-8", ErrMalformed)
	}
	if !p.Authenticated() && p.NodeSig != (Signature{}) {
		return fmt.Errorf("%w: node signature without node id", ErrMalformed)
	}
	return nil
}

// Validate checks p by the v3.1 rules: shape, payload limit, the node's
// signature when authenticated and the peer's signature. A storing node
// answers a failure with error 402 (invalid peer).
func (p *PeerInfo) Validate() error {
	if err := p.checkShape(); err != nil {
		return err
	}
	if n := p.PayloadSize(); n > MaxPeerPayload {
		return fmt.Errorf("%w: endpoint and extra are %d bytes, limit %d", ErrTooLarge, n, MaxPeerPayload)
	}
	if p.Authenticated() {
		d := p.NodeDigest()
		if !identity.Verify(p.Node, d[:], p.NodeSig[:]) {
			return fmt.Errorf("%w: node %s on peer %s", ErrSignature, p.Node, p.ID)
		}
	}
	d := p.Digest()
	if !identity.Verify(p.ID, d[:], p.Sig[:]) {
		return fmt.Errorf("%w: peer %s seq %d", ErrSignature, p.ID, p.Seq)
	}
	return nil
}

// Clone returns a deep copy of p that does not alias any input buffer.
func (p *PeerInfo) Clone() PeerInfo {
	c := *p
	c.Extra = bytes.Clone(p.Extra)
	return c
}

// Equal reports whether p and o carry the same fields.
func (p *PeerInfo) Equal(o *PeerInfo) bool {
	return p.ID == o.ID && p.Seq == o.Seq && p.Node == o.Node && p.NodeSig == o.NodeSig &&
		p.Sig == o.Sig && p.Fingerprint == o.Fingerprint && p.Endpoint == o.Endpoint &&
		bytes.Equal(p.Extra, o.Extra)
}

// NFC returns s in Unicode normalisation form C, as Boson normalises
// endpoints and alternative URLs before signing. ASCII, the usual case, is
// returned unchanged without work.
func NFC(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return norm.NFC.String(s)
		}
	}
	return s
}

// NewPeer builds and signs a v3.1 peer record for the key peer. When node is
// not nil the record is authenticated by that node. A zero fingerprint is
// replaced by a random one, as Boson does; keep it across updates.
func NewPeer(peer, node *identity.KeyPair, seq int32, fingerprint int64, endpoint string, extra []byte) (PeerInfo, error) {
	if fingerprint == 0 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return PeerInfo{}, fmt.Errorf("peer fingerprint: %w", err)
		}
		fingerprint = int64(binary.BigEndian.Uint64(b[:]))
	}
	p := PeerInfo{ID: peer.ID(), Seq: seq, Fingerprint: fingerprint, Endpoint: NFC(endpoint)}
	if len(extra) > 0 {
		p.Extra = bytes.Clone(extra)
	}
	if err := p.checkShape(); err != nil {
		return PeerInfo{}, err
	}
	if n := p.PayloadSize(); n > MaxPeerPayload {
		return PeerInfo{}, fmt.Errorf("%w: endpoint and extra are %d bytes, limit %d", ErrTooLarge, n, MaxPeerPayload)
	}
	if node != nil {
		p.Node = node.ID()
		d := p.NodeDigest()
		copy(p.NodeSig[:], node.Sign(d[:]))
	}
	d := p.Digest()
	copy(p.Sig[:], peer.Sign(d[:]))
	return p, nil
}
