package sim

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/lookup"
	"github.com/elacity/pc2/dht/routing"
)

// Config describes a simulated network. Zero fields take the defaults
// in parentheses.
type Config struct {
	Nodes int    // initial network size (10,000)
	Seed  uint64 // PRNG seed (1)
	K     int    // bucket and result size (16)
	Alpha int    // lookup concurrency (3)

	LinkMedian time.Duration // median link RTT (50 ms)
	LinkSigma  float64       // log-normal shape of link RTTs (0.5)
	Loss       float64       // datagram loss probability (0)

	ChurnPerHour float64 // fraction of nodes replaced per hour (0)
	Liars        float64 // fraction of colluding liars among initial nodes (0)

	BootstrapPeers  int           // live nodes a joiner knows (3)
	JoinInterval    time.Duration // gap between initial joins (20 ms)
	TickInterval    time.Duration // maintenance tick per node (10 s)
	RefreshInterval time.Duration // idle bucket refresh (15 min)
	PingsPerTick    int           // liveness checks per tick at most (8)
	// JoinRefreshDelay is how long after its join lookup a node refreshes
	// all its buckets (3 ticks).
	JoinRefreshDelay time.Duration
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Nodes, 10_000)
	def(&c.K, 16)
	def(&c.Alpha, 3)
	def(&c.BootstrapPeers, 3)
	def(&c.PingsPerTick, 8)
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.LinkMedian <= 0 {
		c.LinkMedian = 50 * time.Millisecond
	}
	if c.LinkSigma <= 0 {
		c.LinkSigma = 0.5
	}
	if c.JoinInterval <= 0 {
		c.JoinInterval = 20 * time.Millisecond
	}
	if c.TickInterval <= 0 {
		c.TickInterval = 10 * time.Second
	}
	if c.JoinRefreshDelay <= 0 {
		c.JoinRefreshDelay = 3 * c.TickInterval
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = 15 * time.Minute
	}
}

// rpc kinds
const (
	kindPing uint8 = iota
	kindFindNode
	kindStore
)

type node struct {
	routing.Contact
	idx      int32
	table    *routing.Table
	timeouts *lookup.Timeouts
	timeout  func(routing.Contact) time.Duration
	joined   int64 // virtual unix ns of the last join
	alive    bool
	liar     bool
	attacker bool
}

type rpc struct {
	from, to int32 // to: -1 when nobody owns the address
	contact  routing.Contact
	target   identity.ID
	nodes    []routing.Contact // the answer, reused with the slot
	lookup   int32             // -1: none
	sent     int64
	deadline int64
	refs     int8 // pending events referring to this rpc
	kind     uint8
	answered bool
	failed   bool
}

// Lookup purposes.
const (
	purposeJoin    uint8 = iota // a joiner's lookup of its own id
	purposeRefresh              // bucket refresh
	purposeMeasure              // measured lookup
)

type simLookup struct {
	l        *lookup.Lookup
	node     int32
	start    int64
	purpose  uint8
	publish  bool
	stores   int // store rpcs outstanding
	storeEnd int64
	done     bool
	measure  *Measurement
}

// Sim is a simulated network. It is not safe for concurrent use.
type Sim struct {
	cfg     Config
	rng     *rand.Rand
	now     int64
	seq     uint64
	queue   eventQueue
	nodes   []*node
	byAddr  map[netip.AddrPort]int32
	alive   idSet
	liars   idSet
	rpcs    []rpc
	free    []int32
	lookups []simLookup
	planned []plannedLookup

	// scratch buffers
	qbuf  []lookup.Query
	cbuf  []routing.Contact
	ibuf  []int32
	tbuf  []identity.ID
	found []lookup.Found

	// watched addresses (Inject): answers naming them, datagrams to them
	watch        netip.Prefix
	watchHits    int
	watchAnswers int
	watchSent    int

	// Counters
	Events    uint64
	Datagrams uint64
}

type plannedLookup struct {
	node    int32
	target  identity.ID
	cfg     lookup.Config
	publish bool
	m       *Measurement
}

// Epoch is the virtual time of a simulation's start.
var Epoch = time.Unix(1_800_000_000, 0)

// New builds a network of cfg.Nodes nodes that have not joined yet; call
// Bootstrap to join them.
func New(cfg Config) *Sim {
	cfg.setDefaults()
	s := &Sim{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		now: Epoch.UnixNano(), byAddr: make(map[netip.AddrPort]int32, cfg.Nodes)}
	for range cfg.Nodes {
		n := s.newNode(addrOf(len(s.nodes)))
		n.liar = s.rng.Float64() < cfg.Liars
	}
	return s
}

