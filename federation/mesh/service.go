package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Config is the "mesh" section of a supernode.
type Config struct {
	// Listen is the mesh's UDP host:port (":39003"; dev: 127.0.0.1:0).
	Listen string `yaml:"listen"`
	// Advertise is the mesh address others dial, when Listen's is not
	// (a wildcard or a NAT'd address); default: the listen address.
	Advertise string `yaml:"advertise"`
	// Addresses are this supernode's public IPs: DNS answers registered
	// names with those of every supernode alive. Empty: DNS answers with
	// its own addresses only.
	Addresses []string `yaml:"addresses"`
	// Peers are the supernodes admitted to the mesh: id, and the mesh
	// address when known (else learnt from the DHT). Empty: every
	// supernode announced in the DHT is admitted.
	Peers []PeerConfig `yaml:"peers"`
	// Heartbeat is the status and keep-alive period (1s); DeadAfter the
	// silence after which a peer counts as dead (5s, at most 10s).
	Heartbeat time.Duration `yaml:"heartbeat"`
	DeadAfter time.Duration `yaml:"deadAfter"`
	// AnnounceInterval is how often the DHT announcement is renewed and
	// the other supernodes' read (1m; dev 5s).
	AnnounceInterval time.Duration `yaml:"announceInterval"`
	// StatusListen serves the status as JSON for `pc2 supernode status`
	// (127.0.0.1:0; "off" disables).
	StatusListen   string `yaml:"statusListen"`
	MaxRemoteNames int    `yaml:"maxRemoteNames"` // 2,000,000
}

// PeerConfig is one admitted supernode.
type PeerConfig struct {
	ID   string `yaml:"id"`
	Addr string `yaml:"addr"`
}

// DefaultConfig returns the defaults.
func DefaultConfig(dev bool) Config {
	c := Config{Listen: ":39003", Heartbeat: time.Second, DeadAfter: 5 * time.Second, AnnounceInterval: time.Minute,
		StatusListen: "127.0.0.1:0", MaxRemoteNames: 2_000_000}
	if dev {
		c.Listen = "127.0.0.1:0"
		c.AnnounceInterval = 5 * time.Second
	}
	return c
}

// Publisher is the registry's publisher the Service passes changes on to
// (plugins/registry/dhtpub).
type Publisher interface {
	Publish(ctx context.Context, rec *wire.Record) error
	Unpublish(ctx context.Context, name string) error
}

// Service runs a Mesh in a host under the section "mesh". It is created
// before the services that use its lookups (sni, dns, http, tunnel
// admission) and answers them from the registry alone until started.
type Service struct {
	*Mesh
	// DHT, when set, announces this supernode and discovers the others.
	DHT *dhtnode.Service
	// Next receives every registry change after the mesh (the DHT
	// publisher).
	Next Publisher
	// Resolver, when set, looks names the mesh does not know up in the
	// DHT (the dhtpub service).
	Resolver  Resolver
	status    *http.Server
	endpoints atomic.Pointer[[2]string] // tunnel, SNI: set by HostReady

}

// NewService returns an unstarted mesh over reg and tun (tun may be nil).
func NewService(reg Registry, tun Tunnels) *Service {
	m, _ := New(Options{Registry: reg, Tunnels: tun}) // reg is not nil
	return &Service{Mesh: m}
}

// Name implements host.Service.
func (s *Service) Name() string { return "mesh" }

// LoadConfig decodes and checks the section.
func LoadConfig(h host.Handle) (Config, error) {
	c := DefaultConfig(h.Config().Dev)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return c, err
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	if c.Advertise != "" {
		errs = append(errs, sec.CheckHostPort("advertise", c.Advertise))
	}
	if c.StatusListen != "off" {
		errs = append(errs, sec.CheckHostPort("statusListen", c.StatusListen))
	}
	for _, a := range c.Addresses {
		if _, err := netip.ParseAddr(a); err != nil {
			errs = append(errs, sec.Errorf("addresses", fmt.Sprintf("%q is not an IP address", a)))
		}
	}
	for i, p := range c.Peers {
		if _, err := identity.ParseID(p.ID); err != nil {
			errs = append(errs, sec.Errorf(fmt.Sprintf("peers[%d].id", i), err.Error()))
		}
		if p.Addr != "" {
			errs = append(errs, sec.CheckHostPort(fmt.Sprintf("peers[%d].addr", i), p.Addr))
		}
	}
	if c.Heartbeat < 100*time.Millisecond || c.DeadAfter < 2*c.Heartbeat || c.DeadAfter > 10*time.Second {
		errs = append(errs, sec.Errorf("deadAfter", "need heartbeat ≥ 100ms and 2·heartbeat ≤ deadAfter ≤ 10s"))
	}
	if c.AnnounceInterval < time.Second {
		errs = append(errs, sec.Errorf("announceInterval", "must be at least 1s"))
	}
	if c.MaxRemoteNames < 1 {
		errs = append(errs, sec.Errorf("maxRemoteNames", "must be at least 1"))
	}
	return c, errors.Join(errs...)
}

