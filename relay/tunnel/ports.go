package tunnel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
)

// PortConfig configures port-mapped endpoints: public TCP and UDP ports of
// the supernode that carry visitors to one local service of a node.
type PortConfig struct {
	// Min and Max bound the range ports are taken from (inclusive); Min 0
	// disables port mapping.
	Min, Max uint16
	// PerNode bounds the ports one node id holds, TCP and UDP together,
	// held ones included (4).
	PerNode int
	// Hold keeps a node's ports for it after its tunnel went away, so a
	// reconnecting node gets the same ports back (5 min).
	Hold time.Duration
	// Bind is the host mapped ports listen on ("" all addresses).
	Bind string
	// UDPFlows bounds the visitor flows of one UDP port (1024); UDPIdle
	// ends a flow after that long without a datagram either way (60 s).
	UDPFlows int
	UDPIdle  time.Duration
	// TCPConns bounds the visitor connections of one TCP port at once
	// (1024), TCPConnsPerSource those from one source address (an IPv4
	// address or an IPv6 /64) (64); beyond them a visitor is closed at
	// once.
	TCPConns, TCPConnsPerSource int
	// Clock times holds and flow idleness (nil: the system clock).
	Clock clock.Clock
	// Leases keeps leases across restarts (nil: memory only).
	Leases LeaseStore
}

func (c *PortConfig) defaults() {
	if c.PerNode <= 0 {
		c.PerNode = 4
	}
	if c.Hold <= 0 {
		c.Hold = 5 * time.Minute
	}
	if c.UDPFlows <= 0 {
		c.UDPFlows = 1024
	}
	if c.UDPIdle <= 0 {
		c.UDPIdle = 60 * time.Second
	}
	if c.TCPConns <= 0 {
		c.TCPConns = 1024
	}
	if c.TCPConnsPerSource <= 0 {
		c.TCPConnsPerSource = 64
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
}

// Lease is a port held for one service of one node.
type Lease struct {
	Node    identity.ID
	Proto   Proto
	Service string
	Port    uint16
	// Expires is when a held lease is released; zero while the node's
	// tunnel is up.
	Expires time.Time
}

// LeaseStore keeps leases durably: Put and Delete return once the change
// is on disk.
type LeaseStore interface {
	Load() ([]Lease, error)
	Put(Lease) error
	Delete(Lease) error
}

type leaseKey struct {
	node    identity.ID
	proto   Proto
	service string
}

type lease struct {
	Lease
	gen     uint64 // bumped on every hold and re-attach: stale timers do nothing
	ln      net.Listener
	udp     *udpPort
	stopped chan struct{} // closed when the lease is released
}

// portMap hands out ports and serves them.
type portMap struct {
	cfg     PortConfig
	srv     *Server
	log     *slog.Logger
	mu      sync.Mutex
	leases  map[leaseKey]*lease
	byPort  [3]map[uint16]*lease // by Proto
	perID   map[identity.ID]int
	readers map[*quic.Conn]bool // tunnels whose datagrams are read
	done    chan struct{}
	wg      sync.WaitGroup

	Granted, Refused atomic.Int64
}

func newPortMap(s *Server, cfg PortConfig) (*portMap, error) {
	cfg.defaults()
	if cfg.Max < cfg.Min {
		return nil, fmt.Errorf("tunnel: port range %d-%d is empty", cfg.Min, cfg.Max)
	}
	m := &portMap{
		cfg: cfg, srv: s, log: s.log,
		leases:  map[leaseKey]*lease{},
		perID:   map[identity.ID]int{},
		readers: map[*quic.Conn]bool{},
		done:    make(chan struct{}),
	}
	m.byPort[ProtoTCP] = map[uint16]*lease{}
	m.byPort[ProtoUDP] = map[uint16]*lease{}
	if cfg.Leases == nil {
		return m, nil
	}
	stored, err := cfg.Leases.Load()
	if err != nil {
		return nil, fmt.Errorf("tunnel: load port leases: %w", err)
	}
	now := cfg.Clock.Now()
	for _, sl := range stored {
		if sl.Port < cfg.Min || sl.Port > cfg.Max || m.byPort[sl.Proto] == nil || m.byPort[sl.Proto][sl.Port] != nil {
			_ = cfg.Leases.Delete(sl) // out of a changed range, or a duplicate
			continue
		}
		if sl.Expires.IsZero() {
			// The tunnel was up when the previous process ended: the
			// hold starts now.
			sl.Expires = now.Add(cfg.Hold)
		}
		if !sl.Expires.After(now) {
			_ = cfg.Leases.Delete(sl)
			continue
		}
		l := &lease{Lease: sl, stopped: make(chan struct{})}
		m.insert(l)
		m.holdLocked(l, false)
	}
	return m, nil
}

func (m *portMap) insert(l *lease) {
	m.leases[leaseKey{l.Node, l.Proto, l.Service}] = l
	m.byPort[l.Proto][l.Port] = l
	m.perID[l.Node]++
}

func (m *portMap) remove(l *lease) {
	delete(m.leases, leaseKey{l.Node, l.Proto, l.Service})
	delete(m.byPort[l.Proto], l.Port)
	if m.perID[l.Node]--; m.perID[l.Node] <= 0 {
		delete(m.perID, l.Node)
	}
	close(l.stopped)
	if l.ln != nil {
		l.ln.Close()
	}
	if l.udp != nil {
		l.udp.pc.Close()
	}
}

// Leases returns a copy of the current leases, for tests and metrics.
func (m *portMap) Leases() []Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Lease, 0, len(m.leases))
	for _, l := range m.leases {
		out = append(out, l.Lease)
	}
	return out
}