// addrOf gives node i its own global /24: 11.x.y.1 and up.
func addrOf(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{11 + byte(i>>16), byte(i >> 8), byte(i), 1}), 39001)
}

func (s *Sim) randID() identity.ID {
	var id identity.ID
	for i := 0; i < len(id); i += 8 {
		v := s.rng.Uint64()
		for j := range 8 {
			id[i+j] = byte(v >> (8 * j))
		}
	}
	return id
}

func (s *Sim) newNode(addr netip.AddrPort) *node {
	n := &node{Contact: routing.Contact{ID: s.randID(), Addr: addr}, idx: int32(len(s.nodes))}
	n.table = routing.New(routing.Config{Self: n.ID, K: s.cfg.K})
	n.timeouts = lookup.NewTimeouts(n.table.RTT)
	n.timeout = n.timeouts.Timeout
	s.nodes = append(s.nodes, n)
	s.byAddr[addr] = n.idx
	return n
}

// Now returns the virtual time.
func (s *Sim) Now() time.Time { return time.Unix(0, s.now) }

// Nodes returns the number of nodes ever created.
func (s *Sim) Nodes() int { return len(s.nodes) }

// Alive returns the number of live nodes.
func (s *Sim) Alive() int { return len(s.alive.ids) }

func (s *Sim) schedule(at int64, kind uint8, a int32) {
	s.seq++
	s.queue.push(event{at: at, seq: s.seq, kind: kind, a: a})
}

// RunUntil processes events up to virtual time t.
func (s *Sim) RunUntil(t time.Time) {
	end := t.UnixNano()
	for len(s.queue) > 0 && s.queue[0].at <= end {
		e := s.queue.pop()
		s.now = e.at
		s.Events++
		s.handle(e)
	}
	s.now = max(s.now, end)
}

// RunFor advances virtual time by d.
func (s *Sim) RunFor(d time.Duration) { s.RunUntil(s.Now().Add(d)) }

func (s *Sim) handle(e event) {
	switch e.kind {
	case evRequest:
		s.onRequest(e.a)
	case evResponse:
		s.onResponse(e.a)
	case evTimeout:
		s.onTimeout(e.a)
	case evJoin:
		s.join(e.a)
	case evTick:
		s.tick(e.a)
	case evLookup:
		s.startPlanned(e.a)
	case evChurn:
		s.churn()
	case evRefreshAll:
		s.refreshAll(e.a)
	case evWake:
		s.pump(e.a)
	}
}

// Bootstrap joins every node that has not joined, one per JoinInterval,
// and runs until the last joiner's lookups are over plus settle.
func (s *Sim) Bootstrap(settle time.Duration) {
	at := s.now
	for i, n := range s.nodes {
		if !n.alive {
			s.schedule(at+int64(i)*int64(s.cfg.JoinInterval), evJoin, n.idx)
		}
	}
	if s.cfg.ChurnPerHour > 0 {
		s.scheduleChurn()
	}
	s.RunUntil(time.Unix(0, at+int64(len(s.nodes))*int64(s.cfg.JoinInterval)).Add(settle))
}

func (s *Sim) join(i int32) {
	n := s.nodes[i]
	if n.alive {
		return
	}
	// Bootstrap contacts: random live nodes (the first joiner has none
	// and simply waits to be found).
	var seeds []routing.Contact
	for tries := 0; len(s.alive.ids) > 0 && len(seeds) < s.cfg.BootstrapPeers && tries < 4*s.cfg.BootstrapPeers; tries++ {
		o := s.nodes[s.alive.idx[s.rng.IntN(len(s.alive.idx))]]
		if !o.attacker {
			seeds = append(seeds, o.Contact)
		}
	}
	n.alive = true
	n.joined = s.now
	s.alive.insert(n.ID, n.idx)
	if n.liar {
		s.liars.insert(n.ID, n.idx)
	}
	for _, c := range seeds {
		n.table.AddUnverified(c, s.Now())
	}
	if len(seeds) > 0 {
		s.startLookup(n.idx, n.ID, s.lookupConfig(n, 1, 0), purposeJoin, nil, false)
	}
	s.schedule(s.now+s.rng.Int64N(int64(s.cfg.TickInterval)), evTick, n.idx)
}

func (s *Sim) lookupConfig(n *node, paths, confirm int) lookup.Config {
	return lookup.Config{Self: n.ID, K: s.cfg.K, Alpha: s.cfg.Alpha, Paths: paths, Confirm: confirm, Timeout: n.timeout}
}

func (s *Sim) refreshAll(i int32) {
	n := s.nodes[i]
	if !n.alive {
		return
	}
	s.tbuf = n.table.RefreshTargets(s.Now(), 0, s.randID, s.tbuf)
	s.tbuf = append(s.tbuf, n.ID) // and our own id again: the home region
	for _, t := range s.tbuf {
		s.startLookup(n.idx, t, s.lookupConfig(n, 1, 0), purposeRefresh, nil, false)
	}
}

