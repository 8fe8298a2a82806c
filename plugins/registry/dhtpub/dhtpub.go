// Package dhtpub publishes the registry's name records in the DHT, so that
// every supernode can find every name (the federation work builds on it).
//
// Why peer records and not signed values: a Boson signed value's id is its
// signer's public key. A name must map to an id anyone can compute, so a
// value keyed by a name-derived key would have a private key anyone can
// compute too, and anyone could publish a higher sequence number and block
// the name for good. Authenticated peer records avoid that: storing nodes
// keep one record per announcing node (fingerprint), each signed by that
// node's own key (os), so nobody can overwrite a supernode's entry. The
// record's peer id is derived from the name (NameID); its payload (ex) is
// the registry record with the owner-signed proof, which readers verify
// (wire.Record.VerifyProof), so a supernode vouches for where a name
// points but cannot invent an owner. Resolve (resolve.go) reads every
// supernode's announcement of a name back; federation/mesh reconciles
// them with its conflict rule when a name is unknown to the mesh.
package dhtpub

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// seqEpoch makes record times fit Boson's int32 sequence numbers until 2093.
const seqEpoch = 1_735_689_600 // 2025-01-01T00:00:00Z

// NameID is the DHT peer id under which supernodes announce name.
func NameID(name string) identity.ID { return nameKey(name).ID() }

func nameKey(name string) *identity.KeyPair {
	seed := sha256.Sum256([]byte("pc2-name-v1\x00" + name))
	kp, _ := identity.FromSeed(seed[:]) // 32 bytes: cannot fail
	return kp
}

// fingerprint gives each announcing supernode its own slot.
func fingerprint(id identity.ID) int64 { return int64(binary.BigEndian.Uint64(id[:8]) >> 1) }

// payload is what a supernode announces for a name.
type payload struct {
	Record  *wire.Record `json:"record,omitempty"`
	Deleted string       `json:"deleted,omitempty"` // the name, when it was freed
}

// Service publishes through the DHT service of the same host. It is the
// registry's Publisher: changes are queued (the latest per name wins) and
// announced by a worker, so a slow DHT never delays the registry's API.
type Service struct {
	dht      *node.Service
	key      *identity.KeyPair
	endpoint string
	log      *slog.Logger

	mu      sync.Mutex
	pending map[string]payload
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

// New returns a publisher announcing through dht. Each announcement's
// endpoint is the supernode's DID, which other supernodes resolve to its
// gateways.
func New(dht *node.Service) *Service {
	return &Service{dht: dht, pending: map[string]payload{}, wake: make(chan struct{}, 1)}
}

// Name implements host.Service.
func (s *Service) Name() string { return "dhtpub" }

// Start implements host.Service; the DHT service must have started.
func (s *Service) Start(_ context.Context, h host.Handle) error {
	if s.dht.Node() == nil {
		return errors.New("dhtpub: the dht service has not started")
	}
	s.key, s.log = h.Identity(), h.Logger()
	s.endpoint = s.key.ID().DID()
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.run()
	return nil
}

// Stop implements host.Service; names still queued are announced again
// by the DHT node's own re-announce of persistent items after a restart.
func (s *Service) Stop(ctx context.Context) error {
	if s.stop == nil {
		return nil
	}
	close(s.stop)
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Publish queues rec for announcement.
func (s *Service) Publish(_ context.Context, rec *wire.Record) error {
	s.enqueue(rec.Name, payload{Record: rec})
	return nil
}

// Unpublish queues the announcement that name is free.
func (s *Service) Unpublish(_ context.Context, name string) error {
	s.enqueue(name, payload{Deleted: name})
	return nil
}

func (s *Service) enqueue(name string, p payload) {
	s.mu.Lock()
	s.pending[name] = p
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Service) run() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		}
		s.mu.Lock()
		batch := s.pending
		s.pending = map[string]payload{}
		s.mu.Unlock()
		for name, p := range batch {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := s.announce(ctx, name, p)
			cancel()
			if err != nil {
				s.log.Warn("dhtpub: announce failed", "name", name, "err", err)
			}
		}
	}
}

func (s *Service) announce(ctx context.Context, name string, p payload) error {
	extra, err := json.Marshal(p)
	if err != nil {
		return err
	}
	at := time.Now().Unix()
	if p.Record != nil {
		at = p.Record.Updated
	}
	peer, err := record.NewPeer(nameKey(name), s.key, int32(at-seqEpoch), fingerprint(s.key.ID()), s.endpoint, extra)
	if err != nil {
		return fmt.Errorf("record for %s (%d bytes): %w", name, len(extra), err)
	}
	_, err = s.dht.Node().AnnouncePeer(ctx, peer, node.PutOptions{Persistent: true})
	if errors.Is(err, node.ErrNotStored) {
		// No other DHT node yet: this node stores it and re-announces it
		// (Persistent) as others join.
		s.log.Debug("dhtpub: announced locally only, no other DHT node yet", "name", name)
		return nil
	}
	return err
}
