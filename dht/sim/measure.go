package sim

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/elacity/pc2/dht/lookup"
	"github.com/elacity/pc2/dht/routing"
)

// Measurement collects the outcome of a batch of planned lookups.
type Measurement struct {
	Name    string
	Planned int
	Hops    []int
	MaxHops []int
	RPCs    []int
	Latency []time.Duration
	Success int // result equals the true k closest live nodes
	// Settled counts lookups whose result holds every one of the true k
	// closest that had been up for at least a minute when the lookup
	// started: a node that joined seconds ago is not yet verified by its
	// neighbours, so no honest node hands it out.
	Settled   int
	Exhausted int
	Publish   []time.Duration // time until the last store was acknowledged
	PublishOK int
	Stored    int // publishes with no store acknowledged are not in Publish
	Aborted   int // the querying node left during the lookup
}

// LookupPlan describes a batch of measured lookups.
type LookupPlan struct {
	Name    string
	Count   int
	Window  time.Duration // start times are spread uniformly over it
	Paths   int           // disjoint paths d (1)
	Confirm int           // closest that must answer (K)
	Publish bool          // then store at the k closest
}

// Plan schedules a batch of lookups from random live honest nodes to
// random targets, starting within plan.Window from now; run the
// simulation for at least the window (plus lookup time) to complete it.
func (s *Sim) Plan(plan LookupPlan) *Measurement {
	m := &Measurement{Name: plan.Name, Planned: plan.Count}
	for range plan.Count {
		at := s.now
		if plan.Window > 0 {
			at += s.rng.Int64N(int64(plan.Window))
		}
		s.planned = append(s.planned, plannedLookup{target: s.randID(), m: m, publish: plan.Publish,
			cfg: lookup.Config{K: s.cfg.K, Alpha: s.cfg.Alpha, Paths: plan.Paths, Confirm: plan.Confirm}})
		s.schedule(at, evLookup, int32(len(s.planned)-1))
	}
	return m
}

func (s *Sim) honestAlive() *node {
	for {
		n := s.nodes[s.alive.idx[s.rng.IntN(len(s.alive.idx))]]
		if !n.liar && !n.attacker {
			return n
		}
	}
}

func (s *Sim) startPlanned(i int32) {
	p := &s.planned[i]
	n := s.honestAlive()
	cfg := p.cfg
	cfg.Self, cfg.Timeout = n.ID, n.timeout
	s.startLookup(n.idx, p.target, cfg, purposeMeasure, p.m, p.publish)
}

func (m *Measurement) record(s *Sim, sl *simLookup, found []lookup.Found) {
	n := s.nodes[sl.node]
	if !n.alive {
		m.Aborted++
		return
	}
	st := sl.l.Stats()
	m.Hops = append(m.Hops, st.Hops)
	m.MaxHops = append(m.MaxHops, st.MaxHops)
	m.RPCs = append(m.RPCs, st.Queries)
	m.Latency = append(m.Latency, time.Duration(s.now-sl.start))
	if st.Exhausted {
		m.Exhausted++
	}
	s.ibuf = s.alive.closest(s.ibuf[:0], sl.l.Target(), s.cfg.K, sl.node)
	ok := len(found) == len(s.ibuf)
	for i := 0; ok && i < len(found); i++ {
		ok = found[i].ID == s.nodes[s.ibuf[i]].ID
	}
	if ok {
		m.Success++
	}
	settled := true
	for _, j := range s.ibuf {
		if s.nodes[j].joined > sl.start-int64(time.Minute) {
			continue
		}
		in := false
		for i := range found {
			if found[i].ID == s.nodes[j].ID {
				in = true
				break
			}
		}
		if !in {
			settled = false
			break
		}
	}
	if settled {
		m.Settled++
	}
}

// SettledRate is Settled over completed lookups.
func (m *Measurement) SettledRate() float64 {
	if len(m.RPCs) == 0 {
		return 0
	}
	return float64(m.Settled) / float64(len(m.RPCs))
}

func (m *Measurement) recordPublish(d time.Duration, ok bool) {
	if ok {
		m.PublishOK++
		m.Publish = append(m.Publish, d)
	}
}

// Done returns how many lookups completed.
func (m *Measurement) Done() int { return len(m.RPCs) }

// SuccessRate is Success over completed lookups.
func (m *Measurement) SuccessRate() float64 {
	if len(m.RPCs) == 0 {
		return 0
	}
	return float64(m.Success) / float64(len(m.RPCs))
}

