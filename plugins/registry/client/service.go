package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Config is the "names" section of a node's configuration.
type Config struct {
	// Registry is the supernode's registration API, e.g.
	// "http://203.0.113.10:39002".
	Registry string `yaml:"registry"`
	// RenewBefore is how long before expiry a name is renewed (default
	// 10 days; at most half the remaining lifetime is waited anyway).
	RenewBefore time.Duration `yaml:"renewBefore"`
	// RetryMin and RetryMax bound the backoff after a failure (1m, 1h).
	RetryMin time.Duration `yaml:"retryMin"`
	RetryMax time.Duration `yaml:"retryMax"`
	// CheckEvery is how often the node checks, between renewals, that its
	// names are still its own (default 5m). In a federation two
	// supernodes can accept the same new name at once; the loser's
	// supernode then drops it, and the node learns it here.
	CheckEvery time.Duration `yaml:"checkEvery"`
	// Names are registered at start and kept renewed.
	Names []NameConfig `yaml:"names"`
}

// NameConfig is one name a node keeps.
type NameConfig struct {
	Name          string `yaml:"name"`
	Target        string `yaml:"target"`
	HTTP          string `yaml:"http"`
	RedirectHTTPS bool   `yaml:"redirectHTTPS"`
	DNSDirect     bool   `yaml:"dnsDirect"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{RenewBefore: 10 * 24 * time.Hour, RetryMin: time.Minute, RetryMax: time.Hour, CheckEvery: 5 * time.Minute}
}

// Status is the state of one kept name.
type Status struct {
	Name    string
	Expires time.Time // zero until registered
	Next    time.Time // next attempt
	Err     error     // last failure, nil after a success
	RenewAt time.Time // when the next renewal is due; checks run until then
}

// Service keeps a node's names registered at one supernode: it registers
// them at start and renews each before it expires, backing off after
// failures. It runs under the config section "names".
type Service struct {
	mu     sync.Mutex
	status map[string]*Status
	stop   chan struct{}
	done   chan struct{}
}

// NewService returns an unstarted service.
func NewService() *Service { return &Service{status: map[string]*Status{}} }

// Name implements host.Service.
func (s *Service) Name() string { return "names" }

// Status returns the state of every kept name.
func (s *Service) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.status))
	for _, st := range s.status {
		out = append(out, *st)
	}
	return out
}

// LoadConfig decodes and checks the section.
func LoadConfig(h host.Handle) (Config, error) {
	c := DefaultConfig()
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return c, err
	}
	var errs []error
	if len(c.Names) > 0 {
		if u, err := url.Parse(c.Registry); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, sec.Errorf("registry", fmt.Sprintf("%q is not an http(s) URL", c.Registry)))
		}
	}
	if c.RenewBefore < time.Minute {
		errs = append(errs, sec.Errorf("renewBefore", "must be at least 1m"))
	}
	if c.RetryMin < time.Second || c.RetryMax < c.RetryMin {
		errs = append(errs, sec.Errorf("retryMin", "need 1s ≤ retryMin ≤ retryMax"))
	}
	if c.CheckEvery < time.Second {
		errs = append(errs, sec.Errorf("checkEvery", "must be at least 1s"))
	}
	seen := map[string]bool{}
	for i, n := range c.Names {
		field := fmt.Sprintf("names[%d]", i)
		if NormalName(n.Name) == "" || seen[NormalName(n.Name)] {
			errs = append(errs, sec.Errorf(field+".name", "empty or listed twice"))
		}
		seen[NormalName(n.Name)] = true
		if err := wire.CheckTarget(n.Target); err != nil {
			errs = append(errs, sec.Errorf(field+".target", err.Error()))
		}
		if n.HTTP != "" {
			if err := wire.CheckTarget(n.HTTP); err != nil {
				errs = append(errs, sec.Errorf(field+".http", err.Error()))
			}
		}
	}
	return c, errors.Join(errs...)
}

// Start implements host.Service. It does not wait for the supernode:
// a node whose supernode is down still starts, and keeps trying.
func (s *Service) Start(_ context.Context, h host.Handle) error {
	c, err := LoadConfig(h)
	if err != nil {
		return err
	}
	clk := h.Clock()
	cl := &Client{BaseURL: c.Registry, Key: h.Identity(), Now: clk.Now}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	for _, n := range c.Names {
		s.status[NormalName(n.Name)] = &Status{Name: NormalName(n.Name), Next: clk.Now()}
	}
	go s.run(cl, c, clk, h.Logger())
	return nil
}

func (s *Service) run(cl *Client, c Config, clk clock.Clock, log *slog.Logger) {
	defer close(s.done)
	backoff := map[string]time.Duration{}
	t := clk.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C():
		}
		now := clk.Now()
		next := now.Add(c.RetryMax)
		for _, n := range c.Names {
			name := NormalName(n.Name)
			s.mu.Lock()
			due := !s.status[name].Next.After(now)
			s.mu.Unlock()
			if due && !s.stillOurs(cl, c, name, clk, log) {
				s.renew(cl, c, n, name, clk, backoff, log)
			}
			s.mu.Lock()
			if at := s.status[name].Next; at.Before(next) {
				next = at
			}
			s.mu.Unlock()
		}
		t.Reset(max(next.Sub(clk.Now()), 0)) // every due name was just moved into the future
	}
}

func (s *Service) renew(cl *Client, c Config, n NameConfig, name string, clk clock.Clock, backoff map[string]time.Duration, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	rec, err := cl.Register(ctx, Registration{Name: name, Target: n.Target, HTTP: n.HTTP, RedirectHTTPS: n.RedirectHTTPS, DNSDirect: n.DNSDirect})
	now := clk.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status[name]
	st.Err = err
	if err != nil {
		b := backoff[name]
		switch {
		case permanent(err):
			b = c.RetryMax // taken, refused: maybe later, not soon
		case b == 0:
			b = c.RetryMin
		default:
			b = min(2*b, c.RetryMax)
		}
		backoff[name] = b
		st.Next = now.Add(b)
		log.Warn("names: registration failed", "name", name, "err", err, "retryIn", b)
		return
	}
	delete(backoff, name)
	st.Expires = time.Unix(rec.Expires, 0)
	left := st.Expires.Sub(now)
	wait := max(left-c.RenewBefore, left/2) // never renew in a loop if renewBefore ≥ lifetime
	st.RenewAt = now.Add(wait)
	st.Next = now.Add(min(wait, c.CheckEvery))
	log.Info("names: registered", "name", name, "expires", st.Expires.UTC().Format(time.RFC3339), "renewAt", st.Next.UTC().Format(time.RFC3339))
}

// stillOurs checks, before the renewal is due, that name is still
// registered to this node; true means nothing more to do now. A name
// found lost (another owner won it) is reported and registered again at
// once, which answers why (taken).
func (s *Service) stillOurs(cl *Client, c Config, name string, clk clock.Clock, log *slog.Logger) bool {
	s.mu.Lock()
	st := s.status[name]
	renewAt := st.RenewAt
	s.mu.Unlock()
	now := clk.Now()
	if renewAt.IsZero() || !now.Before(renewAt) {
		return false // not registered yet, or the renewal is due
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := cl.Get(ctx, name)
	switch {
	case err == nil && rec.Owner == cl.Key.ID():
	case err == nil || CodeOf(err) == wire.CodeNotFound:
		log.Error("names: name lost: another owner's earlier claim won it (at another supernode); choose another name", "name", name)
		return false
	default:
		log.Warn("names: ownership check failed", "name", name, "err", err)
	}
	s.mu.Lock()
	st.Next = now.Add(min(renewAt.Sub(now), c.CheckEvery))
	s.mu.Unlock()
	return true
}

func permanent(err error) bool {
	switch CodeOf(err) {
	case wire.CodeTaken, wire.CodeForbidden, wire.CodeQuota, wire.CodeBadRequest, wire.CodeBadSignature:
		return true
	}
	return false
}

// Stop implements host.Service. Names stay registered: they expire by
// themselves unless the node comes back and renews them.
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
