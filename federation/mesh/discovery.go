package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/record"
)

// seqEpoch keeps announcement sequence numbers (Unix seconds) inside
// Boson's int32 until 2093, like plugins/registry/dhtpub.
const seqEpoch = 1_735_689_600

// SupernodesID is the DHT peer id under which every supernode announces
// itself. Its key is derived from a fixed string, so anyone can compute
// it; what matters is the node part of each record (o, os), signed by the
// announcing supernode's own key: nobody can announce in another
// supernode's name, and each supernode has its own slot (fingerprint).
func SupernodesID() identity.ID { return supernodesKey().ID() }

func supernodesKey() *identity.KeyPair {
	seed := sha256.Sum256([]byte("pc2-supernodes-v1"))
	kp, _ := identity.FromSeed(seed[:]) // 32 bytes: cannot fail
	return kp
}

func fingerprint(id identity.ID) int64 { return int64(binary.BigEndian.Uint64(id[:8]) >> 1) }

// AnnounceRecord builds the signed peer record announcing a.
func AnnounceRecord(kp *identity.KeyPair, a Announcement, now time.Time) (record.PeerInfo, error) {
	extra, err := json.Marshal(a)
	if err != nil {
		return record.PeerInfo{}, err
	}
	return record.NewPeer(supernodesKey(), kp, int32(now.Unix()-seqEpoch), fingerprint(kp.ID()), kp.ID().DID(), extra)
}

// ParseAnnounceRecord checks a record found under SupernodesID and
// returns the announcing supernode and its Announcement.
func ParseAnnounceRecord(p *record.PeerInfo) (identity.ID, Announcement, error) {
	var a Announcement
	if p.ID != SupernodesID() || !p.Authenticated() {
		return identity.ID{}, a, errors.New("mesh: not an authenticated supernode announcement")
	}
	if err := p.Validate(); err != nil {
		return identity.ID{}, a, err
	}
	if p.Fingerprint != fingerprint(p.Node) {
		return identity.ID{}, a, errors.New("mesh: announcement in another supernode's slot")
	}
	if err := json.Unmarshal(p.Extra, &a); err != nil {
		return identity.ID{}, a, fmt.Errorf("mesh: announcement payload: %w", err)
	}
	return p.Node, a, nil
}

// discoverLoop announces this supernode and reads the others' every
// interval, until stop.
func (m *Mesh) discoverLoop(dht *dhtnode.Service, every time.Duration) {
	defer m.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		node := dht.Node()
		if node == nil {
			t.Reset(every)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		go func() {
			select {
			case <-m.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		a := m.o.Announce()
		if a.Mesh != "" {
			if rec, err := AnnounceRecord(m.o.Key, a, time.Now()); err == nil {
				_, err = node.AnnouncePeer(ctx, rec, dhtnode.PutOptions{})
				if err != nil && !errors.Is(err, dhtnode.ErrNotStored) {
					m.log.Debug("mesh: announce failed", "err", err)
				}
			}
		}
		recs, err := node.FindPeer(ctx, SupernodesID(), dhtnode.FindPeerOptions{})
		cancel()
		if err != nil && !errors.Is(err, dhtnode.ErrNotFound) {
			m.log.Debug("mesh: discovery failed", "err", err)
		}
		for i := range recs {
			id, a, err := ParseAnnounceRecord(&recs[i])
			if err != nil {
				continue
			}
			m.Discovered(id, a)
		}
		t.Reset(every)
	}
}
