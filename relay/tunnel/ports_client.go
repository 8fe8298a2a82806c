package tunnel

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// PortSpec asks the supernode for a public port for a local service.
type PortSpec struct {
	Service string // a key of ClientConfig.Services
	Proto   Proto
}

// Grant is a public port the supernode mapped to a local service.
type Grant struct {
	Service  string
	Proto    Proto
	Port     uint16
	Endpoint string // supernode host:port, what visitors connect to
}

// Refusal is a port request the supernode refused.
type Refusal struct {
	Service string
	Proto   Proto
	Code    RefuseCode
	Reason  string
}

// clientPorts is the node side of mapped ports: it asks for them on each
// new tunnel and carries the UDP flows.
type clientPorts struct {
	c        *Client
	mu       sync.Mutex
	grants   map[PortSpec]Grant
	refusals map[PortSpec]Refusal
	byPort   map[uint16]PortSpec // UDP grants, for incoming datagrams
	flows    map[flowKey]*nodeFlow
	Dropped  atomic.Int64 // UDP datagrams dropped (no grant, flow cap, too large)
	changed  chan struct{}
}

type flowKey struct {
	port uint16
	flow uint32
}

// nodeFlow is one visitor flow: a local UDP socket connected to the
// service, whose replies go back on the tunnel.
type nodeFlow struct {
	lc   *net.UDPConn
	last atomic.Int64 // clock Unix ns of the last datagram either way
}

func newClientPorts(c *Client) *clientPorts {
	return &clientPorts{c: c, grants: map[PortSpec]Grant{}, refusals: map[PortSpec]Refusal{},
		byPort: map[uint16]PortSpec{}, flows: map[flowKey]*nodeFlow{}, changed: make(chan struct{})}
}

// Grants returns the ports the supernode mapped, sorted by port.
func (c *Client) Grants() []Grant {
	if c.ports == nil {
		return nil
	}
	c.ports.mu.Lock()
	defer c.ports.mu.Unlock()
	out := make([]Grant, 0, len(c.ports.grants))
	for _, g := range c.ports.grants {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b Grant) int { return int(a.Port) - int(b.Port) })
	return out
}

// Refusals returns the port requests the supernode refused on the latest
// tunnel.
func (c *Client) Refusals() []Refusal {
	if c.ports == nil {
		return nil
	}
	c.ports.mu.Lock()
	defer c.ports.mu.Unlock()
	out := make([]Refusal, 0, len(c.ports.refusals))
	for _, r := range c.ports.refusals {
		out = append(out, r)
	}
	return out
}

// PortsChanged returns a channel closed at the next change of Grants or
// Refusals, so a test or a service can wait for answers without polling.
func (c *Client) PortsChanged() <-chan struct{} {
	if c.ports == nil {
		return nil
	}
	c.ports.mu.Lock()
	defer c.ports.mu.Unlock()
	return c.ports.changed
}

func (p *clientPorts) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// attach runs for each new tunnel: it asks for the ports and, with UDP
// ports, reads the tunnel's datagrams. It returns when conn ends.
func (p *clientPorts) attach(ctx context.Context, conn *quic.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if slices.ContainsFunc(p.c.cfg.Ports, func(s PortSpec) bool { return s.Proto == ProtoUDP }) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.readDatagrams(ctx, conn)
		}()
	}
	if err := p.request(ctx, conn); err != nil && ctx.Err() == nil {
		p.c.log.Warn("tunnel: port request failed", "err", err)
	}
	<-conn.Context().Done()
	cancel()
	wg.Wait()
	p.mu.Lock()
	for k, f := range p.flows {
		f.lc.Close()
		delete(p.flows, k)
	}
	p.mu.Unlock()
}

