package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/core/ratelimit"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/routing"
	"github.com/elacity/pc2/dht/storage"
	"github.com/elacity/pc2/dht/token"
)

// Options are the parts of a node that do not come from the config file.
type Options struct {
	// Identity is the node's key pair (required).
	Identity *identity.KeyPair
	// Storage is the node's database namespace; nil keeps records and the
	// routing table in memory only (a short-lived client).
	Storage *store.Namespace
	Logger  *slog.Logger      // default: discard
	Metrics *metrics.Registry // default: a private registry
	// Clock dates records and tokens (default: the system clock).
	Clock clock.Clock
	// Client marks a short-lived node (see the package doc): PC2 nodes
	// keep it out of their routing tables.
	Client bool
	// Timers override the maintenance schedule (zero fields: defaults).
	Timers Timers
}

// Timers is the maintenance schedule (shared/protocols/boson.md §3).
type Timers struct {
	Tick          time.Duration // liveness checks and due work (1 s)
	Refresh       time.Duration // bucket refresh lookups (15 min)
	Bootstrap     time.Duration // re-bootstrap while the table is small (4 min)
	Persist       time.Duration // routing table snapshot (10 min)
	Expire        time.Duration // expiry sweep of stored records (10 min)
	Reannounce    time.Duration // check of own persistent items (5 min)
	ReannounceAge time.Duration // own items announced longer ago are re-announced (1 h)
}

func (t *Timers) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Tick, time.Second)
	def(&t.Refresh, 15*time.Minute)
	def(&t.Bootstrap, 4*time.Minute)
	def(&t.Persist, 10*time.Minute)
	def(&t.Expire, 10*time.Minute)
	def(&t.Reannounce, 5*time.Minute)
	def(&t.ReannounceAge, time.Hour)
}

// Version numbers sent in "v" (see the package doc).
var (
	versionNode   = message.MakeVersion("PC", 1)
	versionClient = message.MakeVersion("PC", 1|clientBit)
)

const clientBit = 0x8000

func isClientVersion(v int32) bool {
	u := uint32(v)
	return u>>16 == uint32(versionNode)>>16 && u&clientBit != 0
}

// Node is a running DHT node. Create it with New, then Start.
type Node struct {
	cfg    Config
	opts   Options
	self   *identity.KeyPair
	codec  *packet.Codec
	tokens *token.Manager
	store  *storage.Store
	log    *slog.Logger
	reg    *metrics.Registry
	m      *nodeMetrics
	clock  clock.Clock
	compat bool
	ver    int32
	boot   []BootstrapNode

	limIP  *ratelimit.Limiter[netip.Addr]
	limNet *ratelimit.Limiter[routing.Subnet]
	limDev *ratelimit.Limiter[netip.AddrPort]
	limOut *ratelimit.Limiter[netip.AddrPort]

	dialects *dialects
	inst     []*instance // IPv4 first when present; fixed once ready
	ready    atomic.Bool // Start has set inst: datagrams are served

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // every goroutine the node starts
	goMu    sync.Mutex
	closing bool
	closed  sync.Once
}

// spawn runs fn in a goroutine that Close waits for; after Close it does
// nothing and returns false.
func (n *Node) spawn(fn func()) bool {
	n.goMu.Lock()
	defer n.goMu.Unlock()
	if n.closing {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
	return true
}

// ErrClosed is returned by calls on a closed node.
var ErrClosed = errors.New("dht: node closed")

// New checks cfg and builds a node; it opens no socket until Start.
func New(cfg Config, opts Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dht config: %w", err)
	}
	if opts.Identity == nil {
		return nil, errors.New("dht: no identity")
	}
	opts.Timers.setDefaults()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	codec, err := packet.New(opts.Identity, packet.Config{})
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:      cfg,
		opts:     opts,
		self:     opts.Identity,
		codec:    codec,
		tokens:   token.New(),
		log:      opts.Logger,
		reg:      opts.Metrics,
		m:        newMetrics(opts.Metrics),
		clock:    opts.Clock,
		compat:   cfg.ResolvedDialect() == DialectCompat,
		ver:      versionNode,
		dialects: newDialects(1 << 16),
	}
	if opts.Client {
		n.ver = versionClient
	}
	boot := cfg.Bootstrap
	if cfg.PublicNetwork {
		boot = append(boot[:len(boot):len(boot)], PublicBootstrap...)
	}
	for _, s := range boot {
		b, err := ParseBootstrap(s)
		if err != nil {
			return nil, err
		}
		if b.ID != n.self.ID() {
			n.boot = append(n.boot, b)
		}
	}
	rl := cfg.RateLimit
	const sources = 1 << 16
	n.limIP = ratelimit.New[netip.Addr](rl.PacketsPerSecond, rl.Burst, sources)
	n.limNet = ratelimit.New[routing.Subnet](8*rl.PacketsPerSecond, 8*rl.Burst, sources)
	n.limDev = ratelimit.New[netip.AddrPort](rl.PacketsPerSecond, rl.Burst, sources)
	// Outbound calls per destination, at the rate a peer accepts from us.
	n.limOut = ratelimit.New[netip.AddrPort](rl.PacketsPerSecond, rl.Burst, sources)
	return n, nil
}

// ID returns the node id.
func (n *Node) ID() identity.ID { return n.self.ID() }

// Config returns the node's configuration.
func (n *Node) Config() Config { return n.cfg }

// Addrs returns the addresses the node listens on, IPv4 first.
func (n *Node) Addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, in := range n.inst {
		out = append(out, in.local)
	}
	return out
}

