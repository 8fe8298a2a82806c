package stun

import (
	"context"
	"errors"
	"net/netip"

	"github.com/elacity/pc2/core/host"
)

// ServiceConfig is the "stun" section of a supernode.
type ServiceConfig struct {
	// Listen is the primary UDP address (":3478"; dev: 127.0.0.1:0). For
	// NAT classification (otherPort, otherAddr) it must name this host's
	// address, not a wildcard.
	Listen string `yaml:"listen"`
	// OtherPort is a second port (RFC 5780 port tests; 0: none).
	OtherPort uint16 `yaml:"otherPort"`
	// OtherAddr is a second address of this host (RFC 5780 address tests;
	// "": none).
	OtherAddr string `yaml:"otherAddr"`
	// Strict never answers with more bytes than the request.
	Strict bool `yaml:"strict"`
	// Rate and Burst bound answers per source IP.
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

// DefaultServiceConfig is the section's default.
func DefaultServiceConfig(dev bool) ServiceConfig {
	c := ServiceConfig{Listen: ":3478", Rate: 20, Burst: 40}
	if dev {
		c.Listen = "127.0.0.1:0"
	}
	return c
}

// Service runs a Server in a host as "stun".
type Service struct{ srv *Server }

// NewService returns an unstarted service.
func NewService() *Service { return &Service{} }

// Name implements host.Service.
func (s *Service) Name() string { return "stun" }

// Server returns the running server (nil before Start).
func (s *Service) Server() *Server { return s.srv }

// Start implements host.Service.
func (s *Service) Start(_ context.Context, h host.Handle) error {
	c := DefaultServiceConfig(h.Config().Dev)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return err
	}
	if err := sec.CheckHostPort("listen", c.Listen); err != nil {
		return err
	}
	listen, err := parseListen(c.Listen)
	if err != nil {
		return sec.Errorf("listen", err.Error())
	}
	cfg := ServerConfig{Listen: listen, OtherPort: c.OtherPort, Strict: c.Strict, Rate: c.Rate, Burst: c.Burst}
	if c.OtherAddr != "" {
		if cfg.OtherAddr, err = netip.ParseAddr(c.OtherAddr); err != nil {
			return sec.Errorf("otherAddr", err.Error())
		}
	}
	if c.Rate <= 0 || c.Burst < 1 {
		return sec.Errorf("rate", "rate and burst must be positive")
	}
	srv, err := ListenServer(cfg)
	if err != nil {
		return sec.Errorf("listen", err.Error())
	}
	s.srv = srv
	m := h.Metrics()
	m.Gauge("answered", func() float64 { return float64(srv.answered.Load()) })
	m.Gauge("errors", func() float64 { return float64(srv.errs.Load()) })
	m.Gauge("malformed", func() float64 { return float64(srv.malformed.Load()) })
	m.Gauge("rate_limited", func() float64 { return float64(srv.limited.Load()) })
	m.Gauge("amplifying_refused", func() float64 { return float64(srv.amplifying.Load()) })
	addrs := srv.Addrs()
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("listen", addrs[0].String())
	}
	mode := "binding only (set otherPort and otherAddr for NAT classification)"
	switch {
	case len(addrs) == 4:
		mode = "RFC 5780: two addresses, two ports"
	case len(addrs) == 2:
		mode = "RFC 5780 port tests only: one address (set otherAddr for address tests)"
	}
	h.Logger().Info("stun server ready", "udp", addrs, "mode", mode)
	return nil
}

// parseListen accepts "host:port" with an IP or an empty host (wildcard).
func parseListen(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	if len(s) > 0 && s[0] == ':' {
		return netip.ParseAddrPort("0.0.0.0" + s)
	}
	return netip.AddrPort{}, errors.New("listen must be ip:port or :port")
}

// Stop implements host.Service.
func (s *Service) Stop(context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}