// Percentile returns the p-th percentile (0..100, nearest rank) of xs.
func Percentile[T int | time.Duration](xs []T, p float64) T {
	if len(xs) == 0 {
		return 0
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	i := int(p/100*float64(len(c))+0.999999) - 1
	return c[max(0, min(len(c)-1, i))]
}

func (m *Measurement) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d/%d lookups done (%d aborted)\n", m.Name, m.Done(), m.Planned, m.Aborted)
	fmt.Fprintf(&b, "  hops to closest  median %d  p99 %d   (deepest of k: median %d, p99 %d)\n",
		Percentile(m.Hops, 50), Percentile(m.Hops, 99), Percentile(m.MaxHops, 50), Percentile(m.MaxHops, 99))
	fmt.Fprintf(&b, "  latency          p50 %v  p90 %v  p99 %v\n", Percentile(m.Latency, 50).Round(time.Millisecond),
		Percentile(m.Latency, 90).Round(time.Millisecond), Percentile(m.Latency, 99).Round(time.Millisecond))
	fmt.Fprintf(&b, "  RPCs per lookup  median %d  p99 %d\n", Percentile(m.RPCs, 50), Percentile(m.RPCs, 99))
	fmt.Fprintf(&b, "  success          %d/%d = %.2f%%  (exhausted %d); ignoring nodes up < 1 min: %.2f%%\n",
		m.Success, m.Done(), 100*m.SuccessRate(), m.Exhausted, 100*m.SettledRate())
	if len(m.Publish) > 0 {
		fmt.Fprintf(&b, "  publish          p50 %v  p95 %v  (%d with at least one store)\n",
			Percentile(m.Publish, 50).Round(time.Millisecond), Percentile(m.Publish, 95).Round(time.Millisecond), m.PublishOK)
	}
	return b.String()
}

// TableHealth returns the fraction of live honest nodes whose buckets hold
// all k live nodes closest to their own id (rfm19's routing-table health).
func (s *Sim) TableHealth() float64 {
	good, total := 0, 0
	for _, i := range s.alive.idx {
		n := s.nodes[i]
		if n.liar || n.attacker {
			continue
		}
		total++
		s.ibuf = s.alive.closest(s.ibuf[:0], n.ID, s.cfg.K, i)
		all := true
		for _, j := range s.ibuf {
			if !n.table.Contains(s.nodes[j].ID) {
				all = false
				break
			}
		}
		if all {
			good++
		}
	}
	if total == 0 {
		return 0
	}
	return float64(good) / float64(total)
}

// HeapPerNode forces a GC and returns live heap bytes divided by the
// number of live nodes: everything the simulator holds, tables included.
func (s *Sim) HeapPerNode() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc / uint64(max(1, len(s.alive.ids)))
}

// TableStats sums table sizes over live honest nodes.
func (s *Sim) TableStats() (entries, buckets float64) {
	n := 0
	for _, i := range s.alive.idx {
		nd := s.nodes[i]
		if nd.liar || nd.attacker {
			continue
		}
		n++
		entries += float64(nd.table.Len())
		buckets += float64(nd.table.Buckets())
	}
	return entries / float64(max(n, 1)), buckets / float64(max(n, 1))
}

// SybilReport is what a /24 Sybil attack achieved.
type SybilReport struct {
	IDs, Victims        int
	MaxPerBucketVictim  int // attacker slots (entries + replacements) in one bucket of a victim
	MaxPerTableVictim   int
	MaxPerBucketAnyNode int // the same over every live honest node
	MaxPerTableAnyNode  int
	VictimsReached      int // victims holding at least one attacker contact
}