// Start opens the sockets, restores the routing tables and stored
// records, and starts maintenance and bootstrap in the background. It
// returns once the node answers requests.
func (n *Node) Start(ctx context.Context) error {
	var err error
	var st storage.LoadStats
	n.store, st, err = storage.Open(n.opts.Storage, storage.Config{MaxRecords: n.cfg.MaxRecords, Now: n.clock.Now})
	if err != nil {
		return err
	}
	if st.Loaded+st.Expired+st.Bad > 0 {
		n.log.Info("records restored", "loaded", st.Loaded, "expired", st.Expired, "unreadable", st.Bad)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	families := []struct {
		bind string
		fam  packet.Network
	}{{n.cfg.Bind4, packet.IPv4}, {n.cfg.Bind6, packet.IPv6}}
	for _, f := range families {
		if f.bind == "off" {
			continue
		}
		in, err := n.listen(f.bind, f.fam)
		if err != nil {
			optional := f.fam == packet.IPv6 && len(n.inst) > 0 && isNoIPv6(err)
			if optional {
				n.log.Info("no IPv6: running IPv4 only", "err", err)
				continue
			}
			n.Close()
			return err
		}
		n.inst = append(n.inst, in)
	}
	if len(n.inst) == 0 {
		n.Close()
		return errors.New("dht: no address family to listen on")
	}
	n.ready.Store(true)
	n.gauges()
	for _, in := range n.inst {
		in.restore()
		n.spawn(func() { in.maintain(n.ctx) })
	}
	n.spawn(func() { n.upkeep(n.ctx) })
	for _, in := range n.inst {
		n.log.Info("dht listening", "addr", in.local, "id", n.self.ID(), "dialect", n.cfg.ResolvedDialect())
	}
	return nil
}

// isNoIPv6 reports whether a listen error means the host has no IPv6.
func isNoIPv6(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) {
		return false
	}
	s := err.Error()
	for _, sub := range []string{"address family not supported", "cannot assign requested address", "protocol not available"} {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// listen opens one family. It first binds the port without SO_REUSEPORT
// so that a port another process already serves is an error rather than
// silently shared (udpserver's workers share it with SO_REUSEPORT).
func (n *Node) listen(bind string, fam packet.Network) (*instance, error) {
	network := "udp4"
	if fam == packet.IPv6 {
		network = "udp6"
	}
	addr := net.JoinHostPort(bind, strconv.Itoa(n.cfg.Port))
	probe, err := net.ListenPacket(network, addr)
	if err != nil {
		return nil, fmt.Errorf("dht listen %s: %w", addr, err)
	}
	addr = probe.LocalAddr().String()
	probe.Close()
	in := newInstance(n, fam)
	srv, err := listenUDP(network, addr, n.cfg.Workers, in)
	if err != nil {
		return nil, fmt.Errorf("dht listen %s: %w", addr, err)
	}
	in.srv = srv
	in.local = unmap(srv.LocalAddr())
	return in, nil
}

// Close stops the node: maintenance ends, the routing tables are saved,
// queued writes finish and the sockets close.
func (n *Node) Close() error {
	n.closed.Do(func() {
		if n.cancel != nil {
			n.cancel()
		}
		n.goMu.Lock()
		n.closing = true
		n.goMu.Unlock()
		n.wg.Wait()
		for _, in := range n.inst {
			in.persist()
		}
		if n.store != nil {
			n.store.Close() // queued writes finish and are answered
		}
		for _, in := range n.inst {
			if in.srv != nil {
				in.srv.Close()
			}
		}
	})
	return nil
}

// allowIn applies the inbound per-source budgets.
func (n *Node) allowIn(from netip.AddrPort, now time.Time) bool {
	a := from.Addr()
	sub, global := routing.SubnetOf(a)
	if !global {
		return n.limDev.Allow(from, now)
	}
	if a.Is6() {
		return n.limNet.Allow(sub, now) // the /64 is the source unit
	}
	return n.limIP.Allow(a, now) && n.limNet.Allow(sub, now)
}

// allowOut applies the outbound per-destination budget.
func (n *Node) allowOut(to netip.AddrPort, now time.Time) bool {
	if _, global := routing.SubnetOf(to.Addr()); global {
		to = netip.AddrPortFrom(to.Addr(), 0)
	}
	return n.limOut.Allow(to, now)
}

func (n *Node) gauges() {
	for _, in := range n.inst {
		in := in
		n.reg.Gauge("routing_table_size", func() float64 {
			in.tmu.RLock()
			defer in.tmu.RUnlock()
			return float64(in.table.Len())
		}, "family", in.fam.String())
	}
	n.reg.Gauge("stored_values", func() float64 { v, _ := n.store.Len(); return float64(v) })
	n.reg.Gauge("stored_peers", func() float64 { _, p := n.store.Len(); return float64(p) })
	n.reg.Gauge("crypto_contexts", func() float64 { return float64(n.codec.Len()) })
}

// instanceFor returns the instance of addr's family, or nil.
func (n *Node) instanceFor(addr netip.AddrPort) *instance {
	fam := packet.NetworkOf(addr.Addr())
	for _, in := range n.inst {
		if in.fam == fam {
			return in
		}
	}
	return nil
}

// TableLen returns the number of contacts in the routing table of each
// family, IPv4 first.
func (n *Node) TableLen() []int {
	var out []int
	for _, in := range n.inst {
		in.tmu.RLock()
		out = append(out, in.table.Len())
		in.tmu.RUnlock()
	}
	return out
}

// Contacts returns the routing table's verified contacts of every family.
func (n *Node) Contacts() []routing.Contact {
	var out []routing.Contact
	for _, in := range n.inst {
		in.tmu.RLock()
		out = append(out, in.table.Snapshot(nil)...)
		in.tmu.RUnlock()
	}
	return out
}
