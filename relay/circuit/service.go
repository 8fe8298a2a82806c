package circuit

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/admission"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
)

// Registrations tells whether a node id owns names; the registry and the
// federation mesh implement it. On a supernode, such nodes may use the
// relay.
type Registrations interface {
	Registered(id identity.ID) bool
}

// ServiceConfig is the "relay" section.
type ServiceConfig struct {
	// Enabled runs the relay: on by default on a supernode, off on a node
	// (which should have a public address or a port mapping to offer it).
	Enabled bool   `yaml:"enabled"`
	Listen  string `yaml:"listen"` // UDP host:port, ":39004"; dev: 127.0.0.1:0
	// Per session (0: unlimited): rate of both directions summed, total
	// bytes, lifetime.
	SessionBytesPerSecond uint64        `yaml:"sessionBytesPerSecond"` // 1 MiB/s
	SessionMaxBytes       uint64        `yaml:"sessionMaxBytes"`       // 1 GiB
	SessionMaxDuration    time.Duration `yaml:"sessionMaxDuration"`    // 1h
	// PeerBytesPerSecond bounds what one peer sends over all its sessions
	// (0: unlimited).
	PeerBytesPerSecond    float64       `yaml:"peerBytesPerSecond"`    // 2 MiB/s
	ReservationTTL        time.Duration `yaml:"reservationTTL"`        // 10m
	MaxReservations       int           `yaml:"maxReservations"`       // 10000
	MaxSessions           int           `yaml:"maxSessions"`           // 4096
	MaxSessionsPerPeer    int           `yaml:"maxSessionsPerPeer"`    // 16
	ReservationsPerSecond float64       `yaml:"reservationsPerSecond"` // 20
	ReservationBurst      int           `yaml:"reservationBurst"`      // 40
	HandshakesPerSecond   float64       `yaml:"handshakesPerSecond"`   // 100
	IdleTimeout           time.Duration `yaml:"idleTimeout"`           // 30s
	// Allow admits these node ids, Deny refuses these always; AdmitAll
	// admits every node (an open relay, still under the limits above). By
	// default a supernode admits the nodes that own a name in its registry.
	Allow    []string `yaml:"allow"`
	Deny     []string `yaml:"deny"`
	AdmitAll bool     `yaml:"admitAll"`
}

// DefaultServiceConfig returns the section's defaults; enabled is the
// role's default (supernode: true, node: false).
func DefaultServiceConfig(dev, enabled bool) ServiceConfig {
	c := ServiceConfig{
		Enabled:               enabled,
		Listen:                ":39004",
		SessionBytesPerSecond: 1 << 20,
		SessionMaxBytes:       1 << 30,
		SessionMaxDuration:    time.Hour,
		PeerBytesPerSecond:    2 << 20,
		ReservationTTL:        10 * time.Minute,
		MaxReservations:       10000,
		MaxSessions:           4096,
		MaxSessionsPerPeer:    16,
		ReservationsPerSecond: 20,
		ReservationBurst:      40,
		HandshakesPerSecond:   100,
		IdleTimeout:           30 * time.Second,
	}
	if dev {
		c.Listen = "127.0.0.1:0"
	}
	return c
}

// Service runs a relay Server in a host under the section "relay".
type Service struct {
	reg     Registrations
	enabled bool
	srv     atomic.Pointer[Server]
	addr    netip.AddrPort
}

// NewService returns an unstarted relay service. reg (may be nil) admits
// registered nodes; enabled is the default of the section's "enabled".
func NewService(reg Registrations, enabled bool) *Service {
	return &Service{reg: reg, enabled: enabled}
}

// Name implements host.Service.
func (s *Service) Name() string { return "relay" }

// Server returns the running relay, or nil.
func (s *Service) Server() *Server { return s.srv.Load() }

// Addr returns the UDP address once started.
func (s *Service) Addr() netip.AddrPort { return s.addr }