func refuse(req Control, code RefuseCode, reason string) Control {
	return Control{Type: MsgPortRefused, Proto: req.Proto, Service: req.Service, Code: code, Reason: reason}
}

// request answers one port request of node t.
func (m *portMap) request(t *tunnelConn, req Control) Control {
	if req.Type != MsgPortRequest {
		return refuse(req, RefuseBadRequest, "expected a port request")
	}
	ans := m.grant(t, req)
	if ans.Type == MsgPortGrant {
		m.Granted.Add(1)
		m.log.Info("tunnel: port mapped", "node", t.id, "service", req.Service, "proto", req.Proto, "port", ans.Port)
	} else {
		m.Refused.Add(1)
		m.log.Info("tunnel: port refused", "node", t.id, "service", req.Service, "proto", req.Proto, "code", ans.Code, "reason", ans.Reason)
	}
	return ans
}

func (m *portMap) grant(t *tunnelConn, req Control) Control {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.done:
		return refuse(req, RefuseInternal, "supernode stopping")
	default:
	}
	key := leaseKey{t.id, req.Proto, req.Service}
	if l := m.leases[key]; l != nil {
		if err := m.bind(l); err != nil {
			// Taken by another process while nobody listened (a lease
			// reloaded after a restart): give the node a new port.
			m.log.Warn("tunnel: held port taken; choosing another", "node", t.id, "port", l.Port, "err", err)
			m.remove(l)
			if m.cfg.Leases != nil {
				_ = m.cfg.Leases.Delete(l.Lease)
			}
			return m.allocateLocked(t, req)
		}
		if !l.Expires.IsZero() {
			l.Expires = time.Time{}
			l.gen++
			if err := m.put(l.Lease); err != nil {
				return refuse(req, RefuseInternal, "cannot store the lease")
			}
		}
		m.startReader(t, l)
		return Control{Type: MsgPortGrant, Proto: req.Proto, Service: req.Service, Port: l.Port}
	}
	return m.allocateLocked(t, req)
}

// allocateLocked leases a new port for req.
func (m *portMap) allocateLocked(t *tunnelConn, req Control) Control {
	if m.perID[t.id] >= m.cfg.PerNode {
		return refuse(req, RefuseQuota, fmt.Sprintf("node holds its %d ports", m.cfg.PerNode))
	}
	size := int(m.cfg.Max) - int(m.cfg.Min) + 1
	start := rand.IntN(size) // spread nodes over the range
	for i := range size {
		port := uint16(int(m.cfg.Min) + (start+i)%size)
		if m.byPort[req.Proto][port] != nil {
			continue
		}
		l := &lease{Lease: Lease{Node: t.id, Proto: req.Proto, Service: req.Service, Port: port}, stopped: make(chan struct{})}
		if err := m.bind(l); err != nil {
			continue // taken by another process
		}
		if err := m.put(l.Lease); err != nil {
			m.unbind(l)
			return refuse(req, RefuseInternal, "cannot store the lease")
		}
		m.insert(l)
		m.startReader(t, l)
		return Control{Type: MsgPortGrant, Proto: req.Proto, Service: req.Service, Port: port}
	}
	return refuse(req, RefuseExhausted, fmt.Sprintf("no free %s port in %d-%d", req.Proto, m.cfg.Min, m.cfg.Max))
}

