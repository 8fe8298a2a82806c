package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/admission"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/transport/udpmux"
)

// maxRemembered bounds the node addresses kept for waking after a restart.
const maxRemembered = 100_000

type storeTx = store.Tx

// Registrations tells whether a node id owns names here; the registry
// implements it. By default only such nodes may hold a tunnel.
type Registrations interface {
	Registered(id identity.ID) bool
}

// ServerServiceConfig is the "tunnel" section of a supernode.
type ServerServiceConfig struct {
	Listen string `yaml:"listen"` // UDP host:port, ":8090"; dev: 127.0.0.1:0
	// ListenTCP is the TLS-over-TCP fallback endpoint: empty for the host
	// and port number the UDP endpoint got, "off" for none.
	ListenTCP           string  `yaml:"listenTCP"`
	MaxStreamsPerNode   int64   `yaml:"maxStreamsPerNode"`   // 10000
	BytesPerSecond      float64 `yaml:"bytesPerSecond"`      // per node, 0: unlimited
	HandshakesPerSecond float64 `yaml:"handshakesPerSecond"` // 100
	HandshakeBurst      int     `yaml:"handshakeBurst"`      // 200
	// Allow admits these node ids whether registered or not; Deny refuses
	// these always. AdmitAll admits every node (open relays, tests).
	Allow    []string `yaml:"allow"`
	Deny     []string `yaml:"deny"`
	AdmitAll bool     `yaml:"admitAll"`
	// Ports are the port-mapped endpoints (ports.go).
	Ports PortsConfig `yaml:"ports"`
	// DataConnsPerNode bounds the idle data connections one node may
	// hold at the TCP endpoint for its TLS passthrough visitors
	// (dataconn.go); 16, 0: refuse them.
	DataConnsPerNode int `yaml:"dataConnsPerNode"`
}

// PortsConfig is the "ports" part of the "tunnel" section.
type PortsConfig struct {
	// Range is "min-max" (default "20000-22000"), or "off".
	Range string `yaml:"range"`
	// PerNode bounds the ports one node holds, TCP and UDP together (4).
	PerNode int `yaml:"perNode"`
	// Hold keeps a node's ports after its tunnel went away (5m).
	Hold time.Duration `yaml:"hold"`
	// Bind is the address mapped ports listen on ("": all; dev 127.0.0.1).
	Bind string `yaml:"bind"`
	// UDPFlows bounds the visitors of one UDP port (1024); UDPIdle ends
	// a quiet flow (60s).
	UDPFlows int           `yaml:"udpFlows"`
	UDPIdle  time.Duration `yaml:"udpIdle"`
	// TCPConns bounds the visitors of one TCP port at once (1024),
	// TCPConnsPerSource those from one IPv4 address or IPv6 /64 (64).
	TCPConns          int `yaml:"tcpConns"`
	TCPConnsPerSource int `yaml:"tcpConnsPerSource"`
}

// parseRange parses "min-max" or "off" (0, 0).
func parseRange(s string) (uint16, uint16, error) {
	if s == "off" {
		return 0, 0, nil
	}
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.ParseUint(lo, 10, 16)
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || a == 0 || b < a {
		return 0, 0, fmt.Errorf("range %q: want min-max with 1 <= min <= max <= 65535, or off", s)
	}
	return uint16(a), uint16(b), nil
}

// ServerService runs a Server in a host under the section "tunnel".
type ServerService struct {
	reg  Registrations
	srv  atomic.Pointer[Server]
	addr net.Addr
}

// NewServerService returns an unstarted service admitting the nodes reg
// knows (reg may be nil: then only the allow list, or admitAll).
func NewServerService(reg Registrations) *ServerService { return &ServerService{reg: reg} }

// Name implements host.Service.
func (s *ServerService) Name() string { return "tunnel" }

// Addr returns the UDP listen address once started.
func (s *ServerService) Addr() net.Addr { return s.addr }

// Server returns the running server, or nil before Start.
func (s *ServerService) Server() *Server { return s.srv.Load() }

