package record

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/elacity/pc2/core/identity"
)

// PeerInfoV2 is a v2 peer record: the service key ID is reachable on Port of
// the node NodeID (whose address comes from find_node), announced by Origin.
type PeerInfoV2 struct {
	ID     identity.ID // peer (service) public key, the signer
	NodeID identity.ID // node providing the service
	Origin identity.ID // node that announced it; equal to NodeID unless delegated
	Port   uint16      // 1..65535
	Alt    string      // alternative URL (e.g. a domain name), NFC; may be empty
	Sig    Signature
}

// Delegated reports whether the record was announced by a node other than
// the one providing the service (for example an Active Proxy client
// announcing the super node's mapped port).
func (p *PeerInfoV2) Delegated() bool { return p.Origin != p.NodeID }

// AppendSignedBytes appends the raw bytes the peer signs:
// nodeId ‖ origin ‖ port:uint16 BE ‖ [utf8(alt)].
func (p *PeerInfoV2) AppendSignedBytes(dst []byte) []byte {
	dst = append(dst, p.NodeID[:]...)
	dst = append(dst, p.Origin[:]...)
	dst = binary.BigEndian.AppendUint16(dst, p.Port)
	return append(dst, p.Alt...)
}

// maxAltV2 bounds the alternative URL; v2 sets no limit, the datagram does.
const maxAltV2 = 1024

func (p *PeerInfoV2) checkShape() error {
	if p.ID.IsZero() || p.NodeID.IsZero() || p.Origin.IsZero() {
		return fmt.Errorf("%w: v2 peer record without id, node id or origin", ErrMalformed)
	}
	if p.Port == 0 {
		return fmt.Errorf("%w: v2 peer record with port 0", ErrMalformed)
	}
	if len(p.Alt) > maxAltV2 {
		return fmt.Errorf("%w: alternative URL is %d bytes, limit %d", ErrTooLarge, len(p.Alt), maxAltV2)
	}
	if !utf8.ValidString(p.Alt) {
		return fmt.Errorf("%w: alternative URL is not UTF-8", ErrMalformed)
	}
	return nil
}

// Validate checks the record's shape and signature. v2 nodes store peers
// without this check and check on lookup; a PC2 node checks both times.
func (p *PeerInfoV2) Validate() error {
	if err := p.checkShape(); err != nil {
		return err
	}
	var stack [2*identity.IDSize + 2 + maxAltV2]byte
	if !identity.Verify(p.ID, p.AppendSignedBytes(stack[:0]), p.Sig[:]) {
		return fmt.Errorf("%w: v2 peer %s on node %s", ErrSignature, p.ID, p.NodeID)
	}
	return nil
}

// NewPeerV2 builds and signs a v2 peer record. A zero origin means nodeID.
func NewPeerV2(peer *identity.KeyPair, nodeID, origin identity.ID, port uint16, alt string) (PeerInfoV2, error) {
	if origin.IsZero() {
		origin = nodeID
	}
	p := PeerInfoV2{ID: peer.ID(), NodeID: nodeID, Origin: origin, Port: port, Alt: NFC(alt)}
	if err := p.checkShape(); err != nil {
		return PeerInfoV2{}, err
	}
	copy(p.Sig[:], peer.Sign(p.AppendSignedBytes(nil)))
	return p, nil
}
