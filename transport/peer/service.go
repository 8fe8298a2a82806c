package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/transport/nat"
	"github.com/elacity/pc2/transport/peer/directory"
)

// EchoProtocol is served by nodes with peer.echo on: it returns what it
// reads (pc2 peer ping uses it).
const EchoProtocol = "pc2/echo"

// ServiceConfig is the "peer" section of a node.
type ServiceConfig struct {
	// Relays are where the node keeps reservations ("id@host:port", e.g. a
	// supernode's relay service): peers reach it through them at once.
	Relays []string `yaml:"relays"`
	// Echo serves EchoProtocol.
	Echo bool `yaml:"echo"`
	// Publish keeps the node's peer record in the DHT (needs the dht
	// section's bootstrap).
	Publish bool `yaml:"publish"`
}

// ParseRelay parses "id@host:port".
func ParseRelay(s string) (RelayInfo, error) {
	id, addr, ok := strings.Cut(s, "@")
	if !ok {
		return RelayInfo{}, fmt.Errorf("relay %q: want id@host:port", s)
	}
	rid, err := identity.ParseID(id)
	if err != nil {
		return RelayInfo{}, fmt.Errorf("relay %q: %w", s, err)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return RelayInfo{}, fmt.Errorf("relay %q: %w", s, err)
	}
	return RelayInfo{ID: rid, Addr: ap}, nil
}

// Service is the node's "peer" service: an Endpoint on the nat service's
// shared socket, reachable through its relays, its record published in
// and peers resolved from the DHT.
type Service struct {
	nat *nat.Service
	dht *dhtnode.Service // nil: no DHT (peers resolved by Hints only)

	// Hints answers before the DHT for ids it knows (tests, static
	// setups); nil: none.
	Hints func(identity.ID) (Info, bool)

	mu     sync.Mutex
	e      *Endpoint
	dir    *directory.Directory
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewService returns the service; dht may be nil.
func NewService(n *nat.Service, dht *dhtnode.Service) *Service {
	return &Service{nat: n, dht: dht}
}

// Name implements host.Service.
func (s *Service) Name() string { return "peer" }

// Endpoint is the running endpoint (nil before Start): plugins Dial and
// Listen on it.
func (s *Service) Endpoint() *Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.e
}

// Start implements host.Service.
func (s *Service) Start(_ context.Context, h host.Handle) error {
	c := ServiceConfig{Publish: true}
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return err
	}
	var relays []RelayInfo
	for _, r := range c.Relays {
		ri, err := ParseRelay(r)
		if err != nil {
			return sec.Errorf("relays", err.Error())
		}
		relays = append(relays, ri)
	}
	mux := s.nat.Mux()
	if mux == nil {
		return errors.New("peer: the nat service has not started")
	}
	s.dir = directory.New(s.dhtNode, h.Clock().Now)
	e, err := New(Config{
		Key: h.Identity(), Mux: mux, Resolver: s, Relays: relays,
		Candidates: s.candidates, Logger: h.Logger(),
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	s.e, s.cancel = e, cancel
	s.mu.Unlock()
	if c.Echo {
		l, err := e.Listen(EchoProtocol)
		if err != nil {
			cancel()
			e.Close()
			return err
		}
		s.wg.Add(1)
		go s.serveEcho(ctx, l)
	}
	if n := s.dhtNode(); c.Publish && n != nil && len(n.Config().Bootstrap) == 0 && !n.Config().PublicNetwork {
		h.Logger().Info("peer: no dht.bootstrap, so the peer record is not published; peers need --via or hints to reach this node")
		c.Publish = false
	}
	if c.Publish && s.dht != nil {
		pub := &directory.Publisher{
			Node: s.dhtNode, Key: h.Identity(), Now: h.Clock().Now, Logger: h.Logger(),
			Fields: func() directory.Record { return s.record(relays) },
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			// The first record should name the relays: give the
			// reservations a few seconds before publishing without them.
			for deadline := time.Now().Add(5 * time.Second); len(relays) > 0 && len(e.Reserved()) < len(relays) && time.Now().Before(deadline); {
				select {
				case <-ctx.Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
			pub.Run(ctx)
		}()
	}
	return nil
}

func (s *Service) dhtNode() *dhtnode.Node {
	if s.dht == nil {
		return nil
	}
	return s.dht.Node()
}

// Resolve implements Resolver: hints, then the peer's record in the DHT.
func (s *Service) Resolve(ctx context.Context, id identity.ID) (Info, error) {
	if s.Hints != nil {
		if info, ok := s.Hints(id); ok {
			return info, nil
		}
	}
	r, err := s.dir.Resolve(ctx, id)
	if err != nil {
		return Info{}, err
	}
	return InfoOf(r), nil
}

// InfoOf is how to reach the node of record r.
func InfoOf(r directory.Record) Info {
	info := Info{Direct: r.UDP, Hard: r.Hard}
	for _, rl := range r.Relays {
		info.Relays = append(info.Relays, RelayInfo{ID: rl.ID, Addr: rl.Addr})
	}
	return info
}

// candidates are the shared socket's addresses peers may punch to: the
// port mapping, the reflexive address, then the local one.
func (s *Service) candidates() Candidates {
	st := s.nat.Status()
	var c Candidates
	add := func(ap netip.AddrPort) {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if !ap.IsValid() || ap.Addr().IsUnspecified() || ap.Port() == 0 {
			return
		}
		for _, x := range c.UDP {
			if x == ap {
				return
			}
		}
		c.UDP = append(c.UDP, ap)
	}
	add(st.Mapping.External)
	add(st.Reflexive)
	add(st.Local)
	c.Hard = st.NAT.Hard()
	return c
}

// record is what the node publishes.
func (s *Service) record(relays []RelayInfo) directory.Record {
	st := s.nat.Status()
	c := s.candidates()
	r := directory.Record{UDP: c.UDP, Hard: c.Hard}
	r.NAT = string(st.NAT.Mapping)
	if len(r.UDP) > directory.MaxCandidates {
		r.UDP = r.UDP[:directory.MaxCandidates]
	}
	e := s.Endpoint()
	reserved := map[netip.AddrPort]bool{}
	if e != nil {
		for _, ap := range e.Reserved() {
			reserved[ap] = true
		}
	}
	for _, ri := range relays {
		if reserved[netip.AddrPortFrom(ri.Addr.Addr().Unmap(), ri.Addr.Port())] && len(r.Relays) < directory.MaxRelays {
			r.Relays = append(r.Relays, directory.Relay{ID: ri.ID, Addr: ri.Addr})
		}
	}
	return r
}

func (s *Service) serveEcho(ctx context.Context, l *Listener) {
	defer s.wg.Done()
	for {
		st, err := l.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			_ = st.SetDeadline(time.Now().Add(10 * time.Minute))
			_, _ = io.Copy(st, io.LimitReader(st, 1<<30))
			_ = st.CloseWrite()
		}()
	}
}

// Stop implements host.Service.
func (s *Service) Stop(context.Context) error {
	s.mu.Lock()
	e, cancel := s.e, s.cancel
	s.mu.Unlock()
	if e == nil {
		return nil
	}
	cancel()
	err := e.Close()
	s.wg.Wait()
	return err
}