func (m *portMap) put(l Lease) error {
	if m.cfg.Leases == nil {
		return nil
	}
	return m.cfg.Leases.Put(l)
}

// bind opens l's socket unless it is open, and starts serving it.
func (m *portMap) bind(l *lease) error {
	addr := net.JoinHostPort(m.cfg.Bind, strconv.Itoa(int(l.Port)))
	switch {
	case l.Proto == ProtoTCP && l.ln == nil:
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		l.ln = ln
		m.wg.Add(1)
		go m.serveTCP(l, ln)
	case l.Proto == ProtoUDP && l.udp == nil:
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		l.udp = &udpPort{m: m, l: l, pc: pc, flows: map[netip.AddrPort]*udpFlow{}, byID: map[uint32]*udpFlow{}}
		m.wg.Add(2)
		go l.udp.serve()
		go l.udp.sweep()
	}
	return nil
}

func (m *portMap) unbind(l *lease) {
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
	if l.udp != nil {
		l.udp.pc.Close()
		l.udp = nil
	}
}

// detach starts the hold of every lease of node id: its tunnel is gone.
func (m *portMap) detach(id identity.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.leases {
		if l.Node == id && l.Expires.IsZero() {
			m.holdLocked(l, true)
		}
	}
}

// holdLocked sets l's expiry (when store) and waits for it.
func (m *portMap) holdLocked(l *lease, store bool) {
	if store {
		l.Expires = m.cfg.Clock.Now().Add(m.cfg.Hold)
		if err := m.put(l.Lease); err != nil {
			m.log.Warn("tunnel: cannot store a held lease", "err", err)
		}
	}
	l.gen++
	gen := l.gen
	select {
	case <-m.done:
		return // stopping: the stored expiry holds the port for the next process
	default:
	}
	timer := m.cfg.Clock.NewTimer(l.Expires.Sub(m.cfg.Clock.Now()))
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		select {
		case <-timer.C():
			m.expire(l, gen)
		case <-l.stopped:
			timer.Stop()
		case <-m.done:
			timer.Stop()
		}
	}()
}

func (m *portMap) expire(l *lease, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l.gen != gen || l.Expires.IsZero() || m.leases[leaseKey{l.Node, l.Proto, l.Service}] != l {
		return // re-attached, or gone
	}
	m.remove(l)
	if m.cfg.Leases != nil {
		if err := m.cfg.Leases.Delete(l.Lease); err != nil {
			m.log.Warn("tunnel: cannot delete an expired lease", "err", err)
		}
	}
	m.log.Info("tunnel: port released", "node", l.Node, "service", l.Service, "proto", l.Proto, "port", l.Port)
}

