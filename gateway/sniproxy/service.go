package sniproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
)

// TLSTargets finds the backend of a server name; the name registry
// implements it.
type TLSTargets interface {
	TLSTarget(serverName string) (addr string, ok bool)
}

// Owners finds the node id that owns a server name; the name registry
// implements it. With Tunnels, it lets the gateway serve names whose
// owner holds a tunnel here.
type Owners interface {
	Owner(serverName string) (identity.ID, bool)
}

// Tunnels opens visitor streams on node tunnels; relay/tunnel implements
// it.
type Tunnels interface {
	Has(id identity.ID) bool
	Dial(ctx context.Context, id identity.ID, service string, visitor net.Addr) (net.Conn, error)
}

// TunnelService is the node-side service a tunnelled TLS visitor is sent to.
const TunnelService = "https"

// TunnelTarget is the registered target of a name served only through its
// owner's tunnel (plugins/registry/wire.TargetTunnel).
const TunnelTarget = "tunnel"

// ErrNodeOffline is the route error for a name whose target is
// TunnelTarget while its owner holds no tunnel here: the visitor gets a
// TLS alert at once instead of a dial to nowhere.
var ErrNodeOffline = errors.New("sniproxy: the name's node holds no tunnel here")

// NewTunnelRouter routes by the registered targets, sending a name whose
// owner holds a tunnel here over that tunnel, ahead of its target (owners
// and tunnels may be nil: no tunnels). A name registered with
// TunnelTarget and no tunnel is refused with ErrNodeOffline.
func NewTunnelRouter(targets TLSTargets, owners Owners, tunnels Tunnels, proxyProtocol bool) Router {
	return RouterFunc(func(_ context.Context, name string) (Target, error) {
		if tunnels != nil && owners != nil {
			if id, ok := owners.Owner(name); ok && tunnels.Has(id) {
				return Target{Addr: "tunnel:" + id.String(), ProxyProtocol: proxyProtocol,
					Dial: func(ctx context.Context, client net.Addr) (net.Conn, error) {
						return tunnels.Dial(ctx, id, TunnelService, client)
					}}, nil
			}
		}
		addr, ok := targets.TLSTarget(name)
		switch {
		case !ok:
			return Target{}, ErrUnknownName
		case addr == TunnelTarget:
			return Target{}, ErrNodeOffline
		}
		return Target{Addr: addr, ProxyProtocol: proxyProtocol}, nil
	})
}

// ServiceConfig is the "sni" section of a supernode's configuration.
type ServiceConfig struct {
	// Listen is the TLS passthrough address (":443"; dev: a free loopback port).
	Listen          string        `yaml:"listen"`
	HelloTimeout    time.Duration `yaml:"helloTimeout"`
	DialTimeout     time.Duration `yaml:"dialTimeout"`
	IdleTimeout     time.Duration `yaml:"idleTimeout"`
	MaxConns        int           `yaml:"maxConns"`
	MaxPendingPerIP int           `yaml:"maxPendingPerIP"`
	// ProxyProtocol sends a PROXY v2 header to every backend so nodes see
	// the visitor's address; nodes must then expect it.
	ProxyProtocol bool `yaml:"proxyProtocol"`
}

// DefaultServiceConfig returns the defaults of the section.
func DefaultServiceConfig(dev bool) ServiceConfig {
	c := ServiceConfig{
		Listen:          ":443",
		HelloTimeout:    5 * time.Second,
		DialTimeout:     5 * time.Second,
		IdleTimeout:     10 * time.Minute,
		MaxConns:        10000,
		MaxPendingPerIP: 32,
	}
	if dev {
		c.Listen = "127.0.0.1:0"
	}
	return c
}

// Service runs the passthrough proxy in a host under the section "sni".
type Service struct {
	// Tunnels, when set before Start, serves the names of nodes holding a
	// tunnel here over that tunnel, ahead of their registered target; the
	// targets must then implement Owners.
	Tunnels Tunnels

	targets TLSTargets
	ln      net.Listener
	cancel  context.CancelFunc
	done    chan error
}

// NewService returns an unstarted service routing with t.
func NewService(t TLSTargets) *Service { return &Service{targets: t} }

// Name implements host.Service.
func (s *Service) Name() string { return "sni" }

// Addr returns the listen address once started.
func (s *Service) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

func loadServiceConfig(h host.Handle) (ServiceConfig, error) {
	c := DefaultServiceConfig(h.Config().Dev)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return c, err
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	errs = append(errs, sec.CheckDurations(time.Minute, map[string]time.Duration{"helloTimeout": c.HelloTimeout, "dialTimeout": c.DialTimeout}))
	if c.MaxConns < 1 || c.MaxPendingPerIP < 1 {
		errs = append(errs, sec.Errorf("maxConns", "maxConns and maxPendingPerIP must be at least 1"))
	}
	return c, errors.Join(errs...)
}

// Start implements host.Service.
func (s *Service) Start(ctx context.Context, h host.Handle) error {
	c, err := loadServiceConfig(h)
	if err != nil {
		return err
	}
	proxyProtocol := c.ProxyProtocol
	owners, _ := s.targets.(Owners)
	tunnels := s.Tunnels
	if tunnels == nil {
		owners = nil
	}
	srv, err := New(Config{
		Router:          NewTunnelRouter(s.targets, owners, tunnels, proxyProtocol),
		HelloTimeout:    c.HelloTimeout,
		DialTimeout:     c.DialTimeout,
		IdleTimeout:     c.IdleTimeout,
		MaxConns:        c.MaxConns,
		MaxPendingPerIP: c.MaxPendingPerIP,
		Metrics:         NewMetrics(h.Metrics()),
		Logger:          h.Logger(),
	})
	if err != nil {
		return err
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("sni listen %s: %w", c.Listen, err)
	}
	s.ln = ln
	serveCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done = make(chan error, 1)
	go func() { s.done <- srv.Serve(serveCtx, ln) }()
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("listen", ln.Addr().String())
	}
	return nil
}

// Stop implements host.Service: it stops accepting and closes the
// connections (the proxy has no graceful drain of spliced streams yet).
func (s *Service) Stop(ctx context.Context) error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	select {
	case err := <-s.done:
		if errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