// Start implements host.Service.
func (s *Service) Start(_ context.Context, h host.Handle) error {
	c := DefaultServiceConfig(h.Config().Dev, s.enabled)
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return err
	}
	if !c.Enabled {
		h.Logger().Debug("relay off (relay.enabled: false)")
		return nil
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	errs = append(errs, sec.CheckDurations(30*24*time.Hour, map[string]time.Duration{
		"reservationTTL": c.ReservationTTL, "idleTimeout": c.IdleTimeout,
	}))
	if c.SessionMaxDuration < 0 {
		errs = append(errs, sec.Errorf("sessionMaxDuration", "must not be negative (0: unlimited)"))
	}
	allow, err := admission.ParseIDs(c.Allow)
	if err != nil {
		errs = append(errs, sec.Errorf("allow", err.Error()))
	}
	deny, err := admission.ParseIDs(c.Deny)
	if err != nil {
		errs = append(errs, sec.Errorf("deny", err.Error()))
	}
	if c.MaxReservations < 1 || c.MaxSessions < 1 || c.MaxSessionsPerPeer < 1 || c.ReservationsPerSecond <= 0 ||
		c.ReservationBurst < 1 || c.HandshakesPerSecond <= 0 || c.PeerBytesPerSecond < 0 {
		errs = append(errs, sec.Errorf("maxReservations", "maxReservations, maxSessions, maxSessionsPerPeer, reservationsPerSecond, reservationBurst and handshakesPerSecond must be positive, peerBytesPerSecond not negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	policy := &admission.Policy{Allow: allow, Deny: deny, All: c.AdmitAll, Refusal: "node id is not admitted to this relay"}
	if s.reg != nil {
		policy.Registry = s.reg
	}
	if policy.AdmitsNobody() {
		h.Logger().Warn("relay admits nobody: set relay.allow or relay.admitAll")
	}
	admit := policy.Admit
	srv := NewServer(h.Identity(), Config{
		Admit: admit,
		Session: Limits{
			BytesPerSecond: c.SessionBytesPerSecond, MaxBytes: c.SessionMaxBytes, MaxDuration: c.SessionMaxDuration,
		},
		PeerBytesPerSecond: c.PeerBytesPerSecond, ReservationTTL: c.ReservationTTL,
		MaxReservations: c.MaxReservations, MaxSessions: c.MaxSessions, MaxSessionsPerPeer: c.MaxSessionsPerPeer,
		ReservationsPerSecond: c.ReservationsPerSecond, ReservationBurst: c.ReservationBurst,
		HandshakesPerSecond: c.HandshakesPerSecond, HandshakeBurst: int(2 * c.HandshakesPerSecond),
		IdleTimeout: c.IdleTimeout, Logger: h.Logger(),
	})
	addr, err := srv.Listen(c.Listen)
	if err != nil {
		return err
	}
	s.addr = addr
	s.srv.Store(srv)
	m := h.Metrics()
	counts := func(i int) func() float64 {
		return func() float64 {
			p, r, n := srv.Counts()
			return float64([]int{p, r, n}[i])
		}
	}
	m.Gauge("peers", counts(0))
	m.Gauge("reservations", counts(1))
	m.Gauge("sessions", counts(2))
	st := &srv.Stats
	for name, v := range map[string]*atomic.Uint64{
		"forwarded_packets": &st.Forwarded, "forwarded_bytes": &st.ForwardedBytes,
		"dropped_malformed": &st.Malformed, "dropped_unknown": &st.Unknown, "dropped_spoofed": &st.Spoofed,
		"dropped_rate": &st.RateDropped, "sessions_cut": &st.Cut, "refused": &st.Refused,
	} {
		m.Gauge(name, func() float64 { return float64(v.Load()) })
	}
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("listen", addr.String())
	}
	h.Logger().Info("relay ready", "udp", addr.String(), "id", h.Identity().ID())
	return nil
}

// Stop implements host.Service.
func (s *Service) Stop(context.Context) error {
	if srv := s.srv.Load(); srv != nil {
		return srv.Close()
	}
	return nil
}
