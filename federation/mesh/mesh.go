package mesh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/plugins/registry/wire"
	"github.com/elacity/pc2/transport/quicid"
)

// ALPN is the TLS application protocol of mesh connections.
const ALPN = "pc2-mesh/1"

// maxDiscovered bounds the supernodes an open federation (no peers list)
// admits from the DHT, where anyone can announce.
const maxDiscovered = 64

// Registry is the local name registry (plugins/registry implements it).
type Registry interface {
	Owner(name string) (identity.ID, bool)
	TLSTarget(name string) (string, bool)
	HTTPBackend(host []byte) (httproute.Backend, bool)
	Zones() []string
	LookupName(name string) ([]netip.Addr, bool)
	ACMEChallenge(name string) ([]string, bool)
	Registered(id identity.ID) bool
	Len() int
	Get(name string) (*wire.Record, error)
	Records(fn func(*wire.Record)) error
	Evict(ctx context.Context, name string, owner identity.ID) (bool, error)
}

// Tunnels are the node tunnels held here (relay/tunnel implements it).
type Tunnels interface {
	Has(id identity.ID) bool
	Dial(ctx context.Context, id identity.ID, service string, visitor net.Addr) (net.Conn, error)
	IDs() []identity.ID
}

// Announcement is what a supernode tells the others about itself, in the
// DHT and in every status.
type Announcement struct {
	Mesh      string   `json:"mesh,omitempty"`      // UDP host:port of the mesh
	Tunnel    string   `json:"tunnel,omitempty"`    // UDP host:port of node tunnels
	SNI       string   `json:"sni,omitempty"`       // TCP host:port of the TLS gateway
	Addresses []string `json:"addresses,omitempty"` // public IPs DNS answers with
	Domains   []string `json:"domains,omitempty"`   // served suffixes
}

// status is the periodic frame.
type status struct {
	Time     int64         `json:"time"`
	Announce Announcement  `json:"announce"`
	Names    int           `json:"names"`
	Tunnels  []identity.ID `json:"tunnels"`
}

// Options configure a Mesh. Zero values take the defaults shown.
type Options struct {
	Key      *identity.KeyPair // required by Listen
	Registry Registry          // required
	Tunnels  Tunnels           // nil: this supernode holds no tunnels
	// Peers are the supernodes admitted, with the address to dial when
	// known. Empty: every supernode Discovered reports is admitted.
	Peers map[identity.ID]string
	// Addresses are this supernode's public IPs, answered by DNS while it
	// is alive.
	Addresses      []netip.Addr
	Heartbeat      time.Duration // 1 s: status and QUIC keep-alive period
	DeadAfter      time.Duration // 5 s: silence after which a peer is dead
	MaxRemoteNames int           // 2,000,000 remote claims held
	Announce       func() Announcement
	// Resolver, when set, looks names the mesh does not know up in the
	// DHT (bounded: see lookup.go).
	Resolver Resolver
	Logger   *slog.Logger
}

// Mesh is one supernode's side of the federation.
type Mesh struct {
	o      Options
	id     identity.ID
	log    *slog.Logger
	names  *table
	misses *misses
	tr     *quic.Transport
	ln     *quic.Listener
	addr   net.Addr

	mu    sync.Mutex
	peers map[identity.ID]*peer
	live  atomic.Pointer[[]netip.Addr]

	Forwarded atomic.Int64 // visitor streams sent to other supernodes
	Served    atomic.Int64 // visitor streams other supernodes sent here
	Evicted   atomic.Int64 // local registrations given up to earlier claims

	stop chan struct{}
	wg   sync.WaitGroup
}

type peer struct {
	id         identity.ID
	addr       string // where to dial; empty: unknown yet
	configured bool
	conn       *quic.Conn
	dialer     identity.ID
	out        chan []byte
	up, heard  time.Time
	st         status
	tunnels    map[identity.ID]bool
	gen        uint64
	dialing    bool
	failures   int
	nextDial   time.Time
	downs      int
}