func (m *portMap) close() {
	m.mu.Lock()
	select {
	case <-m.done:
	default:
		close(m.done)
	}
	for _, l := range m.leases {
		m.unbind(l)
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// serveTCP carries each visitor of a mapped TCP port on its own stream.
func (m *portMap) serveTCP(l *lease, ln net.Listener) {
	defer m.wg.Done()
	var lim connLimit
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		src := sourceOf(c.RemoteAddr())
		if !lim.enter(src, m.cfg.TCPConns, m.cfg.TCPConnsPerSource) {
			c.Close()
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer lim.leave(src)
			m.serveVisitor(l, c)
		}()
	}
}

func (m *portMap) serveVisitor(l *lease, c net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	st, err := m.srv.Dial(ctx, l.Node, l.Service, c.RemoteAddr())
	cancel()
	if err != nil {
		c.Close() // held port (node away), or over the stream quota
		return
	}
	// Ends with the stream when the tunnel closes (Server.Close closes
	// the tunnels before the ports).
	pipe(c, st)
}

// connLimit counts the visitors of one port, in total and per source.
type connLimit struct {
	mu    sync.Mutex
	total int
	per   map[netip.Addr]int
}

func (l *connLimit) enter(src netip.Addr, max, perSource int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.per == nil {
		l.per = map[netip.Addr]int{}
	}
	if l.total >= max || l.per[src] >= perSource {
		return false
	}
	l.total++
	l.per[src]++
	return true
}

func (l *connLimit) leave(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.per[src]--; l.per[src] <= 0 {
		delete(l.per, src)
	}
}

// sourceOf is the accounting source of a visitor: its IPv4 address, or
// the /64 of its IPv6 address.
func sourceOf(a net.Addr) netip.Addr {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip := ta.AddrPort().Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

type closeWriter interface{ CloseWrite() error }

// pipe copies both ways, passing each direction's end on as a half-close,
// and closes both when both directions are done.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
	a.Close()
	b.Close()
}

func copyHalf(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	if cw, ok := dst.(closeWriter); ok && err == nil {
		cw.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}

// udpPort is a mapped UDP port: each visitor address is a flow with an id
// the node echoes back in its replies.
type udpPort struct {
	m       *portMap
	l       *lease
	pc      net.PacketConn
	mu      sync.Mutex
	flows   map[netip.AddrPort]*udpFlow
	byID    map[uint32]*udpFlow
	nextID  uint32
	Dropped atomic.Int64
}

type udpFlow struct {
	id      uint32
	visitor netip.AddrPort
	last    atomic.Int64 // clock Unix nanoseconds of the last datagram
}

func (u *udpPort) serve() {
	defer u.m.wg.Done()
	buf := make([]byte, 64<<10)
	out := make([]byte, 0, MaxDatagramHeaderLen+1500)
	for {
		n, from, err := u.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		ap := ua.AddrPort()
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		t := u.m.srv.tunnel(u.l.Node)
		if t == nil || t.conn == nil {
			u.Dropped.Add(1) // node away (the lease is held), or on the TCP fallback: no datagrams
			continue
		}
		f := u.flow(ap)
		if f == nil {
			u.Dropped.Add(1)
			continue
		}
		u.m.ensureReader(t)
		out, _ = Datagram{Port: u.l.Port, Flow: f.id, Visitor: ap}.AppendBinary(out[:0])
		out = append(out, buf[:n]...)
		if err := t.conn.SendDatagram(out); err != nil {
			u.Dropped.Add(1) // too large for a datagram, or the tunnel is closing
		}
	}
}

// flow returns the flow of visitor ap, creating it if the port has room.
func (u *udpPort) flow(ap netip.AddrPort) *udpFlow {
	now := u.m.cfg.Clock.Now().UnixNano()
	u.mu.Lock()
	defer u.mu.Unlock()
	f := u.flows[ap]
	if f == nil {
		if len(u.flows) >= u.m.cfg.UDPFlows {
			return nil
		}
		for {
			u.nextID++
			if u.byID[u.nextID] == nil {
				break
			}
		}
		f = &udpFlow{id: u.nextID, visitor: ap}
		u.flows[ap] = f
		u.byID[f.id] = f
	}
	f.last.Store(now)
	return f
}

// reply sends a node's datagram to the visitor of its flow.
func (u *udpPort) reply(flow uint32, payload []byte) {
	u.mu.Lock()
	f := u.byID[flow]
	u.mu.Unlock()
	if f == nil {
		u.Dropped.Add(1) // idle-expired, or never existed
		return
	}
	f.last.Store(u.m.cfg.Clock.Now().UnixNano())
	u.pc.WriteTo(payload, net.UDPAddrFromAddrPort(f.visitor))
}

// sweep ends idle flows every UDPIdle/2.
func (u *udpPort) sweep() {
	defer u.m.wg.Done()
	idle := u.m.cfg.UDPIdle
	t := u.m.cfg.Clock.NewTimer(idle / 2)
	defer t.Stop()
	for {
		select {
		case <-t.C():
		case <-u.l.stopped:
			return
		case <-u.m.done:
			return
		}
		cut := u.m.cfg.Clock.Now().Add(-idle).UnixNano()
		u.mu.Lock()
		for ap, f := range u.flows {
			if f.last.Load() <= cut {
				delete(u.flows, ap)
				delete(u.byID, f.id)
			}
		}
		u.mu.Unlock()
		t.Reset(idle / 2)
	}
}

// Flows returns the number of live flows.
func (u *udpPort) Flows() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.flows)
}

// startReader makes sure datagrams of t are read when l is a UDP lease.
func (m *portMap) startReader(t *tunnelConn, l *lease) {
	if l.Proto == ProtoUDP {
		m.ensureReaderLocked(t)
	}
}

func (m *portMap) ensureReader(t *tunnelConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ensureReaderLocked(t)
}

func (m *portMap) ensureReaderLocked(t *tunnelConn) {
	if m.readers[t.conn] {
		return
	}
	m.readers[t.conn] = true
	m.wg.Add(1)
	go m.readDatagrams(t)
}

