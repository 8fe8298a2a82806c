// Package portmap asks the home gateway to forward a UDP port to this node,
// with whichever of PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP IGD the
// gateway speaks, and keeps the mapping alive until Close deletes it.
//
// It exists because a mapped port turns a node behind a NAT into one that
// peers can dial directly (no punching, no relay), and a node with a mapping
// can even relay for others. The three protocols are tried at once and the
// protocols are probed at once (a gateway often speaks several; trying each
// in turn would make start-up as slow as the slowest silence) and the most
// preferred one that answers (PCP, then NAT-PMP, then UPnP) maps the port.
// Mappings are renewed at half their lifetime and deleted on Close.
//
// NAT-PMP uses github.com/jackpal/go-nat-pmp and UPnP github.com/huin/goupnp;
// PCP is written here (see pcp.go). All only reach the nearest NAT: behind a
// carrier-grade NAT a mapping is granted but useless, which reflexive
// address discovery (transport/stun) reveals.
package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Protocol names a port mapping protocol.
type Protocol string

// The protocols.
const (
	PCP    Protocol = "pcp"
	NATPMP Protocol = "nat-pmp"
	UPnP   Protocol = "upnp"
)

// AllProtocols is the default set, in order of preference for reporting.
var AllProtocols = []Protocol{PCP, NATPMP, UPnP}

// Mapping is a granted port mapping.
type Mapping struct {
	Protocol Protocol
	External netip.AddrPort // what peers dial
	Internal netip.AddrPort // this host's LAN address and port
	Lifetime time.Duration  // as granted
}

func (m Mapping) String() string {
	return fmt.Sprintf("%s %s -> %s for %s", m.Protocol, m.External, m.Internal, m.Lifetime)
}

// Config says what to map and where.
type Config struct {
	// Port is the local UDP port to map (the node's shared socket).
	Port uint16
	// Gateway is the gateway to ask; zero: the default IPv4 gateway.
	Gateway netip.Addr
	// Protocols to try (default AllProtocols).
	Protocols []Protocol
	// Lifetime requested (default 2 h); renewed at half of what is granted.
	Lifetime time.Duration
	// Timeout bounds the first attempt (default 3 s: SSDP alone takes 2 s).
	Timeout time.Duration
	// OnChange is called (from the renewal goroutine) when a renewal
	// yields a different mapping, or when it is lost (zero Mapping).
	OnChange func(Mapping)
	Logger   *slog.Logger
}

// ErrNoGateway is wrapped when no protocol granted a mapping.
var ErrNoGateway = errors.New("portmap: no gateway granted a mapping")

// client is one protocol's way to map a port.
type client interface {
	protocol() Protocol
	// probe tells whether the gateway speaks the protocol; it maps nothing.
	probe(ctx context.Context) error
	mapPort(ctx context.Context, internal uint16, lifetime time.Duration) (Mapping, error)
	// unmap deletes what the client mapped (nothing if it never did).
	unmap(ctx context.Context) error
}

// Mapper holds one mapping and renews it.
type Mapper struct {
	cfg    Config
	log    *slog.Logger
	mu     sync.Mutex
	c      client
	cur    Mapping
	cancel context.CancelFunc
	wg     sync.WaitGroup // renewal
}

