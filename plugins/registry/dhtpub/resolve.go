package dhtpub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Claim is one supernode's announcement of a name, as found in the DHT.
type Claim struct {
	Supernode identity.ID  // who announced it (the record's node part)
	Record    *wire.Record // nil when the supernode announced the name freed
}

// ParseClaim checks one peer record found under NameID(name): announced
// by a supernode (authenticated, in that supernode's own slot), for this
// name, its registry record signed by its owner. trusted, when not nil,
// must accept the announcing supernode.
func ParseClaim(p *record.PeerInfo, name string, trusted func(identity.ID) bool) (Claim, error) {
	if p.ID != NameID(name) || !p.Authenticated() {
		return Claim{}, errors.New("dhtpub: not an authenticated announcement of this name")
	}
	if err := p.Validate(); err != nil {
		return Claim{}, err
	}
	if p.Fingerprint != fingerprint(p.Node) {
		return Claim{}, errors.New("dhtpub: announcement in another supernode's slot")
	}
	if trusted != nil && !trusted(p.Node) {
		return Claim{}, fmt.Errorf("dhtpub: announced by %s, not a trusted supernode", p.Node)
	}
	var pl payload
	if err := json.Unmarshal(p.Extra, &pl); err != nil {
		return Claim{}, fmt.Errorf("dhtpub: payload: %w", err)
	}
	switch {
	case pl.Record == nil && pl.Deleted == name:
		return Claim{Supernode: p.Node}, nil
	case pl.Record == nil || pl.Record.Name != name:
		return Claim{}, errors.New("dhtpub: payload is for another name")
	}
	if err := pl.Record.VerifyProof(); err != nil {
		return Claim{}, fmt.Errorf("dhtpub: %w", err)
	}
	return Claim{Supernode: p.Node, Record: pl.Record}, nil
}

// Resolve finds every supernode's announcement of name in the DHT and
// returns the claims that check out (see ParseClaim), one per supernode.
// Reconciling them is the federation's rule (federation/mesh.Better).
func Resolve(ctx context.Context, n *node.Node, name string, trusted func(identity.ID) bool) ([]Claim, error) {
	recs, err := n.FindPeer(ctx, NameID(name), node.FindPeerOptions{})
	if err != nil && !errors.Is(err, node.ErrNotFound) {
		return nil, err
	}
	var out []Claim
	seen := map[identity.ID]bool{}
	for i := range recs {
		c, err := ParseClaim(&recs[i], name, trusted)
		if err != nil || seen[c.Supernode] {
			continue
		}
		seen[c.Supernode] = true
		out = append(out, c)
	}
	return out, nil
}

// Resolve is Resolve through the host's DHT service.
func (s *Service) Resolve(ctx context.Context, name string, trusted func(identity.ID) bool) ([]Claim, error) {
	n := s.dht.Node()
	if n == nil {
		return nil, errors.New("dhtpub: the dht service has not started")
	}
	return Resolve(ctx, n, name, trusted)
}