// Start implements host.Service.
func (s *ServerService) Start(ctx context.Context, h host.Handle) error {
	c := ServerServiceConfig{Listen: ":8090", MaxStreamsPerNode: 10000, HandshakesPerSecond: 100, HandshakeBurst: 200, DataConnsPerNode: 16,
		Ports: PortsConfig{Range: "20000-22000", PerNode: 4, Hold: 5 * time.Minute, UDPFlows: 1024, UDPIdle: time.Minute,
			TCPConns: 1024, TCPConnsPerSource: 64}}
	if h.Config().Dev {
		c.Listen = "127.0.0.1:0"
		c.Ports.Bind = "127.0.0.1"
	}
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return err
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("listen", c.Listen))
	if c.ListenTCP != "" && c.ListenTCP != "off" {
		errs = append(errs, sec.CheckHostPort("listenTCP", c.ListenTCP))
	}
	allow, err := admission.ParseIDs(c.Allow)
	if err != nil {
		errs = append(errs, sec.Errorf("allow", err.Error()))
	}
	deny, err := admission.ParseIDs(c.Deny)
	if err != nil {
		errs = append(errs, sec.Errorf("deny", err.Error()))
	}
	if c.MaxStreamsPerNode < 1 || c.HandshakesPerSecond <= 0 || c.HandshakeBurst < 1 || c.BytesPerSecond < 0 {
		errs = append(errs, sec.Errorf("maxStreamsPerNode", "maxStreamsPerNode, handshakesPerSecond and handshakeBurst must be positive, bytesPerSecond not negative"))
	}
	if c.DataConnsPerNode < 0 || c.DataConnsPerNode > 1024 {
		errs = append(errs, sec.Errorf("dataConnsPerNode", "dataConnsPerNode: 0 (none) to 1024"))
	}
	dataPerNode := c.DataConnsPerNode
	if dataPerNode == 0 {
		dataPerNode = -1 // ServerConfig: negative refuses
	}
	pmin, pmax, err := parseRange(c.Ports.Range)
	if err != nil {
		errs = append(errs, sec.Errorf("ports", err.Error()))
	}
	if c.Ports.PerNode < 1 || c.Ports.UDPFlows < 1 || c.Ports.TCPConns < 1 || c.Ports.TCPConnsPerSource < 1 {
		errs = append(errs, sec.Errorf("ports", "perNode, udpFlows, tcpConns and tcpConnsPerSource must be at least 1"))
	}
	errs = append(errs, sec.CheckDurations(24*time.Hour, map[string]time.Duration{"ports.hold": c.Ports.Hold, "ports.udpIdle": c.Ports.UDPIdle}))
	if c.Ports.Bind != "" {
		if _, err := netip.ParseAddr(c.Ports.Bind); err != nil {
			errs = append(errs, sec.Errorf("ports", fmt.Sprintf("bind %q: want an IP address or empty", c.Ports.Bind)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	policy := &admission.Policy{Allow: allow, Deny: deny, All: c.AdmitAll, Refusal: "node id owns no name here and is not on the allow list"}
	if s.reg != nil {
		policy.Registry = s.reg
	}
	admit := policy.Admit
	store := h.Storage()
	log := h.Logger()
	srv := NewServer(h.Identity(), ServerConfig{
		OnUp: func(id identity.ID, addr net.Addr) {
			ua, ok := addr.(*net.UDPAddr)
			if !ok {
				return
			}
			err := store.Batch(func(tx *storeTx) error {
				if tx.Get(id[:]) == nil && tx.Len() >= maxRemembered {
					return nil
				}
				return tx.Put(id[:], []byte(ua.AddrPort().String()))
			})
			if err != nil {
				log.Warn("tunnel: cannot remember node address", "err", err)
			}
		},
		Admit: admit, MaxStreamsPerNode: c.MaxStreamsPerNode, BytesPerSecond: c.BytesPerSecond,
		HandshakesPerSecond: c.HandshakesPerSecond, HandshakeBurst: c.HandshakeBurst, Logger: h.Logger(),
		DataConnsPerNode: dataPerNode,
		Ports: PortConfig{Min: pmin, Max: pmax, PerNode: c.Ports.PerNode, Hold: c.Ports.Hold, Bind: c.Ports.Bind,
			UDPFlows: c.Ports.UDPFlows, UDPIdle: c.Ports.UDPIdle, TCPConns: c.Ports.TCPConns, TCPConnsPerSource: c.Ports.TCPConnsPerSource,
			Clock: h.Clock(), Leases: NewStoreLeases(store)},
	})
	addr, err := srv.Listen(c.Listen)
	if err != nil {
		return err
	}
	var tcpAddr net.Addr
	if c.ListenTCP != "off" {
		want := c.ListenTCP
		if want == "" { // the UDP endpoint's host and port number
			want = addr.String()
		}
		tcpAddr, err = srv.ListenTCP(want)
		if err != nil && c.ListenTCP == "" && h.Config().Dev {
			// dev: the UDP port was picked at random and its number is
			// taken on TCP; any port will do.
			host, _, _ := net.SplitHostPort(want)
			tcpAddr, err = srv.ListenTCP(net.JoinHostPort(host, "0"))
		}
		if err != nil {
			srv.Close()
			return err
		}
	}
	s.addr = addr
	s.srv.Store(srv)
	var known []netip.AddrPort
	_ = store.View(func(tx *storeTx) error {
		return tx.ForEach(nil, func(_, v []byte) error {
			if ap, err := netip.ParseAddrPort(string(v)); err == nil {
				known = append(known, ap)
			}
			return nil
		})
	})
	srv.Wake(known)
	m := h.Metrics()
	m.Gauge("tunnels", func() float64 { return float64(srv.Len()) })
	for _, tr := range []string{TransportQUIC, TransportTCP} {
		m.Gauge("tunnels_live", func() float64 { return float64(srv.LenTransport(tr)) }, "transport", tr)
	}
	m.Gauge("tunnels_accepted", func() float64 { return float64(srv.Accepted.Load()) })
	m.Gauge("handshakes_refused", func() float64 { return float64(srv.Refused.Load()) })
	m.Gauge("data_conns_accepted", func() float64 { return float64(srv.DataConns.Load()) })
	m.Gauge("data_conns_refused", func() float64 { return float64(srv.DataRefused.Load()) })
	m.Gauge("data_conns_used", func() float64 { return float64(srv.DataUsed.Load()) })
	m.Gauge("data_conns_stale", func() float64 { return float64(srv.DataStale.Load()) })
	if srv.ports != nil {
		m.Gauge("ports_leased", func() float64 { return float64(len(srv.Leases())) })
		m.Gauge("ports_granted", func() float64 { return float64(srv.ports.Granted.Load()) })
		m.Gauge("ports_refused", func() float64 { return float64(srv.ports.Refused.Load()) })
	}
	if adv, ok := h.(host.Advertiser); ok {
		adv.Advertise("listen", addr.String())
		if tcpAddr != nil {
			adv.Advertise("listenTCP", tcpAddr.String())
		}
	}
	h.Logger().Info("tunnel endpoint ready", "udp", addr.String(), "tcp", tcpAddr, "id", h.Identity().ID())
	return nil
}

// Stop implements host.Service.
func (s *ServerService) Stop(context.Context) error {
	if srv := s.srv.Load(); srv != nil {
		return srv.Close()
	}
	return nil
}

// Has reports whether node id holds a tunnel here.
func (s *ServerService) Has(id identity.ID) bool {
	srv := s.srv.Load()
	return srv != nil && srv.Has(id)
}

// Dial opens a visitor stream on node id's tunnel; see Server.Dial.
func (s *ServerService) Dial(ctx context.Context, id identity.ID, service string, visitor net.Addr) (net.Conn, error) {
	srv := s.srv.Load()
	if srv == nil {
		return nil, ErrNoTunnel
	}
	return srv.Dial(ctx, id, service, visitor)
}

// ClientServiceConfig is the "tunnel-client" section of a node.
type ClientServiceConfig struct {
	// Supernode is the supernode's tunnel endpoint (UDP host:port) and
	// SupernodeID its node id; both empty: no tunnel.
	Supernode   string `yaml:"supernode"`
	SupernodeID string `yaml:"supernodeID"`
	// SupernodeTCP is the supernode's TCP fallback endpoint; empty: the
	// same host:port as supernode. Supernodes use their addr on TCP.
	SupernodeTCP string `yaml:"supernodeTCP"`
	// Transport, for every supernode: auto (QUIC, TCP when QUIC does not
	// connect within 1.5 s, back to QUIC when it works again), quic, or
	// tcp.
	Transport string `yaml:"transport"`
	// Supernodes are more supernodes to hold a tunnel to at the same
	// time (primary, secondary...): the node stays reachable through any
	// one that is alive, and the federation forwards visitors of the
	// others to one of them.
	Supernodes []SupernodeConfig `yaml:"supernodes"`
	// Services are the local services reachable through the tunnel. The
	// supernode's SNI gateway asks for "https".
	Services []struct {
		Name          string `yaml:"name"`
		Addr          string `yaml:"addr"`
		ProxyProtocol bool   `yaml:"proxyProtocol"`
	} `yaml:"services"`
	// Ports asks each supernode for public ports for services of the
	// list above: [{service: ssh, proto: tcp}]; proto tcp (default) or
	// udp. Each supernode grants its own port (metric port{supernode}).
	Ports []struct {
		Service string `yaml:"service"`
		Proto   string `yaml:"proto"`
	} `yaml:"ports"`
	// DataConns is how many idle data connections the node keeps at each
	// supernode's TCP endpoint for TLS passthrough visitors (4; 0: none):
	// those visitors then skip the tunnel's second encryption and are
	// spliced at both ends, at the cost of an observer on the node's path
	// seeing their TLS records (dataconn.go says what exactly).
	DataConns *int `yaml:"dataConns"`
}

// SupernodeConfig is one supernode's tunnel endpoint and node id.
type SupernodeConfig struct {
	Addr string `yaml:"addr"` // UDP host:port
	ID   string `yaml:"id"`
}

// ClientService runs one Client per configured supernode in a host under
// the section "tunnel-client".
type ClientService struct {
	cli  atomic.Pointer[Client] // the first
	clis []*Client
	// Shared, if set, returns the node's shared UDP socket (the nat
	// service's, which must start first); the tunnels then run on it.
	Shared func() *udpmux.Mux
}

// NewClientService returns an unstarted service.
func NewClientService() *ClientService { return &ClientService{} }

// Name implements host.Service.
func (s *ClientService) Name() string { return "tunnel-client" }

// Client returns the running client of the first supernode, or nil.
func (s *ClientService) Client() *Client { return s.cli.Load() }

// Clients returns the running clients, one per supernode.
func (s *ClientService) Clients() []*Client { return s.clis }

// Start implements host.Service: it starts the reconnect loop and returns
// at once; the tunnel comes up in the background.
func (s *ClientService) Start(_ context.Context, h host.Handle) error {
	var c ClientServiceConfig
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return err
	}
	if c.Supernode == "" && c.SupernodeID == "" && len(c.Supernodes) == 0 {
		h.Logger().Info("no supernode configured; no tunnel")
		return nil
	}
	var errs []error
	if c.SupernodeTCP != "" {
		errs = append(errs, sec.CheckHostPort("supernodeTCP", c.SupernodeTCP))
	}
	switch c.Transport {
	case "", "auto", TransportQUIC, TransportTCP:
	default:
		errs = append(errs, sec.Errorf("transport", fmt.Sprintf("transport %q: use auto, quic or tcp", c.Transport)))
	}
	type target struct {
		addr, tcp string
		id        identity.ID
	}
	var targets []target
	add := func(field, addr, tcp, idField, id string) {
		errs = append(errs, sec.CheckHostPort(field, addr))
		sid, err := identity.ParseID(id)
		if err != nil {
			errs = append(errs, sec.Errorf(idField, err.Error()))
		}
		targets = append(targets, target{addr, tcp, sid})
	}
	if c.Supernode != "" || c.SupernodeID != "" {
		add("supernode", c.Supernode, c.SupernodeTCP, "supernodeID", c.SupernodeID)
	}
	for i, sn := range c.Supernodes {
		add(fmt.Sprintf("supernodes[%d].addr", i), sn.Addr, "", fmt.Sprintf("supernodes[%d].id", i), sn.ID)
	}
	services := map[string]Local{}
	for _, svc := range c.Services {
		if !validService(svc.Name) {
			errs = append(errs, sec.Errorf("services", fmt.Sprintf("service name %q: use 1-63 of [a-z0-9-_.]", svc.Name)))
		}
		errs = append(errs, sec.CheckHostPort("services", svc.Addr))
		services[svc.Name] = Local{Addr: svc.Addr, ProxyProtocol: svc.ProxyProtocol}
	}
	var ports []PortSpec
	for _, p := range c.Ports {
		if p.Proto == "" {
			p.Proto = "tcp"
		}
		proto, err := ParseProto(p.Proto)
		if err != nil {
			errs = append(errs, sec.Errorf("ports", err.Error()))
		}
		if _, ok := services[p.Service]; !ok {
			errs = append(errs, sec.Errorf("ports", fmt.Sprintf("service %q is not in services", p.Service)))
		}
		spec := PortSpec{Service: p.Service, Proto: proto}
		if slices.Contains(ports, spec) {
			errs = append(errs, sec.Errorf("ports", fmt.Sprintf("%s/%s listed twice", p.Service, p.Proto)))
		}
		ports = append(ports, spec)
	}
	if len(ports) > maxControlPerStream {
		errs = append(errs, sec.Errorf("ports", fmt.Sprintf("at most %d ports", maxControlPerStream)))
	}
	dataConns := 4
	if c.DataConns != nil {
		dataConns = *c.DataConns
	}
	if dataConns < 0 || dataConns > 64 {
		errs = append(errs, sec.Errorf("dataConns", "dataConns: 0 (none) to 64"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var shared *udpmux.Mux
	if s.Shared != nil {
		shared = s.Shared()
	}
	for _, t := range targets {
		cli := NewClient(h.Identity(), ClientConfig{Supernode: t.addr, SupernodeID: t.id, SupernodeTCP: t.tcp, Transport: c.Transport,
			Services: services, Shared: shared, Logger: h.Logger(), Ports: ports, Clock: h.Clock(), DataConns: dataConns})
		if err := cli.Start(); err != nil {
			for _, c := range s.clis {
				c.Close()
			}
			s.clis = nil
			return err
		}
		s.clis = append(s.clis, cli)
	}
	s.cli.Store(s.clis[0])
	clis := s.clis
	m := h.Metrics()
	m.Gauge("up", func() float64 {
		n := 0
		for _, cli := range clis {
			if cli.Up() {
				n++
			}
		}
		return float64(n)
	})
	m.Gauge("connects", func() float64 {
		var n int64
		for _, cli := range clis {
			n += cli.Connects.Load()
		}
		return float64(n)
	})
	for _, tr := range []string{TransportQUIC, TransportTCP} {
		m.Gauge("up_transport", func() float64 { // tunnels up on tr
			n := 0
			for _, cli := range clis {
				if cli.Transport() == tr {
					n++
				}
			}
			return float64(n)
		}, "transport", tr)
	}
	for _, cli := range clis {
		for _, spec := range ports {
			// The granted public port at this supernode, 0 until granted
			// (or when refused).
			m.Gauge("port", func() float64 {
				for _, g := range cli.Grants() {
					if g.Service == spec.Service && g.Proto == spec.Proto {
						return float64(g.Port)
					}
				}
				return 0
			}, "service", spec.Service, "proto", spec.Proto.String(), "supernode", cli.cfg.Supernode)
		}
	}
	return nil
}

// Stop implements host.Service.
func (s *ClientService) Stop(context.Context) error {
	var errs []error
	for _, cli := range s.clis {
		errs = append(errs, cli.Close())
	}
	return errors.Join(errs...)
}