func (s *Sim) tick(i int32) {
	n := s.nodes[i]
	if !n.alive {
		return
	}
	now := s.Now()
	s.cbuf = n.table.Due(now, s.cbuf, s.cfg.PingsPerTick)
	for _, c := range s.cbuf {
		s.send(n, c, kindPing, identity.ID{}, -1, now.Add(3*n.timeout(c)).UnixNano())
	}
	s.tbuf = n.table.RefreshTargets(now, s.cfg.RefreshInterval, s.randID, s.tbuf)
	for _, t := range s.tbuf {
		s.startLookup(n.idx, t, s.lookupConfig(n, 1, 0), purposeRefresh, nil, false)
	}
	s.schedule(s.now+int64(s.cfg.TickInterval), evTick, i)
}

func (s *Sim) startLookup(i int32, target identity.ID, cfg lookup.Config, purpose uint8, m *Measurement, publish bool) {
	n := s.nodes[i]
	if purpose != purposeMeasure {
		n.table.Touch(target, s.Now())
	}
	cfg.WantToken = publish
	seeds := n.table.Closest(s.cbuf, target, s.cfg.K, false)
	s.lookups = append(s.lookups, simLookup{l: lookup.New(cfg, target, seeds, s.Now()), node: i,
		start: s.now, purpose: purpose, measure: m, publish: publish})
	s.pump(int32(len(s.lookups) - 1))
}

func (s *Sim) pump(li int32) {
	sl := &s.lookups[li]
	if sl.done {
		return
	}
	if sl.l.Done() {
		s.finishLookup(li)
		return
	}
	n := s.nodes[sl.node]
	s.qbuf = sl.l.Next(s.Now(), s.qbuf)
	target := sl.l.Target()
	for _, q := range s.qbuf {
		s.send(n, q.To, kindFindNode, target, li, q.Deadline.UnixNano())
		s.schedule(q.SoftDeadline.UnixNano(), evWake, li)
	}
}

func (s *Sim) finishLookup(li int32) {
	sl := &s.lookups[li]
	sl.done = true
	n := s.nodes[sl.node]
	if sl.purpose == purposeJoin && !n.attacker {
		// Joined: fill every bucket, once the nodes that just learnt of
		// us have had a tick to verify us and the nodes that joined just
		// before us are verified by their neighbours (unverified contacts
		// are not handed out, so an immediate refresh would miss them).
		s.schedule(s.now+int64(s.cfg.JoinRefreshDelay), evRefreshAll, n.idx)
	}
	if sl.measure != nil {
		s.found = sl.l.Result(s.found)
		sl.measure.record(s, sl, s.found)
		if sl.publish {
			for _, f := range s.found {
				if f.Answered {
					sl.stores++
					s.send(n, f.Contact, kindStore, sl.l.Target(), li, s.now+3*int64(n.timeout(f.Contact)))
				}
			}
			if sl.stores == 0 {
				sl.measure.recordPublish(0, false)
			}
		}
	}
	if sl.stores == 0 {
		sl.l = nil // free the candidate lists
	}
}