// readDatagrams passes the node's UDP replies to their visitors. Only
// ports this node holds are served.
func (m *portMap) readDatagrams(t *tunnelConn) {
	defer m.wg.Done()
	defer func() {
		m.mu.Lock()
		delete(m.readers, t.conn)
		m.mu.Unlock()
	}()
	ctx := t.conn.Context()
	for {
		b, err := t.conn.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		d, payload, err := ParseDatagram(b)
		if err != nil {
			continue // e.g. a wake probe
		}
		m.mu.Lock()
		l := m.byPort[ProtoUDP][d.Port]
		var u *udpPort
		if l != nil && l.Node == t.id {
			u = l.udp
		}
		m.mu.Unlock()
		if u != nil {
			u.reply(d.Flow, payload)
		}
	}
}

// serveControl answers the port requests a node sends on its control
// streams; the server allows one such stream at a time per tunnel.
func (s *Server) serveControl(t *tunnelConn) {
	defer s.wg.Done()
	ctx := t.conn.Context()
	for {
		st, err := t.conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		s.controlStream(t, st)
	}
}

// maxControlPerStream bounds the requests of one control stream.
const maxControlPerStream = 64

func (s *Server) controlStream(t *tunnelConn, st *quic.Stream) {
	defer st.Close()
	defer st.CancelRead(0)
	var out []byte
	for range maxControlPerStream {
		_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
		req, err := ReadControl(st)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.log.Debug("tunnel: bad control message", "node", t.id, "err", err)
			}
			return
		}
		ans := s.ports.request(t, req)
		out, err = ans.AppendBinary(out[:0])
		if err != nil {
			return
		}
		_ = st.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := st.Write(out); err != nil {
			return
		}
	}
}

// tunnel returns node id's current tunnel, or nil.
func (s *Server) tunnel(id identity.ID) *tunnelConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tunnels[id]
}

// Leases returns the port leases, active and held.
func (s *Server) Leases() []Lease {
	if s.ports == nil {
		return nil
	}
	return s.ports.Leases()
}

// leaseKeyBytes is a lease's key in a store: proto, node id, service.
func leaseKeyBytes(l Lease) []byte {
	k := make([]byte, 0, 1+len(l.Node)+len(l.Service))
	k = append(k, byte(l.Proto))
	k = append(k, l.Node[:]...)
	return append(k, l.Service...)
}

// encodeLease is a lease's value in a store: port u16, expiry Unix ns i64
// (0 while active).
func encodeLease(l Lease) []byte {
	v := make([]byte, 10)
	binary.BigEndian.PutUint16(v, l.Port)
	if !l.Expires.IsZero() {
		binary.BigEndian.PutUint64(v[2:], uint64(l.Expires.UnixNano()))
	}
	return v
}

func decodeLease(k, v []byte) (Lease, bool) {
	var l Lease
	if len(k) < 1+len(l.Node)+1 || len(v) != 10 {
		return l, false
	}
	l.Proto = Proto(k[0])
	copy(l.Node[:], k[1:])
	l.Service = string(k[1+len(l.Node):])
	l.Port = binary.BigEndian.Uint16(v)
	if ns := int64(binary.BigEndian.Uint64(v[2:])); ns != 0 {
		l.Expires = time.Unix(0, ns)
	}
	if (l.Proto != ProtoTCP && l.Proto != ProtoUDP) || !validService(l.Service) || l.Port == 0 {
		return l, false
	}
	return l, true
}

// storeLeases keeps leases in the sub-bucket "leases" of a service's
// namespace.
type storeLeases struct{ ns *store.Namespace }

// NewStoreLeases returns a LeaseStore in ns.
func NewStoreLeases(ns *store.Namespace) LeaseStore { return storeLeases{ns} }

func (s storeLeases) Load() ([]Lease, error) {
	var out []Lease
	err := s.ns.View(func(tx *store.Tx) error {
		sub, err := tx.Sub("leases")
		if err != nil {
			return err
		}
		return sub.ForEach(nil, func(k, v []byte) error {
			if l, ok := decodeLease(k, v); ok {
				out = append(out, l)
			}
			return nil
		})
	})
	return out, err
}

func (s storeLeases) Put(l Lease) error {
	return s.ns.Update(func(tx *store.Tx) error {
		sub, err := tx.Sub("leases")
		if err != nil {
			return err
		}
		return sub.Put(leaseKeyBytes(l), encodeLease(l))
	})
}

func (s storeLeases) Delete(l Lease) error {
	return s.ns.Update(func(tx *store.Tx) error {
		sub, err := tx.Sub("leases")
		if err != nil {
			return err
		}
		return sub.Delete(leaseKeyBytes(l))
	})
}