// New returns a mesh; Listen starts it.
func New(o Options) (*Mesh, error) {
	if o.Registry == nil {
		return nil, errors.New("mesh: options need a Registry")
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	if o.DeadAfter <= 0 {
		o.DeadAfter = 5 * time.Second
	}
	if o.MaxRemoteNames <= 0 {
		o.MaxRemoteNames = 2_000_000
	}
	if o.Announce == nil {
		o.Announce = func() Announcement { return Announcement{} }
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Mesh{o: o, log: log, names: newTable(o.MaxRemoteNames), misses: newMisses(), peers: map[identity.ID]*peer{}, stop: make(chan struct{})}
	m.refreshLive()
	return m, nil
}

// ID returns this supernode's id.
func (m *Mesh) ID() identity.ID { return m.id }

// Addr returns the UDP address of the mesh once listening.
func (m *Mesh) Addr() net.Addr { return m.addr }

func (m *Mesh) quicConfig() *quic.Config {
	qc := quicid.Config(10000, m.o.DeadAfter)
	qc.KeepAlivePeriod = m.o.Heartbeat
	qc.MaxIncomingUniStreams = 4
	return qc
}

// admit lets in configured peers, or with no list every discovered one.
func (m *Mesh) admit(id identity.ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id == m.id {
		return errors.New("mesh: that is this supernode")
	}
	if _, ok := m.peers[id]; ok {
		return nil
	}
	return errors.New("mesh: not a known supernode")
}

// Listen binds the UDP socket and starts accepting and dialling peers.
func (m *Mesh) Listen(addr string) error {
	if m.o.Key == nil {
		return errors.New("mesh: no key")
	}
	m.id = m.o.Key.ID()
	m.mu.Lock()
	for id, a := range m.o.Peers {
		if id != m.id && m.peers[id] == nil {
			m.peers[id] = &peer{id: id, addr: a, configured: true}
		}
	}
	m.mu.Unlock()
	m.refreshLive()
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("mesh listen %s: %w", addr, err)
	}
	tlsConf, err := quicid.ServerConfig(m.o.Key, ALPN, m.admit)
	if err != nil {
		udp.Close()
		return err
	}
	m.tr = &quic.Transport{Conn: udp, StatelessResetKey: quicid.StatelessResetKey(m.o.Key)}
	ln, err := m.tr.Listen(tlsConf, m.quicConfig())
	if err != nil {
		m.tr.Close()
		udp.Close()
		return fmt.Errorf("mesh listen: %w", err)
	}
	m.ln, m.addr = ln, udp.LocalAddr()
	m.wg.Add(2)
	go m.acceptLoop()
	go m.run()
	return nil
}

// Close ends every connection and waits for the goroutines.
func (m *Mesh) Close() error {
	select {
	case <-m.stop:
		return nil
	default:
	}
	close(m.stop)
	if m.ln != nil {
		m.ln.Close()
	}
	m.mu.Lock()
	for _, p := range m.peers {
		if p.conn != nil {
			p.conn.CloseWithError(0, "supernode stopping")
		}
	}
	m.mu.Unlock()
	m.wg.Wait()
	if m.tr != nil {
		m.tr.Close()
		m.tr.Conn.Close()
	}
	return nil
}

// Discovered adds or updates a supernode found in the DHT. With a
// configured peer list, only listed ids are taken (their address learnt
// when none was configured).
func (m *Mesh) Discovered(id identity.ID, a Announcement) {
	if id == m.id || a.Mesh == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[id]
	switch {
	case p == nil && len(m.o.Peers) > 0:
		return
	case p == nil && len(m.peers) >= maxDiscovered:
		m.log.Warn("mesh: too many supernodes announced; ignoring more (list them in mesh.peers)", "id", id)
		return
	case p == nil:
		m.peers[id] = &peer{id: id, addr: a.Mesh}
	case p.addr == "" || !p.configured:
		p.addr = a.Mesh
	}
}

func (m *Mesh) acceptLoop() {
	defer m.wg.Done()
	for {
		conn, id, err := quicid.Accept(context.Background(), m.ln)
		if err != nil {
			return
		}
		m.attach(id, conn, id)
	}
}

// run dials the peers that are down and sends the heartbeats.
func (m *Mesh) run() {
	defer m.wg.Done()
	tick := time.NewTicker(min(m.o.Heartbeat, 250*time.Millisecond))
	defer tick.Stop()
	lastBeat := time.Time{}
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		beat := now.Sub(lastBeat) >= m.o.Heartbeat
		var st []byte
		if beat {
			lastBeat = now
			st = m.statusFrame(now)
		}
		m.mu.Lock()
		for _, p := range m.peers {
			if p.conn != nil {
				if now.Sub(p.heard) > m.o.DeadAfter {
					p.conn.CloseWithError(3, "no status within deadAfter")
					continue
				}
				if beat {
					m.enqueue(p, st)
				}
				continue
			}
			if p.addr != "" && !p.dialing && !now.Before(p.nextDial) {
				p.dialing = true
				m.wg.Add(1)
				go m.dial(p.id, p.addr)
			}
		}
		m.mu.Unlock()
	}
}

