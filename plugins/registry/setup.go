package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/gateway/names"
)

// Config is the "registry" section of a supernode's configuration.
type Config struct {
	// Listen is the API's host:port. Default ":39002"; dev: 127.0.0.1:0.
	Listen string `yaml:"listen"`
	// Domains are the served suffixes. Default ela.city, pc2.net,
	// ela.net; dev: pc2.localhost.
	Domains []string `yaml:"domains"`
	// Lifetime of a registration; owners renew by registering again.
	Lifetime time.Duration `yaml:"lifetime"`
	// MaxSkew is how far a request's timestamp may be from this clock.
	MaxSkew time.Duration `yaml:"maxSkew"`
	// SweepInterval is how often expired names are removed.
	SweepInterval time.Duration `yaml:"sweepInterval"`
	// ACMELifetime is how long an ACME TXT value is served.
	ACMELifetime        time.Duration `yaml:"acmeLifetime"`
	MaxNames            int           `yaml:"maxNames"`
	MaxNamesPerOwner    int           `yaml:"maxNamesPerOwner"`
	AllowPrivateTargets bool          `yaml:"allowPrivateTargets"`
	RateLimit           struct {
		PerIP Rate `yaml:"perIP"`
		PerID Rate `yaml:"perID"`
	} `yaml:"rateLimit"`
}

// Rate is a token bucket: Rate events per second, bursts of Burst.
type Rate struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

// DefaultConfig returns the defaults of a supernode, or of a dev one.
func DefaultConfig(dev bool) Config {
	c := Config{
		Listen:           ":39002",
		Domains:          names.DefaultSuffixes,
		Lifetime:         30 * 24 * time.Hour,
		MaxSkew:          2 * time.Minute,
		SweepInterval:    time.Minute,
		ACMELifetime:     time.Hour,
		MaxNames:         1_000_000,
		MaxNamesPerOwner: 10,
	}
	c.RateLimit.PerIP = Rate{Rate: 2, Burst: 20}
	c.RateLimit.PerID = Rate{Rate: 0.2, Burst: 10}
	if dev {
		c.Listen = "127.0.0.1:0"
		c.Domains = []string{"pc2.localhost"}
		c.AllowPrivateTargets = true
	}
	return c
}

// Service runs the registry and its API inside a host. Until it has
// started, its lookups find nothing, so the gateway services built
// around it may be created first.
type Service struct {
	// Publisher receives every change; set it before Start (default:
	// NopPublisher, until the DHT is wired).
	Publisher Publisher
	// Claims, set before Start, refuses names held at other supernodes.
	Claims Claims

	reg  atomic.Pointer[Registry]
	api  *API
	ln   net.Listener
	stop chan struct{}
	done chan struct{}
	log  *slog.Logger
}

// New returns an unstarted registry service.
func New() *Service { return &Service{} }

// Name implements host.Service.
func (s *Service) Name() string { return "registry" }

// Registry returns the running registry, or nil before Start.
func (s *Service) Registry() *Registry { return s.reg.Load() }

// Addr returns the API's listen address, or nil before Start.
func (s *Service) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// LoadConfig decodes and checks the section; errors carry file:line.
func LoadConfig(h host.Handle) (Config, *names.Rules, error) {
	c := DefaultConfig(h.Config().Dev)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return c, nil, err
	}
	var errs []error
	rules, err := names.NewRules(c.Domains)
	if err != nil {
		errs = append(errs, sec.Errorf("domains", err.Error()))
	}
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	if c.Lifetime < time.Hour || c.Lifetime > 366*24*time.Hour {
		errs = append(errs, sec.Errorf("lifetime", fmt.Sprintf("%v is outside [1h, 366d]", c.Lifetime)))
	}
	if c.MaxSkew < 5*time.Second || c.MaxSkew > time.Hour {
		errs = append(errs, sec.Errorf("maxSkew", fmt.Sprintf("%v is outside [5s, 1h]", c.MaxSkew)))
	}
	if c.SweepInterval < time.Second || c.SweepInterval > c.Lifetime {
		errs = append(errs, sec.Errorf("sweepInterval", fmt.Sprintf("%v is outside [1s, lifetime]", c.SweepInterval)))
	}
	if c.ACMELifetime < time.Minute || c.ACMELifetime > 7*24*time.Hour {
		errs = append(errs, sec.Errorf("acmeLifetime", fmt.Sprintf("%v is outside [1m, 7d]", c.ACMELifetime)))
	}
	if c.MaxNames < 1 {
		errs = append(errs, sec.Errorf("maxNames", "must be at least 1"))
	}
	if c.MaxNamesPerOwner < 1 {
		errs = append(errs, sec.Errorf("maxNamesPerOwner", "must be at least 1"))
	}
	for field, r := range map[string]Rate{"rateLimit.perIP": c.RateLimit.PerIP, "rateLimit.perID": c.RateLimit.PerID} {
		if r.Rate <= 0 || r.Burst < 1 {
			errs = append(errs, sec.Errorf(field, "rate must be > 0 and burst ≥ 1"))
		}
	}
	return c, rules, errors.Join(errs...)
}

