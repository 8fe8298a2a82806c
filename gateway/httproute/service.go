package httproute

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/elacity/pc2/core/host"
)

// Service runs the router in a host under the config section "http".
type Service struct {
	// Tunnels, set before Start, carries names whose http is "tunnel".
	Tunnels Tunnels

	router Router
	srv    *Server
	ln     net.Listener
}

// New returns an unstarted service routing with r.
func New(r Router) *Service { return &Service{router: r} }

// Name implements host.Service.
func (s *Service) Name() string { return "http" }

// Addr returns the listen address once started.
func (s *Service) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// LoadConfig decodes and checks the section.
func LoadConfig(h host.Handle) (Config, error) {
	c := DefaultConfig(h.Config().Dev)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return c, err
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	if c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 1<<20 {
		errs = append(errs, sec.Errorf("maxHeaderBytes", "must be within [1 KiB, 1 MiB]"))
	}
	if c.MaxBodyBytes < 1 {
		errs = append(errs, sec.Errorf("maxBodyBytes", "must be positive"))
	}
	errs = append(errs, sec.CheckDurations(24*time.Hour, map[string]time.Duration{"headerTimeout": c.HeaderTimeout, "bodyTimeout": c.BodyTimeout,
		"writeTimeout": c.WriteTimeout, "idleTimeout": c.IdleTimeout, "dialTimeout": c.DialTimeout, "backendTimeout": c.BackendTimeout}))
	for field, n := range map[string]int{"maxConns": c.MaxConns, "maxConnsPerIP": c.MaxConnsPerIP, "maxConnsPerBackend": c.MaxConnsPerBackend} {
		if n < 1 {
			errs = append(errs, sec.Errorf(field, "must be at least 1"))
		}
	}
	return c, errors.Join(errs...)
}

// Start implements host.Service.
func (s *Service) Start(ctx context.Context, h host.Handle) error {
	c, err := LoadConfig(h)
	if err != nil {
		return err
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", c.Listen, err)
	}
	s.ln = ln
	s.srv = NewServer(s.router, c, h.Metrics())
	s.srv.Tunnels = s.Tunnels
	go s.srv.Serve(ln)
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("listen", ln.Addr().String())
	}
	h.Logger().Info("http router ready", "listen", ln.Addr().String())
	return nil
}

// Stop implements host.Service.
func (s *Service) Stop(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}