func (m *Mesh) statusFrame(now time.Time) []byte {
	s := status{Time: now.Unix(), Announce: m.o.Announce()}
	if m.o.Tunnels != nil {
		s.Tunnels = m.o.Tunnels.IDs()
	}
	s.Names = m.o.Registry.Len()
	b, _ := json.Marshal(s)
	f, err := AppendFrame(nil, frameStatus, b)
	if err != nil {
		m.log.Warn("mesh: status too large", "err", err)
		s.Tunnels = nil
		b, _ = json.Marshal(s)
		f, _ = AppendFrame(nil, frameStatus, b)
	}
	return f
}

func (m *Mesh) dial(id identity.ID, addr string) {
	defer m.wg.Done()
	err := m.dialOnce(id, addr)
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[id]
	if p == nil {
		return
	}
	p.dialing = false
	if err != nil {
		// Quick retries (a restarted peer rejoins at once), capped at 2 s.
		wait := min(250*time.Millisecond<<min(p.failures, 3), 2*time.Second)
		p.failures++
		p.nextDial = time.Now().Add(wait)
		if p.failures == 1 || p.failures%30 == 0 {
			m.log.Debug("mesh: dial failed", "peer", id, "addr", addr, "err", err)
		}
	}
}

func (m *Mesh) dialOnce(id identity.ID, addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	tlsConf, err := quicid.ClientConfig(m.o.Key, ALPN, id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() {
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := m.tr.Dial(ctx, ua, tlsConf, m.quicConfig())
	if err != nil {
		return err
	}
	m.attach(id, conn, m.id)
	return nil
}

// keepLower is the id whose dialled connection both ends keep.
func keepLower(a, b identity.ID) identity.ID {
	if bytes.Compare(a[:], b[:]) < 0 {
		return a
	}
	return b
}

// attach makes conn the connection to peer id, unless the one it has is
// the one both ends keep.
func (m *Mesh) attach(id identity.ID, conn *quic.Conn, dialer identity.ID) {
	m.mu.Lock()
	p := m.peers[id]
	if p == nil { // admitted, then removed: cannot happen today
		m.mu.Unlock()
		conn.CloseWithError(1, "not a known supernode")
		return
	}
	if p.conn != nil && p.conn.Context().Err() == nil {
		if p.dialer == keepLower(m.id, id) && dialer != p.dialer {
			m.mu.Unlock()
			conn.CloseWithError(0, "duplicate")
			return
		}
		old := p.conn
		defer old.CloseWithError(0, "duplicate")
	}
	out := make(chan []byte, 4096)
	p.conn, p.dialer, p.out = conn, dialer, out
	p.up, p.heard = time.Now(), time.Now()
	p.failures = 0
	p.gen++
	gen := p.gen
	m.mu.Unlock()
	m.log.Info("mesh: peer up", "peer", id, "addr", conn.RemoteAddr())
	m.refreshLive()
	m.wg.Add(3)
	go m.writer(conn, out)
	go m.reader(p, conn, gen)
	go m.acceptForwards(conn)
	context.AfterFunc(conn.Context(), func() { m.detach(p, conn) })
}

func (m *Mesh) detach(p *peer, conn *quic.Conn) {
	m.mu.Lock()
	if p.conn != conn {
		m.mu.Unlock()
		return
	}
	p.conn, p.out, p.tunnels = nil, nil, nil
	p.downs++
	m.mu.Unlock()
	m.refreshLive()
	m.log.Info("mesh: peer down", "peer", p.id, "err", context.Cause(conn.Context()))
}

// enqueue queues a frame for p's writer; a peer that cannot keep up is
// disconnected, and resynchronised by the snapshot of its next
// connection. m.mu is held.
func (m *Mesh) enqueue(p *peer, f []byte) {
	if p.out == nil {
		return
	}
	select {
	case p.out <- f:
	default:
		p.conn.CloseWithError(4, "control queue full")
	}
}

func (m *Mesh) broadcast(f []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.peers {
		m.enqueue(p, f)
	}
}

// writer sends the snapshot of local registrations, then queued frames.
func (m *Mesh) writer(conn *quic.Conn, out chan []byte) {
	defer m.wg.Done()
	st, err := conn.OpenUniStream()
	if err != nil {
		return
	}
	defer st.CancelWrite(0)
	w := bufio.NewWriterSize(st, 64<<10)
	var buf []byte
	buf, _ = AppendFrame(buf[:0], frameSyncBegin, nil)
	w.Write(buf)
	_ = m.o.Registry.Records(func(rec *wire.Record) {
		b, err := json.Marshal(rec)
		if err != nil {
			return
		}
		if buf, err = AppendFrame(buf[:0], frameRecord, b); err == nil {
			w.Write(buf)
		}
	})
	buf, _ = AppendFrame(buf[:0], frameSyncEnd, nil)
	w.Write(buf)
	w.Write(m.statusFrame(time.Now()))
	if w.Flush() != nil {
		return
	}
	for {
		select {
		case <-conn.Context().Done():
			return
		case f := <-out:
			w.Write(f)
			for more := true; more; { // batch what is queued
				select {
				case f := <-out:
					w.Write(f)
				default:
					more = false
				}
			}
			if w.Flush() != nil {
				conn.CloseWithError(5, "control write failed")
				return
			}
		}
	}
}

// reader applies the peer's control frames.
func (m *Mesh) reader(p *peer, conn *quic.Conn, gen uint64) {
	defer m.wg.Done()
	st, err := conn.AcceptUniStream(conn.Context())
	if err != nil {
		return
	}
	r := bufio.NewReaderSize(st, 64<<10)
	syncGen := uint64(0)
	for {
		typ, payload, err := ReadFrame(r, MaxFrame)
		if err != nil {
			if conn.Context().Err() == nil {
				m.log.Warn("mesh: control stream failed", "peer", p.id, "err", err)
				conn.CloseWithError(6, "bad control stream")
			}
			return
		}
		m.mu.Lock()
		if p.gen == gen {
			p.heard = time.Now()
		}
		m.mu.Unlock()
		if err := m.apply(p, gen, &syncGen, typ, payload); err != nil {
			m.log.Warn("mesh: frame refused", "peer", p.id, "err", err)
		}
	}
}

func (m *Mesh) apply(p *peer, gen uint64, syncGen *uint64, typ byte, payload []byte) error {
	switch typ {
	case frameStatus:
		var s status
		if err := json.Unmarshal(payload, &s); err != nil {
			return fmt.Errorf("status: %w", err)
		}
		tun := make(map[identity.ID]bool, len(s.Tunnels))
		for _, id := range s.Tunnels {
			tun[id] = true
		}
		m.mu.Lock()
		changed := false
		if p.gen == gen && p.conn != nil {
			changed = !slices.Equal(p.st.Announce.Addresses, s.Announce.Addresses)
			p.st, p.tunnels = s, tun
		}
		m.mu.Unlock()
		if changed {
			m.refreshLive()
		}
	case frameSyncBegin:
		*syncGen = gen
	case frameSyncEnd:
		if n := m.names.prune(p.id, gen); n > 0 {
			m.log.Info("mesh: forgot claims the peer no longer has", "peer", p.id, "count", n)
		}
	case frameRecord:
		var rec wire.Record
		if err := json.Unmarshal(payload, &rec); err != nil {
			return fmt.Errorf("record: %w", err)
		}
		if err := m.checkRecord(&rec); err != nil {
			return fmt.Errorf("record %q: %w", rec.Name, err)
		}
		if !m.names.set(p.id, &rec, gen) {
			return errors.New("remote name table full")
		}
		m.settle(&rec)
	case frameDeleted:
		var d struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(payload, &d); err != nil {
			return fmt.Errorf("deleted: %w", err)
		}
		m.names.del(p.id, d.Name)
	}
	return nil
}

// checkRecord accepts only records under a served suffix whose binding
// its owner signed.
func (m *Mesh) checkRecord(rec *wire.Record) error {
	if rec.Name != normal(rec.Name) || rec.Owner.IsZero() {
		return errors.New("not in normal form or no owner")
	}
	if !m.served(rec.Name) {
		return errors.New("not under a served suffix")
	}
	return rec.VerifyProof()
}

// settle applies the conflict rule to a remote claim: a local
// registration of another owner that loses is evicted.
func (m *Mesh) settle(remote *wire.Record) {
	owner, ok := m.o.Registry.Owner(remote.Name)
	if !ok || owner == remote.Owner {
		return
	}
	local, err := m.o.Registry.Get(remote.Name)
	if err != nil || !Better(remote, local) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ok, err := m.o.Registry.Evict(ctx, remote.Name, owner); err != nil {
		m.log.Error("mesh: eviction failed", "name", remote.Name, "err", err)
	} else if ok {
		m.Evicted.Add(1)
		m.log.Info("mesh: concurrent claim lost to an earlier one", "name", remote.Name, "loser", owner, "winner", remote.Owner)
	}
}

// Publish sends a local change to every peer; the registry calls it
// (through the Service's Publisher chain).
func (m *Mesh) Publish(rec *wire.Record) {
	b, err := json.Marshal(rec)
	if err != nil {
		return
	}
	if f, err := AppendFrame(nil, frameRecord, b); err == nil {
		m.broadcast(f)
	}
}

// Unpublish sends a local deletion to every peer.
func (m *Mesh) Unpublish(name string) {
	b, _ := json.Marshal(struct {
		Name string `json:"name"`
	}{name})
	f, _ := AppendFrame(nil, frameDeleted, b)
	m.broadcast(f)
}

// refreshLive recomputes the addresses DNS answers: this supernode's and
// those of every live peer.
func (m *Mesh) refreshLive() {
	if len(m.o.Addresses) == 0 { // DNS answers with its own addresses
		m.live.Store(&[]netip.Addr{})
		return
	}
	addrs := slices.Clone(m.o.Addresses)
	m.mu.Lock()
	for _, p := range m.peers {
		if p.conn == nil {
			continue
		}
		for _, s := range p.st.Announce.Addresses {
			if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(addrs, a.Unmap()) {
				addrs = append(addrs, a.Unmap())
			}
		}
	}
	m.mu.Unlock()
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	m.live.Store(&addrs)
}

// holders returns the connections of live peers holding node id's tunnel,
// freshest status first.
func (m *Mesh) holders(id identity.ID) []*quic.Conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*quic.Conn
	for _, p := range m.peers {
		if p.conn != nil && p.tunnels[id] {
			out = append(out, p.conn)
		}
	}
	return out
}

// PeerStatus is one mesh peer as `pc2 supernode status` shows it.
type PeerStatus struct {
	ID        identity.ID  `json:"id"`
	Addr      string       `json:"addr"`
	Alive     bool         `json:"alive"`
	Since     time.Time    `json:"since,omitzero"`
	LastHeard time.Time    `json:"lastHeard,omitzero"`
	RTT       string       `json:"rtt,omitempty"`
	Downs     int          `json:"downs"`
	Names     int          `json:"names"`   // registrations it announced (held here)
	Tunnels   int          `json:"tunnels"` // tunnels it holds
	Announce  Announcement `json:"announce"`
}

// Status is the operator's view of the mesh.
type Status struct {
	ID          identity.ID  `json:"id"`
	Mesh        string       `json:"mesh"`
	Peers       []PeerStatus `json:"peers"`
	LocalNames  int          `json:"localNames"`
	RemoteNames int          `json:"remoteNames"` // distinct names known only from peers' claims, or also
	Routed      int          `json:"routed"`      // names this supernode routes
	Tunnels     int          `json:"tunnels"`     // tunnels held here
	LiveAddrs   []netip.Addr `json:"liveAddrs"`
	Forwarded   int64        `json:"forwarded"`
	Served      int64        `json:"served"`
	Evicted     int64        `json:"evicted"`
}

// Status returns the current view.
func (m *Mesh) Status() Status {
	s := Status{ID: m.id, Forwarded: m.Forwarded.Load(), Served: m.Served.Load(), Evicted: m.Evicted.Load()}
	if m.addr != nil {
		s.Mesh = m.addr.String()
	}
	local := map[string]bool{}
	_ = m.o.Registry.Records(func(r *wire.Record) { local[r.Name] = true })
	s.LocalNames = len(local)
	m.names.mu.RLock()
	s.RemoteNames = len(m.names.names)
	routed := len(local)
	for n := range m.names.names {
		if !local[n] {
			routed++
		}
	}
	m.names.mu.RUnlock()
	s.Routed = routed
	if m.o.Tunnels != nil {
		s.Tunnels = len(m.o.Tunnels.IDs())
	}
	s.LiveAddrs = *m.live.Load()
	m.mu.Lock()
	for _, p := range m.peers {
		ps := PeerStatus{ID: p.id, Addr: p.addr, Alive: p.conn != nil, Downs: p.downs, Tunnels: len(p.tunnels), Announce: p.st.Announce}
		if p.conn != nil {
			ps.Since, ps.LastHeard = p.up, p.heard
			ps.RTT = p.conn.ConnectionStats().SmoothedRTT.Round(time.Microsecond).String()
		}
		s.Peers = append(s.Peers, ps)
	}
	m.mu.Unlock()
	for i := range s.Peers {
		s.Peers[i].Names = m.names.fromPeer(s.Peers[i].ID)
	}
	slices.SortFunc(s.Peers, func(a, b PeerStatus) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return s
}

// StatusHandler serves Status as JSON.
func (m *Mesh) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(m.Status())
	})
}