// SybilAttack adds ids attacker nodes that all live in one /24 and answer
// like honest nodes. Each is aimed at one of victims honest nodes (its id
// shares a chosen prefix with the victim, spread over the victim's
// buckets), contacts that victim and joins the network normally; then the
// simulation runs for settle so the victims verify them. It reports how
// many slots the attacker holds.
func (s *Sim) SybilAttack(ids, victims int, settle time.Duration) SybilReport {
	rep := SybilReport{IDs: ids, Victims: victims}
	vs := make([]*node, 0, victims)
	for len(vs) < victims {
		n := s.honestAlive()
		if !slices.Contains(vs, n) {
			vs = append(vs, n)
		}
	}
	first := len(s.nodes)
	for j := range ids {
		addr := attackerAddr(j)
		n := s.newNode(addr)
		n.attacker = true
		v := vs[j%victims]
		// Aim: share (j/victims) % 24 leading bits with the victim.
		cpl := (j / victims) % 24
		id := n.ID
		for bit := range cpl + 1 {
			mask := byte(0x80 >> (bit % 8))
			want := v.ID[bit/8] & mask
			if bit == cpl {
				want ^= mask
			}
			id[bit/8] = id[bit/8]&^mask | want
		}
		delete(s.byAddr, addr)
		n.ID = id
		n.table = routing.New(routing.Config{Self: id, K: s.cfg.K})
		n.timeouts = lookup.NewTimeouts(n.table.RTT)
		n.timeout = n.timeouts.Timeout
		s.byAddr[addr] = n.idx
		s.join(n.idx)
		s.send(n, v.Contact, kindFindNode, id, -1, s.now+int64(time.Second))
	}
	s.RunFor(settle)
	isAttacker := func(c routing.Contact) bool {
		i, ok := s.byAddr[c.Addr]
		return ok && int(i) >= first && s.nodes[i].attacker
	}
	count := func(n *node) (perBucket, total int) {
		pb := map[int]int{}
		n.table.ForEach(func(e routing.Entry) bool {
			if isAttacker(e.Contact) {
				pb[e.Bucket]++
				total++
			}
			return true
		})
		for b := range n.table.Buckets() {
			perBucket = max(perBucket, pb[b])
		}
		return
	}
	for _, v := range vs {
		b, t := count(v)
		rep.MaxPerBucketVictim = max(rep.MaxPerBucketVictim, b)
		rep.MaxPerTableVictim = max(rep.MaxPerTableVictim, t)
		if t > 0 {
			rep.VictimsReached++
		}
	}
	for _, i := range s.alive.idx {
		if n := s.nodes[i]; !n.attacker && !n.liar {
			b, t := count(n)
			rep.MaxPerBucketAnyNode = max(rep.MaxPerBucketAnyNode, b)
			rep.MaxPerTableAnyNode = max(rep.MaxPerTableAnyNode, t)
		}
	}
	return rep
}

// attackerAddr puts every attacker id in 66.66.66.0/24, four ports per host.
func attackerAddr(j int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{66, 66, 66, byte(1 + (j/4)%250)}), uint16(40000+j))
}

// InjectionReport is the outcome of a victim-injection attempt.
type InjectionReport struct {
	Injected  int // forged contacts that entered a table (as unverified)
	HandedOut int // FIND_NODE answers by honest nodes that named a victim
	Answers   int // FIND_NODE answers by honest nodes during the attack
	Probes    int // extra answers probed at the end
	ToVictim  int // datagrams honest nodes sent to victims (liveness checks)
}

// victimNet holds the forged addresses: 44.0.0.0/8, one /24 per contact,
// so the subnet limits do not stop them and only verification can.
var victimNet = netip.MustParsePrefix("44.0.0.0/8")

// Inject delivers to random live honest nodes count requests from forged
// contacts at addresses nobody answers on (spoofed sources, the victims),
// runs for settle while counting every honest FIND_NODE answer that names
// a victim, then probes every honest table once more.
func (s *Sim) Inject(count int, settle time.Duration) InjectionReport {
	s.watch, s.watchHits, s.watchAnswers, s.watchSent = victimNet, 0, 0, 0
	rep := InjectionReport{}
	for k := range count {
		victim := netip.AddrPortFrom(netip.AddrFrom4([4]byte{44, byte(k >> 8), byte(k), 1}), 39001)
		n := s.honestAlive()
		if o, _ := n.table.AddUnverified(routing.Contact{ID: s.randID(), Addr: victim}, s.Now()); o != routing.Rejected {
			rep.Injected++
		}
	}
	s.RunFor(settle)
	var buf []routing.Contact
	for _, i := range s.alive.idx {
		n := s.nodes[i]
		if n.liar || n.attacker {
			continue
		}
		buf = n.table.Closest(buf, s.randID(), s.cfg.K, true)
		rep.Probes++
		for _, c := range buf {
			if victimNet.Contains(c.Addr.Addr()) {
				rep.HandedOut++
			}
		}
	}
	rep.HandedOut += s.watchHits
	rep.Answers = s.watchAnswers
	rep.ToVictim = s.watchSent
	s.watch = netip.Prefix{}
	return rep
}