// Start implements host.Service: load the names, listen, start the
// sweeper.
func (s *Service) Start(ctx context.Context, h host.Handle) error {
	c, rules, err := LoadConfig(h)
	if err != nil {
		return err
	}
	s.log = h.Logger()
	reg, err := Open(Options{
		Rules: rules, Storage: h.Storage(), Clock: h.Clock(), Publisher: s.Publisher, Claims: s.Claims, Logger: s.log, Metrics: h.Metrics(),
		Lifetime: c.Lifetime, MaxSkew: c.MaxSkew, ACMELifetime: c.ACMELifetime,
		MaxNames: c.MaxNames, MaxNamesPerOwner: c.MaxNamesPerOwner, AllowPrivateTargets: c.AllowPrivateTargets,
		RatePerID: c.RateLimit.PerID.Rate, BurstPerID: c.RateLimit.PerID.Burst,
	})
	if err != nil {
		return err
	}
	if _, err := reg.Sweep(); err != nil {
		return err
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("registry listen %s: %w", c.Listen, err)
	}
	s.ln = ln
	s.api = NewAPI(reg, APIOptions{RatePerIP: c.RateLimit.PerIP.Rate, BurstPerIP: c.RateLimit.PerIP.Burst})
	s.reg.Store(reg)
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.api.Serve(ln)
	go s.sweep(h.Clock(), c.SweepInterval)
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("api", "http://"+ln.Addr().String())
	}
	s.log.Info("registry ready", "api", ln.Addr().String(), "domains", rules.Suffixes(), "names", reg.Len())
	return nil
}

func (s *Service) sweep(clk clock.Clock, every time.Duration) {
	defer close(s.done)
	t := clk.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C():
			if n, err := s.Registry().Sweep(); err != nil {
				s.log.Error("registry: sweep failed", "err", err)
			} else if n > 0 {
				s.log.Info("registry: expired names freed", "count", n)
			}
			t.Reset(every)
		}
	}
}

// Stop implements host.Service.
func (s *Service) Stop(ctx context.Context) error {
	if s.stop == nil {
		return nil
	}
	close(s.stop)
	err := s.api.Shutdown(ctx)
	<-s.done
	return err
}

// The Service's lookups delegate to the registry once it runs.

// TLSTarget: see Registry.TLSTarget.
func (s *Service) TLSTarget(serverName string) (string, bool) {
	if r := s.reg.Load(); r != nil {
		return r.TLSTarget(serverName)
	}
	return "", false
}

// Owner: see Registry.Owner.
func (s *Service) Owner(serverName string) (identity.ID, bool) {
	if r := s.reg.Load(); r != nil {
		return r.Owner(serverName)
	}
	return identity.ID{}, false
}

// Registered: see Registry.Registered.
func (s *Service) Registered(id identity.ID) bool {
	r := s.reg.Load()
	return r != nil && r.Registered(id)
}

// HTTPBackend implements httproute.Router.
func (s *Service) HTTPBackend(host []byte) (httproute.Backend, bool) {
	if r := s.reg.Load(); r != nil {
		return r.HTTPBackend(host)
	}
	return httproute.Backend{}, false
}

// Zones implements dns.Source.
func (s *Service) Zones() []string {
	if r := s.reg.Load(); r != nil {
		return r.Zones()
	}
	return nil
}

// LookupName implements dns.Source.
func (s *Service) LookupName(name string) ([]netip.Addr, bool) {
	if r := s.reg.Load(); r != nil {
		return r.LookupName(name)
	}
	return nil, false
}

// ACMEChallenge implements dns.Source.
func (s *Service) ACMEChallenge(name string) ([]string, bool) {
	if r := s.reg.Load(); r != nil {
		return r.ACMEChallenge(name)
	}
	return nil, false
}
