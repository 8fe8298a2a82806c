// Package nat is a node's view of the NAT in front of it, run as the
// "nat" service: it opens the node's shared UDP socket (transport/udpmux),
// learns the socket's reflexive address and NAT class from supernodes'
// STUN services (transport/stun) and asks the home gateway for a port
// mapping (transport/portmap), and keeps all three current.
//
// It exists so that everything that later needs these facts (hole punching,
// advertising the node's endpoints, choosing a relay) reads them from one
// place, measured on the socket that QUIC actually uses.
package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/transport/portmap"
	"github.com/elacity/pc2/transport/stun"
	"github.com/elacity/pc2/transport/udpmux"
)

// Config is the "nat" section of a node.
type Config struct {
	// Listen is the shared UDP socket (":0", every address: the tunnel
	// and peers use it; a fixed port keeps port mappings and peers'
	// knowledge across restarts).
	Listen string `yaml:"listen"`
	// STUN lists STUN servers (host:port, e.g. supernodes' "stun" service);
	// the first that answers is used. Empty: no discovery.
	STUN []string `yaml:"stun"`
	// Classify runs the RFC 5780 tests (needs a server with otherPort and
	// otherAddr); false: reflexive address only.
	Classify bool `yaml:"classify"`
	// Refresh re-checks the reflexive address this often (0: never).
	Refresh time.Duration `yaml:"refresh"`
	// PortMapping asks the gateway for a mapping of the shared port.
	PortMapping bool `yaml:"portMapping"`
	// Gateway overrides the default route's gateway.
	Gateway string `yaml:"gateway"`
	// Protocols limits the port mapping protocols (pcp, nat-pmp, upnp).
	Protocols []string `yaml:"protocols"`
}

// DefaultConfig is the section's default; dev mode maps no port.
func DefaultConfig(dev bool) Config {
	c := Config{Listen: ":0", Classify: true, Refresh: 5 * time.Minute, PortMapping: true}
	if dev {
		c.PortMapping = false
	}
	return c
}

// Status is what the service knows.
type Status struct {
	Local     netip.AddrPort
	Reflexive netip.AddrPort // zero until discovered
	NAT       stun.Result    // zero Mapping until classified
	Mapping   portmap.Mapping
}

// Service is the "nat" service.
type Service struct {
	mux    *udpmux.Mux
	client *stun.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	status Status
	mapper *portmap.Mapper
}

// NewService returns an unstarted service.
func NewService() *Service { return &Service{} }

// Name implements host.Service.
func (s *Service) Name() string { return "nat" }

// Mux is the node's shared socket (nil before Start): QUIC dials and
// listens on its Transport, hole punching registers its packets on it.
func (s *Service) Mux() *udpmux.Mux { return s.mux }

