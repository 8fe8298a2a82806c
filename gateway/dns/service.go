package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/netutil"

	"github.com/elacity/pc2/core/host"
)

// Service runs the DNS server in a host, under the config section "dns".
// Its Source (the registry) must be started before it.
type Service struct {
	src      Source
	udp, tcp *mdns.Server
	handler  *Handler
	addr     string
}

// New returns an unstarted DNS service answering from src.
func New(src Source) *Service { return &Service{src: src} }

// Name implements host.Service.
func (s *Service) Name() string { return "dns" }

// Addr returns the listen address (UDP and TCP share it) once started.
func (s *Service) Addr() string { return s.addr }

// LoadConfig decodes and checks the section.
func LoadConfig(h host.Handle) (Config, error) {
	c := DefaultConfig(h.Config().Dev)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return c, err
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	if len(c.Addresses) == 0 {
		errs = append(errs, sec.Errorf("addresses", "list this supernode's public IP addresses"))
	}
	for _, a := range c.Addresses {
		if _, err := netip.ParseAddr(a); err != nil {
			errs = append(errs, sec.Errorf("addresses", fmt.Sprintf("%q is not an IP address", a)))
		}
	}
	if len(c.Nameservers) == 0 {
		errs = append(errs, sec.Errorf("nameservers", "at least one is needed"))
	}
	if c.TTL < time.Second || c.TTL > 24*time.Hour {
		errs = append(errs, sec.Errorf("ttl", fmt.Sprintf("%v is outside [1s, 24h]", c.TTL)))
	}
	if c.LiveTTL < time.Second || c.LiveTTL > time.Hour {
		errs = append(errs, sec.Errorf("liveTTL", fmt.Sprintf("%v is outside [1s, 1h]", c.LiveTTL)))
	}
	if c.NegativeTTL < time.Second || c.NegativeTTL > 24*time.Hour {
		errs = append(errs, sec.Errorf("negativeTTL", fmt.Sprintf("%v is outside [1s, 24h]", c.NegativeTTL)))
	}
	if c.MaxUDPSize < 512 || c.MaxUDPSize > 4096 {
		errs = append(errs, sec.Errorf("maxUDPSize", fmt.Sprintf("%d is outside [512, 4096]", c.MaxUDPSize)))
	}
	if c.RateLimit.Rate <= 0 || c.RateLimit.Burst < 1 {
		errs = append(errs, sec.Errorf("rateLimit", "rate must be > 0 and burst ≥ 1"))
	}
	if c.MaxTCPConns < 1 {
		errs = append(errs, sec.Errorf("maxTCPConns", "must be at least 1"))
	}
	return c, errors.Join(errs...)
}

// Start implements host.Service.
func (s *Service) Start(ctx context.Context, h host.Handle) error {
	c, err := LoadConfig(h)
	if err != nil {
		return err
	}
	s.handler, err = NewHandler(s.src, c, h.Metrics(), h.Clock().Now)
	if err != nil {
		return err
	}
	pc, ln, err := Listen(ctx, c.Listen)
	if err != nil {
		return err
	}
	s.addr = ln.Addr().String()
	if s.udp, s.tcp, err = Serve(s.handler, pc, ln, c.MaxTCPConns); err != nil {
		return err
	}
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("listen", s.addr)
	}
	h.Logger().Info("dns ready", "listen", s.addr, "zones", s.handler.rules.Suffixes())
	return nil
}

// Listen opens the TCP listener and a UDP socket on the same port (a
// free one when the port is 0).
func Listen(ctx context.Context, addr string) (net.PacketConn, net.Listener, error) {
	var lc net.ListenConfig
	for range 20 {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns listen tcp %s: %w", addr, err)
		}
		pc, err := lc.ListenPacket(ctx, "udp", ln.Addr().String())
		if err == nil {
			return pc, ln, nil
		}
		ln.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			return nil, nil, fmt.Errorf("dns listen udp %s: %w", addr, err)
		}
		// The free TCP port was taken on UDP: pick another.
	}
	return nil, nil, fmt.Errorf("dns listen %s: no port free on both UDP and TCP", addr)
}

// Serve answers with h on pc (UDP) and ln (TCP, at most maxTCP
// connections) until the returned servers are shut down.
func Serve(h *Handler, pc net.PacketConn, ln net.Listener, maxTCP int) (udp, tcp *mdns.Server, err error) {
	accept := func(dh mdns.Header) mdns.MsgAcceptAction {
		const qr = 1 << 15
		if dh.Bits&qr != 0 {
			return mdns.MsgIgnore
		}
		if opcode := int(dh.Bits>>11) & 0xF; opcode != mdns.OpcodeQuery {
			return mdns.MsgRejectNotImplemented
		}
		if dh.Qdcount != 1 || dh.Ancount != 0 || dh.Nscount != 0 || dh.Arcount > 1 {
			return mdns.MsgReject
		}
		return mdns.MsgAccept
	}
	udp = &mdns.Server{PacketConn: pc, Handler: h, MsgAcceptFunc: accept, UDPSize: 4096,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second}
	tcp = &mdns.Server{Listener: netutil.LimitListener(ln, maxTCP), Handler: h, MsgAcceptFunc: accept,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		IdleTimeout: func() time.Duration { return 8 * time.Second }, MaxTCPQueries: 128}
	started, failed := make(chan struct{}, 2), make(chan error, 2)
	udp.NotifyStartedFunc = func() { started <- struct{}{} }
	tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	for _, srv := range []*mdns.Server{udp, tcp} {
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
			}
		}()
	}
	for range 2 {
		select {
		case <-started:
		case err := <-failed:
			udp.Shutdown()
			tcp.Shutdown()
			return nil, nil, fmt.Errorf("dns serve: %w", err)
		}
	}
	return udp, tcp, nil
}

// Stop implements host.Service.
func (s *Service) Stop(ctx context.Context) error {
	if s.udp == nil {
		return nil
	}
	return errors.Join(s.udp.ShutdownContext(ctx), s.tcp.ShutdownContext(ctx))
}