// Map finds the gateway, asks every protocol at once, keeps the first
// mapping granted (deleting any other that is granted too) and renews it
// until Close.
func Map(ctx context.Context, cfg Config) (*Mapper, error) {
	if cfg.Port == 0 {
		return nil, errors.New("portmap: no port to map")
	}
	if len(cfg.Protocols) == 0 {
		cfg.Protocols = AllProtocols
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 2 * time.Hour
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	gw := cfg.Gateway
	if !gw.IsValid() {
		var err error
		if gw, err = DefaultGateway(); err != nil {
			return nil, err
		}
	}
	local, err := localAddrTowards(gw)
	if err != nil {
		return nil, err
	}
	var clients []client
	for _, p := range cfg.Protocols {
		switch p {
		case PCP:
			clients = append(clients, newPCPClient(gw, local, cfg.Port))
		case NATPMP:
			clients = append(clients, &natpmpClient{gw: gw, local: local})
		case UPnP:
			clients = append(clients, &upnpClient{gw: gw, local: local})
		default:
			return nil, fmt.Errorf("portmap: unknown protocol %q", p)
		}
	}
	m := &Mapper{cfg: cfg, log: log}
	if err := m.race(ctx, clients); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.wg.Add(1)
	go m.renew(rctx)
	return m, nil
}

// probeGrace is how long a less preferred protocol that answered waits for
// a more preferred one that has not answered yet.
const probeGrace = 300 * time.Millisecond

// race probes every protocol at once without mapping anything (a PCP
// deletion of nothing, a NAT-PMP public address request, an SSDP search),
// then maps with the most preferred protocol that answered. Only one
// protocol ever maps: the protocols share one table in the gateway
// (miniupnpd's), so two mappings of one port by different protocols would
// fight over the same entry (a PCP deletion is refused once NAT-PMP has
// touched it).
func (m *Mapper) race(ctx context.Context, clients []client) error {
	pctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel() // ends the probes still running
	type probed struct {
		i   int
		err error
	}
	results := make(chan probed, len(clients))
	for i, c := range clients {
		go func() { results <- probed{i, c.probe(pctx)} }()
	}
	const pending, ok, failed = 0, 1, 2
	state := make([]int, len(clients))
	errs := make([]error, len(clients))
	var grace <-chan time.Time
	graceOver := false
	for {
		pick, wait := -1, false
		for i := range clients {
			if state[i] == ok {
				pick = i
				break
			}
			if state[i] == pending && !graceOver {
				wait = true
				break
			}
		}
		if pick >= 0 {
			c := clients[pick]
			mctx, mcancel := context.WithTimeout(ctx, m.cfg.Timeout)
			mp, err := c.mapPort(mctx, m.cfg.Port, m.cfg.Lifetime)
			mcancel()
			if err == nil {
				m.c, m.cur = c, mp
				m.log.Info("port mapped", "protocol", mp.Protocol, "external", mp.External, "internal", mp.Internal, "lifetime", mp.Lifetime)
				return nil
			}
			state[pick], errs[pick] = failed, err
			continue
		}
		if !wait {
			all := true
			for _, st := range state {
				all = all && st == failed
			}
			if all || graceOver {
				var es []error
				for i, e := range errs {
					if e != nil {
						es = append(es, fmt.Errorf("%s: %w", clients[i].protocol(), e))
					}
				}
				return fmt.Errorf("%w: %w", ErrNoGateway, errors.Join(es...))
			}
		}
		select {
		case r := <-results:
			if r.err != nil {
				state[r.i], errs[r.i] = failed, r.err
			} else {
				state[r.i] = ok
				if grace == nil {
					grace = time.After(probeGrace)
				}
			}
		case <-grace:
			graceOver, grace = true, nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Mapping returns the current mapping (zero once lost).
func (m *Mapper) Mapping() Mapping {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur
}

// renew refreshes the mapping at half its lifetime; a failed renewal is
// retried after 5 s, 10 s... until the mapping would have expired, then
// reported lost and retried at the same pace.
func (m *Mapper) renew(ctx context.Context) {
	defer m.wg.Done()
	m.mu.Lock()
	cur := m.cur
	m.mu.Unlock()
	expires := time.Now().Add(cur.Lifetime)
	wait := max(cur.Lifetime/2, time.Second)
	retry := 5 * time.Second
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		actx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		next, err := m.c.mapPort(actx, m.cfg.Port, m.cfg.Lifetime)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			m.log.Warn("port mapping renewal failed", "protocol", m.c.protocol(), "err", err)
			if time.Now().After(expires) && cur.External.IsValid() {
				cur = Mapping{}
				m.set(cur)
			}
			wait, retry = retry, min(2*retry, 5*time.Minute)
			continue
		}
		retry = 5 * time.Second
		expires = time.Now().Add(next.Lifetime)
		wait = max(next.Lifetime/2, time.Second)
		if next != cur {
			cur = next
			m.set(cur)
		}
	}
}

func (m *Mapper) set(mp Mapping) {
	m.mu.Lock()
	m.cur = mp
	m.mu.Unlock()
	m.log.Info("port mapping changed", "mapping", mp.String())
	if m.cfg.OnChange != nil {
		m.cfg.OnChange(mp)
	}
}

// Close stops renewing and deletes the mapping at the gateway (within ctx).
func (m *Mapper) Close(ctx context.Context) error {
	m.cancel()
	m.wg.Wait()
	m.mu.Lock()
	cur := m.cur
	m.cur = Mapping{}
	m.mu.Unlock()
	if err := m.c.unmap(ctx); err != nil {
		return err
	}
	m.log.Info("port mapping deleted", "protocol", cur.Protocol, "external", cur.External)
	return nil
}

// localAddrTowards is this host's address on the route to gw (no packet is
// sent: connecting a UDP socket only picks the route).
func localAddrTowards(gw netip.Addr) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, pcpPort)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: no route to gateway %s: %w", gw, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}