// Status returns a snapshot.
func (s *Service) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Start implements host.Service.
func (s *Service) Start(_ context.Context, h host.Handle) error {
	c := DefaultConfig(h.Config().Dev)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return err
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	for _, srv := range c.STUN {
		errs = append(errs, sec.CheckHostPort("stun", srv))
	}
	var gw netip.Addr
	if c.Gateway != "" {
		var err error
		if gw, err = netip.ParseAddr(c.Gateway); err != nil {
			errs = append(errs, sec.Errorf("gateway", err.Error()))
		}
	}
	var protos []portmap.Protocol
	for _, p := range c.Protocols {
		switch pp := portmap.Protocol(p); pp {
		case portmap.PCP, portmap.NATPMP, portmap.UPnP:
			protos = append(protos, pp)
		default:
			errs = append(errs, sec.Errorf("protocols", fmt.Sprintf("unknown protocol %q (pcp, nat-pmp, upnp)", p)))
		}
	}
	if c.Refresh < 0 {
		errs = append(errs, sec.Errorf("refresh", "must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	mux, err := udpmux.Listen("udp", c.Listen, udpmux.Options{})
	if err != nil {
		return sec.Errorf("listen", err.Error())
	}
	s.mux = mux
	s.client = stun.NewClient(mux)
	mux.Handle(stun.IsResponse, s.client.Deliver)
	s.status.Local = mux.LocalAddr()
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("udp", mux.LocalAddr().String())
	}
	log := h.Logger()
	log.Info("shared UDP socket ready", "udp", mux.LocalAddr())

	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if len(c.STUN) > 0 {
		s.wg.Add(1)
		go s.discover(ctx, log, c)
	} else {
		log.Info("no STUN servers configured: reflexive address unknown")
	}
	if c.PortMapping {
		s.wg.Add(1)
		go s.portMap(ctx, log, portmap.Config{Port: mux.LocalAddr().Port(), Gateway: gw, Protocols: protos, Logger: log,
			OnChange: func(m portmap.Mapping) {
				s.mu.Lock()
				s.status.Mapping = m
				s.mu.Unlock()
			}})
	}
	return nil
}

// discover classifies once (retrying every 30 s until a server answers),
// then re-checks the reflexive address every Refresh.
func (s *Service) discover(ctx context.Context, log *slog.Logger, c Config) {
	defer s.wg.Done()
	retry := time.NewTicker(30 * time.Second)
	defer retry.Stop()
	for !s.classify(ctx, log, c) {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
		}
	}
	if c.Refresh <= 0 {
		return
	}
	t := time.NewTicker(c.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.refresh(ctx, log, c)
	}
}

// classify tries each server in turn; it reports whether one answered.
func (s *Service) classify(ctx context.Context, log *slog.Logger, c Config) bool {
	for _, name := range c.STUN {
		server, err := resolve(ctx, name)
		if err != nil {
			log.Warn("stun server", "server", name, "err", err)
			continue
		}
		var filtering stun.Binder
		if c.Classify {
			// A fresh socket on the same address: the mapping tests open
			// the shared socket's filter towards the server's other
			// addresses, which would hide the filtering behaviour.
			local := s.mux.LocalAddr()
			fc, err := stun.Listen("udp", netip.AddrPortFrom(local.Addr(), 0).String())
			if err != nil {
				log.Warn("stun: filtering socket", "err", err)
			} else {
				defer fc.Close()
				filtering = fc
			}
		}
		var res stun.Result
		if c.Classify {
			res, err = stun.Classify(ctx, s.client, filtering, server, s.mux.LocalAddr())
		} else {
			var a stun.Answer
			a, err = s.client.Binding(ctx, server, 0)
			res = stun.Result{Mapped: a.Mapped, Mapping: stun.MappingUnknown, Filtering: stun.FilteringUnknown, Server: server}
			if err == nil && a.ErrorCode != 0 {
				err = fmt.Errorf("error %d", a.ErrorCode)
			}
		}
		if err != nil {
			log.Warn("stun: no answer", "server", name, "err", err)
			continue
		}
		s.mu.Lock()
		s.status.Reflexive, s.status.NAT = res.Mapped, res
		s.mu.Unlock()
		log.Info("reflexive address", "udp", res.Mapped, "mapping", res.Mapping, "filtering", res.Filtering,
			"server", name, "notes", strings.Join(res.Notes, "; "))
		return true
	}
	return false
}

// refresh re-asks the server that answered for the reflexive address.
func (s *Service) refresh(ctx context.Context, log *slog.Logger, c Config) {
	s.mu.Lock()
	server, old := s.status.NAT.Server, s.status.Reflexive
	s.mu.Unlock()
	a, err := s.client.Binding(ctx, server, 0)
	if err != nil || a.ErrorCode != 0 {
		log.Warn("stun refresh failed", "server", server, "err", err, "code", a.ErrorCode)
		return
	}
	if a.Mapped != old {
		s.mu.Lock()
		s.status.Reflexive = a.Mapped
		s.status.NAT.Mapped = a.Mapped
		s.mu.Unlock()
		log.Info("reflexive address changed", "udp", a.Mapped, "was", old)
	}
}

// portMap maps the shared port, retrying every minute while no gateway
// grants one.
func (s *Service) portMap(ctx context.Context, log *slog.Logger, cfg portmap.Config) {
	defer s.wg.Done()
	for {
		m, err := portmap.Map(ctx, cfg)
		if err == nil {
			s.mu.Lock()
			s.mapper = m
			s.status.Mapping = m.Mapping()
			s.mu.Unlock()
			return
		}
		log.Info("no port mapping", "err", err)
		t := time.NewTimer(time.Minute)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func resolve(ctx context.Context, hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap, nil
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	ua, err := net.ResolveUDPAddr("udp4", net.JoinHostPort(addrs[0].String(), port))
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ua.AddrPort(), nil
}

// Stop implements host.Service: stops discovery, deletes the port mapping
// (within ctx) and closes the shared socket.
func (s *Service) Stop(ctx context.Context) error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	s.wg.Wait()
	var errs []error
	s.mu.Lock()
	m := s.mapper
	s.mu.Unlock()
	if m != nil {
		errs = append(errs, m.Close(ctx))
	}
	errs = append(errs, s.mux.Close())
	return errors.Join(errs...)
}
