package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
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

func parseIDs(ids []string) (map[identity.ID]bool, error) {
	m := map[identity.ID]bool{}
	for _, v := range ids {
		id, err := identity.ParseID(v)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", v, err)
		}
		m[id] = true
	}
	return m, nil
}

// Start implements host.Service.
func (s *ServerService) Start(ctx context.Context, h host.Handle) error {
	c := ServerServiceConfig{Listen: ":8090", MaxStreamsPerNode: 10000, HandshakesPerSecond: 100, HandshakeBurst: 200}
	if h.Config().Dev {
		c.Listen = "127.0.0.1:0"
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
	allow, err := parseIDs(c.Allow)
	if err != nil {
		errs = append(errs, sec.Errorf("allow", err.Error()))
	}
	deny, err := parseIDs(c.Deny)
	if err != nil {
		errs = append(errs, sec.Errorf("deny", err.Error()))
	}
	if c.MaxStreamsPerNode < 1 || c.HandshakesPerSecond <= 0 || c.HandshakeBurst < 1 || c.BytesPerSecond < 0 {
		errs = append(errs, sec.Errorf("maxStreamsPerNode", "maxStreamsPerNode, handshakesPerSecond and handshakeBurst must be positive, bytesPerSecond not negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	admit := func(id identity.ID) error {
		switch {
		case deny[id]:
			return errors.New("node id is on the deny list")
		case allow[id], c.AdmitAll:
			return nil
		case s.reg != nil && s.reg.Registered(id):
			return nil
		}
		return errors.New("node id owns no name here and is not on the allow list")
	}
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
	// same host:port as supernode.
	SupernodeTCP string `yaml:"supernodeTCP"`
	// Transport: auto (QUIC, TCP when QUIC does not connect within 1.5 s,
	// back to QUIC when it works again), quic, or tcp.
	Transport string `yaml:"transport"`
	// Services are the local services reachable through the tunnel. The
	// supernode's SNI gateway asks for "https".
	Services []struct {
		Name          string `yaml:"name"`
		Addr          string `yaml:"addr"`
		ProxyProtocol bool   `yaml:"proxyProtocol"`
	} `yaml:"services"`
}

// ClientService runs a Client in a host under the section "tunnel-client".
type ClientService struct {
	cli atomic.Pointer[Client]
}

// NewClientService returns an unstarted service.
func NewClientService() *ClientService { return &ClientService{} }

// Name implements host.Service.
func (s *ClientService) Name() string { return "tunnel-client" }

// Client returns the running client, or nil.
func (s *ClientService) Client() *Client { return s.cli.Load() }

// Start implements host.Service: it starts the reconnect loop and returns
// at once; the tunnel comes up in the background.
func (s *ClientService) Start(_ context.Context, h host.Handle) error {
	var c ClientServiceConfig
	sec := h.Section()
	if err := sec.Decode(&c); err != nil {
		return err
	}
	if c.Supernode == "" && c.SupernodeID == "" {
		h.Logger().Info("no supernode configured; no tunnel")
		return nil
	}
	var errs []error
	errs = append(errs, sec.CheckHostPort("supernode", c.Supernode))
	if c.SupernodeTCP != "" {
		errs = append(errs, sec.CheckHostPort("supernodeTCP", c.SupernodeTCP))
	}
	switch c.Transport {
	case "", "auto", TransportQUIC, TransportTCP:
	default:
		errs = append(errs, sec.Errorf("transport", fmt.Sprintf("transport %q: use auto, quic or tcp", c.Transport)))
	}
	sid, err := identity.ParseID(c.SupernodeID)
	if err != nil {
		errs = append(errs, sec.Errorf("supernodeID", err.Error()))
	}
	services := map[string]Local{}
	for _, svc := range c.Services {
		if !validService(svc.Name) {
			errs = append(errs, sec.Errorf("services", fmt.Sprintf("service name %q: use 1-63 of [a-z0-9-_.]", svc.Name)))
		}
		errs = append(errs, sec.CheckHostPort("services", svc.Addr))
		services[svc.Name] = Local{Addr: svc.Addr, ProxyProtocol: svc.ProxyProtocol}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	cli := NewClient(h.Identity(), ClientConfig{Supernode: c.Supernode, SupernodeID: sid, SupernodeTCP: c.SupernodeTCP,
		Transport: c.Transport, Services: services, Logger: h.Logger()})
	if err := cli.Start(); err != nil {
		return err
	}
	s.cli.Store(cli)
	m := h.Metrics()
	m.Gauge("up", func() float64 {
		if cli.Up() {
			return 1
		}
		return 0
	})
	m.Gauge("connects", func() float64 { return float64(cli.Connects.Load()) })
	for _, tr := range []string{TransportQUIC, TransportTCP} {
		m.Gauge("up_transport", func() float64 {
			if cli.Transport() == tr {
				return 1
			}
			return 0
		}, "transport", tr)
	}
	return nil
}

// Stop implements host.Service.
func (s *ClientService) Stop(context.Context) error {
	if cli := s.cli.Load(); cli != nil {
		return cli.Close()
	}
	return nil
}