// request sends every PortSpec on one control stream and records the
// answers.
func (p *clientPorts) request(ctx context.Context, conn *quic.Conn) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := conn.OpenStreamSync(sctx)
	if err != nil {
		// A supernode without port mapping accepts no streams.
		return fmt.Errorf("open control stream (does the supernode map ports?): %w", err)
	}
	defer st.CancelRead(0)
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	var out []byte
	for _, spec := range p.c.cfg.Ports {
		out, err = Control{Type: MsgPortRequest, Proto: spec.Proto, Service: spec.Service}.AppendBinary(out)
		if err != nil {
			st.CancelWrite(0)
			return err
		}
	}
	if _, err := st.Write(out); err != nil {
		return fmt.Errorf("write port requests: %w", err)
	}
	st.Close()
	host, _, _ := net.SplitHostPort(p.c.cfg.Supernode)
	for _, spec := range p.c.cfg.Ports {
		ans, err := ReadControl(st)
		if err != nil {
			return fmt.Errorf("read port answer: %w", err)
		}
		if ans.Service != spec.Service || ans.Proto != spec.Proto {
			return fmt.Errorf("answer for %s/%s, asked for %s/%s", ans.Service, ans.Proto, spec.Service, spec.Proto)
		}
		p.mu.Lock()
		if old, ok := p.grants[spec]; ok && old.Proto == ProtoUDP {
			delete(p.byPort, old.Port)
		}
		switch ans.Type {
		case MsgPortGrant:
			g := Grant{Service: spec.Service, Proto: spec.Proto, Port: ans.Port, Endpoint: net.JoinHostPort(host, fmt.Sprint(ans.Port))}
			p.grants[spec] = g
			delete(p.refusals, spec)
			if spec.Proto == ProtoUDP {
				p.byPort[ans.Port] = spec
			}
			p.c.log.Info("tunnel: public port mapped", "service", spec.Service, "proto", spec.Proto, "endpoint", g.Endpoint)
		default:
			delete(p.grants, spec)
			p.refusals[spec] = Refusal{Service: spec.Service, Proto: spec.Proto, Code: ans.Code, Reason: ans.Reason}
			p.c.log.Warn("tunnel: public port refused", "service", spec.Service, "proto", spec.Proto, "code", ans.Code, "reason", ans.Reason)
		}
		p.notifyLocked()
		p.mu.Unlock()
	}
	return nil
}

// readDatagrams passes the visitors' UDP payloads to the local services.
func (p *clientPorts) readDatagrams(ctx context.Context, conn *quic.Conn) {
	sweep := p.c.cfg.Clock.NewTimer(p.c.cfg.UDPIdle / 2)
	defer sweep.Stop()
	sweepDone := make(chan struct{})
	go func() {
		defer close(sweepDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sweep.C():
			}
			p.sweep()
			sweep.Reset(p.c.cfg.UDPIdle / 2)
		}
	}()
	defer func() { <-sweepDone }()
	for {
		b, err := conn.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		d, payload, err := ParseDatagram(b)
		if err != nil {
			p.Dropped.Add(1)
			continue
		}
		f := p.flow(ctx, conn, d)
		if f == nil {
			p.Dropped.Add(1)
			continue
		}
		f.last.Store(p.c.cfg.Clock.Now().UnixNano())
		f.lc.Write(payload)
	}
}

// flow returns the local socket of d's flow, opening it if the flow is
// new and there is room.
func (p *clientPorts) flow(ctx context.Context, conn *quic.Conn, d Datagram) *nodeFlow {
	k := flowKey{d.Port, d.Flow}
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.flows[k]; f != nil {
		return f
	}
	spec, ok := p.byPort[d.Port]
	if !ok || len(p.flows) >= p.c.cfg.MaxUDPFlows {
		return nil
	}
	local, ok := p.c.cfg.Services[spec.Service]
	if !ok {
		return nil
	}
	ra, err := net.ResolveUDPAddr("udp", local.Addr)
	if err != nil {
		return nil
	}
	lc, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		return nil
	}
	f := &nodeFlow{lc: lc}
	f.last.Store(p.c.cfg.Clock.Now().UnixNano())
	p.flows[k] = f
	p.c.streamsWG.Add(1)
	go func() {
		defer p.c.streamsWG.Done()
		p.replies(ctx, conn, k, f)
	}()
	return f
}

// replies sends the local service's answers of one flow to the tunnel.
func (p *clientPorts) replies(ctx context.Context, conn *quic.Conn, k flowKey, f *nodeFlow) {
	stop := context.AfterFunc(ctx, func() { f.lc.Close() })
	defer stop()
	buf := make([]byte, MaxDatagramHeaderLen+64<<10)
	hdr, _ := Datagram{Port: k.port, Flow: k.flow}.AppendBinary(buf[:0])
	n0 := len(hdr)
	for {
		n, err := f.lc.Read(buf[n0:])
		if err != nil {
			return
		}
		f.last.Store(p.c.cfg.Clock.Now().UnixNano())
		if err := conn.SendDatagram(buf[:n0+n]); err != nil {
			p.Dropped.Add(1)
		}
	}
}

// sweep closes flows idle for UDPIdle.
func (p *clientPorts) sweep() {
	cut := p.c.cfg.Clock.Now().Add(-p.c.cfg.UDPIdle).UnixNano()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, f := range p.flows {
		if f.last.Load() <= cut {
			f.lc.Close()
			delete(p.flows, k)
		}
	}
}

// Flows returns the number of live UDP flows.
func (c *Client) Flows() int {
	if c.ports == nil {
		return 0
	}
	c.ports.mu.Lock()
	defer c.ports.mu.Unlock()
	return len(c.ports.flows)
}