// linkRTT is the base round trip between two nodes: log-normal, fixed per
// pair, derived from a hash so it needs no storage.
func (s *Sim) linkRTT(a, b int32) float64 {
	if a > b {
		a, b = b, a
	}
	h := splitmix(uint64(a)<<32 | uint64(uint32(b)) ^ s.cfg.Seed)
	u1 := (float64(h>>11) + 0.5) / (1 << 53)
	u2 := (float64(splitmix(h)>>11) + 0.5) / (1 << 53)
	z := math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
	return float64(s.cfg.LinkMedian) * math.Exp(s.cfg.LinkSigma*z)
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (s *Sim) oneWay(a, b int32) int64 {
	return int64(s.linkRTT(a, b) / 2 * (1 + 0.1*s.rng.Float64()))
}

func (s *Sim) lost() bool { return s.cfg.Loss > 0 && s.rng.Float64() < s.cfg.Loss }

func (s *Sim) allocRPC() int32 {
	if k := len(s.free); k > 0 {
		r := s.free[k-1]
		s.free = s.free[:k-1]
		return r
	}
	s.rpcs = append(s.rpcs, rpc{})
	return int32(len(s.rpcs) - 1)
}

func (s *Sim) release(r int32) {
	p := &s.rpcs[r]
	p.refs--
	if p.refs == 0 {
		s.free = append(s.free, r)
	}
}

// send issues a request from n to c. Its fate on the way out is drawn now.
func (s *Sim) send(n *node, c routing.Contact, kind uint8, target identity.ID, li int32, deadline int64) {
	r := s.allocRPC()
	p := &s.rpcs[r]
	to, ok := s.byAddr[c.Addr]
	if !ok {
		to = -1
	}
	*p = rpc{from: n.idx, to: to, contact: c, target: target, nodes: p.nodes[:0], lookup: li,
		sent: s.now, deadline: deadline, kind: kind}
	s.Datagrams++
	if s.watch.IsValid() && s.watch.Contains(c.Addr.Addr()) {
		s.watchSent++
	}
	p.refs = 1
	s.schedule(deadline, evTimeout, r)
	if to >= 0 && !s.lost() {
		p.refs++
		s.schedule(s.now+s.oneWay(n.idx, to), evRequest, r)
	}
}

func (s *Sim) onRequest(r int32) {
	p := &s.rpcs[r]
	defer s.release(r)
	dst := s.nodes[p.to]
	if !dst.alive || dst.ID != p.contact.ID {
		return // a dead node, or another node at that address: no answer
	}
	dst.table.AddUnverified(s.nodes[p.from].Contact, s.Now())
	if p.kind == kindFindNode {
		if dst.liar {
			s.ibuf = s.liars.closest(s.ibuf[:0], p.target, s.cfg.K, -1)
			for _, j := range s.ibuf {
				p.nodes = append(p.nodes, s.nodes[j].Contact)
			}
		} else {
			p.nodes = dst.table.Closest(p.nodes, p.target, s.cfg.K, true)
			if s.watch.IsValid() {
				s.watchAnswers++
				for _, c := range p.nodes {
					if s.watch.Contains(c.Addr.Addr()) {
						s.watchHits++
					}
				}
			}
		}
	}
	s.Datagrams++
	if s.lost() {
		return
	}
	p.refs++
	s.schedule(s.now+s.oneWay(p.to, p.from), evResponse, r)
}

func (s *Sim) onResponse(r int32) {
	p := &s.rpcs[r]
	defer s.release(r)
	n := s.nodes[p.from]
	if !n.alive {
		return
	}
	p.answered = true
	sample := time.Duration(s.now - p.sent)
	n.table.Verified(p.contact, s.Now(), sample)
	n.timeouts.Observe(sample)
	s.rpcDone(p, true)
}

func (s *Sim) onTimeout(r int32) {
	p := &s.rpcs[r]
	defer s.release(r)
	if p.answered || !s.nodes[p.from].alive {
		return
	}
	p.failed = true
	s.nodes[p.from].table.Failed(p.contact.ID, s.Now())
	s.rpcDone(p, false)
}

// rpcDone feeds an answer or a timeout to the lookup that sent the rpc.
// A late answer after a timeout is fed too: the lookup may still use it.
func (s *Sim) rpcDone(p *rpc, ok bool) {
	if p.lookup < 0 {
		return
	}
	sl := &s.lookups[p.lookup]
	if p.kind == kindStore {
		if ok && p.failed {
			return // a late answer to a store already counted as failed
		}
		if sl.stores > 0 {
			sl.stores--
			if ok {
				sl.storeEnd = s.now
			}
			if sl.stores == 0 {
				sl.measure.recordPublish(time.Duration(sl.storeEnd-sl.start), true)
				sl.l = nil
			}
		}
		return
	}
	if sl.done {
		return
	}
	if ok {
		sl.l.OnResponse(p.contact.ID, p.nodes, 0, s.Now())
	} else {
		sl.l.OnFailure(p.contact.ID, s.Now())
	}
	s.pump(p.lookup)
}

func (s *Sim) scheduleChurn() {
	perHour := s.cfg.ChurnPerHour * float64(s.cfg.Nodes)
	gap := s.rng.ExpFloat64() / perHour * float64(time.Hour)
	s.schedule(s.now+int64(gap), evChurn, 0)
}

// churn replaces a random live honest node by a new one.
func (s *Sim) churn() {
	s.scheduleChurn()
	if len(s.alive.ids) < 2 {
		return
	}
	victim := s.nodes[s.alive.idx[s.rng.IntN(len(s.alive.idx))]]
	if victim.attacker {
		return
	}
	s.leave(victim)
	n := s.newNode(addrOf(len(s.nodes)))
	n.liar = s.rng.Float64() < s.cfg.Liars
	s.join(n.idx)
}

func (s *Sim) leave(n *node) {
	n.alive = false
	s.alive.remove(n.ID)
	if n.liar {
		s.liars.remove(n.ID)
	}
	n.table = routing.New(routing.Config{Self: n.ID, K: s.cfg.K}) // drop its memory
}