// Start implements host.Service.
func (s *Service) Start(ctx context.Context, h host.Handle) error {
	c, err := LoadConfig(h)
	if err != nil {
		return err
	}
	m := s.Mesh
	m.o.Key, m.log = h.Identity(), h.Logger()
	m.o.Resolver = s.Resolver
	m.o.Heartbeat, m.o.DeadAfter = c.Heartbeat, c.DeadAfter
	m.names.max = c.MaxRemoteNames
	m.o.Peers = map[identity.ID]string{}
	for _, p := range c.Peers {
		id, _ := identity.ParseID(p.ID)
		m.o.Peers[id] = p.Addr
	}
	for _, a := range c.Addresses {
		m.o.Addresses = append(m.o.Addresses, netip.MustParseAddr(a).Unmap())
	}
	m.o.Announce = func() Announcement {
		a := Announcement{Mesh: c.Advertise, Domains: m.o.Registry.Zones()}
		if a.Mesh == "" && m.addr != nil {
			a.Mesh = m.addr.String()
		}
		for _, ad := range m.o.Addresses {
			a.Addresses = append(a.Addresses, ad.String())
		}
		if e := s.endpoints.Load(); e != nil {
			a.Tunnel, a.SNI = e[0], e[1]
		}
		return a
	}
	if err := m.Listen(c.Listen); err != nil {
		return err
	}
	if s.DHT != nil {
		m.wg.Add(1)
		go m.discoverLoop(s.DHT, c.AnnounceInterval)
	}
	met := h.Metrics()
	met.Gauge("peers_alive", func() float64 {
		m.mu.Lock()
		defer m.mu.Unlock()
		n := 0
		for _, p := range m.peers {
			if p.conn != nil {
				n++
			}
		}
		return float64(n)
	})
	met.Gauge("remote_names", func() float64 { n, _ := m.names.counts(); return float64(n) })
	met.Gauge("forwarded_streams", func() float64 { return float64(m.Forwarded.Load()) })
	met.Gauge("served_streams", func() float64 { return float64(m.Served.Load()) })
	met.Gauge("evicted_names", func() float64 { return float64(m.Evicted.Load()) })
	adv, _ := h.(host.Advertiser)
	if adv != nil {
		adv.Advertise("listen", m.addr.String())
	}
	if c.StatusListen != "off" {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", c.StatusListen)
		if err != nil {
			m.Close()
			return fmt.Errorf("mesh status listen %s: %w", c.StatusListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/status", m.StatusHandler())
		s.status = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go s.status.Serve(ln)
		if adv != nil {
			adv.Advertise("status", "http://"+ln.Addr().String()+"/status")
		}
	}
	m.log.Info("mesh ready", "udp", m.addr.String(), "peers", len(c.Peers))
	return nil
}

// HostReady learns the tunnel and SNI endpoints to announce from the
// host's Info once every service has started (they start after the mesh).
func (s *Service) HostReady(info host.Info) {
	s.endpoints.Store(&[2]string{info.Extra["tunnel.listen"], info.Extra["sni.listen"]})
}

// Stop implements host.Service.
func (s *Service) Stop(ctx context.Context) error {
	if s.status != nil {
		s.status.Shutdown(ctx)
	}
	return s.Mesh.Close()
}

// Publish implements registry.Publisher: to the peers, then Next.
func (s *Service) Publish(ctx context.Context, rec *wire.Record) error {
	s.Mesh.Publish(rec)
	if s.Next != nil {
		return s.Next.Publish(ctx, rec)
	}
	return nil
}

// Unpublish implements registry.Publisher.
func (s *Service) Unpublish(ctx context.Context, name string) error {
	s.Mesh.Unpublish(name)
	if s.Next != nil {
		return s.Next.Unpublish(ctx, name)
	}
	return nil
}
