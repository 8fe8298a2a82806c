package lookup

import (
	"encoding/binary"
	"math"
	"slices"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/routing"
)

// Defaults follow Boson 3.1 (shared/protocols/boson.md §3).
const (
	DefaultK     = 16
	DefaultAlpha = 3
	// DefaultTimeout is used when Config.Timeout is nil.
	DefaultTimeout = time.Second
)

// Config sets a lookup's parameters. Zero fields take defaults.
type Config struct {
	// Self is the local node: never queried, dropped from answers.
	Self identity.ID
	// K is the result size (default 16).
	K int
	// Alpha is the number of concurrent queries per path (default 3).
	Alpha int
	// Paths is the number of disjoint paths d (default 1).
	Paths int
	// Confirm is how many of the closest candidates must have answered
	// before a path ends (default K: "the k closest have answered").
	// A smaller value (libp2p's β=3) ends sooner; the result then also
	// holds the closest candidates that were named but not asked.
	Confirm int
	// MaxPerResponse bounds the contacts taken from one answer (default K).
	MaxPerResponse int
	// Candidates bounds the candidate list of each path (default
	// min(3K, 128), as Boson).
	Candidates int
	// DeveloperMode accepts loopback and private addresses in answers.
	DeveloperMode bool
	// WantToken asks the RPC layer for write tokens (Publish sets it).
	WantToken bool
	// NoBurst keeps α queries in flight to the end instead of asking the
	// rest of the k closest at once when progress stalls.
	NoBurst bool
	// Timeout returns the adaptive (soft) timeout for a query to c; nil
	// means 1 s. When it passes, the query stops holding one of the α
	// slots, but its answer is still awaited until the hard deadline,
	// HardFactor times later; only then has the node failed. So a slow
	// live node delays a lookup instead of silently dropping out of it.
	Timeout func(c routing.Contact) time.Duration
	// HardFactor multiplies the soft timeout into the hard deadline (3).
	HardFactor int
	// MaxAttempts is how many times one node is asked before it counts
	// as failed (4): at each soft timeout the request is sent again, as
	// UDP has no retransmission of its own. With 5% datagram loss a
	// single attempt loses ~10% of requests, and a lookup that needs 16
	// answers would miss one of the true closest most of the time.
	MaxAttempts int
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.K, DefaultK)
	def(&c.Alpha, DefaultAlpha)
	def(&c.Paths, 1)
	def(&c.Confirm, c.K)
	c.Confirm = min(c.Confirm, c.K)
	def(&c.MaxPerResponse, c.K)
	def(&c.HardFactor, 3)
	def(&c.MaxAttempts, 4)
	def(&c.Candidates, min(3*c.K, 128))
	c.Candidates = max(c.Candidates, c.K)
}

type state uint8

const (
	fresh state = iota
	inflight
	slow // past its soft timeout, still awaited
	answered
	failed
)

type candidate struct {
	routing.Contact
	dist     [4]uint64 // XOR distance to the target, big-endian words
	sent     int64     // unix ns
	soft     int64     // unix ns: soft timeout (next retransmission)
	deadline int64     // unix ns: hard deadline of the last attempt
	timeout  int64     // ns: this node's soft timeout
	token    int32
	attempts uint8
	hop      uint8 // 1 for seeds, referrer's hop + 1 otherwise
	state    state
}

type path struct {
	cands      []candidate // sorted by dist, at most cfg.Candidates
	inflight   int
	stalled    int  // answers in a row that brought nothing closer
	burst      bool // stall detected: ask the rest of the k closest at once
	done       bool
	bestSeen   [4]uint64
	haveSeen   bool
	queriesOut int
}

// Query is a FIND_NODE the driver must send now and later report with
// OnResponse or OnFailure (at the latest at Deadline). The driver must
// also call Next again at SoftDeadline (NextDeadline tells when), so the
// lookup can move on while the query is slow.
type Query struct {
	To           routing.Contact
	SoftDeadline time.Time
	Deadline     time.Time
}

// Found is a node of the result.
type Found struct {
	routing.Contact
	Answered bool
	Token    int32
	Hop      int
}

// Stats counts what a lookup cost.
type Stats struct {
	Queries   int // FIND_NODE requests sent
	Answers   int // answers received (late ones included)
	Failures  int // nodes that never answered (all attempts timed out)
	Slow      int // nodes that passed their first soft timeout
	Resent    int // retransmissions (included in Queries)
	Dropped   int // contacts refused from answers (bounds, self, bogons)
	Hops      int // hop of the closest node found (seeds are hop 1)
	MaxHops   int // largest hop among the result
	Exhausted bool
}

// Lookup is one iterative lookup. It is not safe for concurrent use.
type Lookup struct {
	cfg    Config
	target identity.ID
	paths  []path
	stats  Stats
	start  int64
	merged bool // the disjoint paths ended and were merged into one
}

func distance(target, id identity.ID) [4]uint64 {
	var d [4]uint64
	for i := range d {
		d[i] = binary.BigEndian.Uint64(target[8*i:]) ^ binary.BigEndian.Uint64(id[8*i:])
	}
	return d
}

func less(a, b [4]uint64) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// New starts a lookup for target from seeds (normally the routing table's
// closest contacts, unverified ones included).
func New(cfg Config, target identity.ID, seeds []routing.Contact, now time.Time) *Lookup {
	cfg.setDefaults()
	l := &Lookup{cfg: cfg, target: target, paths: make([]path, cfg.Paths), start: now.UnixNano()}
	for i := range l.paths {
		l.paths[i].cands = make([]candidate, 0, cfg.Candidates)
	}
	// Deal seeds round-robin in distance order so each path starts with
	// a share of the best ones.
	sorted := slices.Clone(seeds)
	slices.SortFunc(sorted, func(a, b routing.Contact) int {
		return identityCmp(distance(target, a.ID), distance(target, b.ID))
	})
	p := 0
	for _, s := range sorted {
		if l.valid(s) && l.insert(p, s, 1) {
			p = (p + 1) % len(l.paths)
		}
	}
	for i := range l.paths {
		l.checkDone(i)
	}
	return l
}

func identityCmp(a, b [4]uint64) int {
	if less(a, b) {
		return -1
	}
	if less(b, a) {
		return 1
	}
	return 0
}

func (l *Lookup) valid(c routing.Contact) bool {
	return c.ID != l.cfg.Self && !c.ID.IsZero() && routing.Routable(c.Addr, l.cfg.DeveloperMode) == nil
}

// search returns where d is or would be in the path's sorted list.
func (pa *path) search(d [4]uint64) (int, bool) {
	lo, hi := 0, len(pa.cands)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if less(pa.cands[m].dist, d) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(pa.cands) && pa.cands[lo].dist == d
}

// locate finds id on any path: path index and position, or -1. Equal
// distance to the target means equal id.
func (l *Lookup) locate(d [4]uint64) (int, int) {
	for p := range l.paths {
		if i, found := l.paths[p].search(d); found {
			return p, i
		}
	}
	return -1, -1
}

// insert adds c to path p unless some path already has it or it would
// fall off the end of a full list. It reports whether c was added.
func (l *Lookup) insert(p int, c routing.Contact, hop int) bool {
	d := distance(l.target, c.ID)
	if q, _ := l.locate(d); q >= 0 {
		return false
	}
	pa := &l.paths[p]
	i, _ := pa.search(d)
	if len(pa.cands) >= l.cfg.Candidates {
		if i >= len(pa.cands) {
			return false
		}
		// Drop the farthest candidate that is not in flight; in-flight
		// ones must stay findable for their answers.
		drop := -1
		for j := len(pa.cands) - 1; j >= i; j-- {
			if pa.cands[j].state != inflight {
				drop = j
				break
			}
		}
		if drop < 0 {
			return false
		}
		pa.cands = slices.Delete(pa.cands, drop, drop+1)
	}
	pa.cands = slices.Insert(pa.cands, i, candidate{Contact: c, dist: d, hop: uint8(min(hop, 255))})
	return true
}

// Next appends to dst[:0] the queries to send now and marks them in
// flight.
func (l *Lookup) Next(now time.Time, dst []Query) []Query {
	dst = dst[:0]
	ns := now.UnixNano()
	dst = l.expireSoft(ns, dst)
	for p := range l.paths {
		pa := &l.paths[p]
		if pa.done {
			continue
		}
		// Only the Confirm closest non-failed candidates are ever asked:
		// the K closest in strict mode, the β closest otherwise.
		limit := l.cfg.Alpha
		if pa.burst {
			limit = l.cfg.Confirm
		}
		seen := 0
		for i := range pa.cands {
			if pa.inflight >= limit || seen >= l.cfg.Confirm {
				break
			}
			c := &pa.cands[i]
			if c.state == failed {
				continue
			}
			seen++
			if c.state != fresh {
				continue
			}
			timeout := DefaultTimeout
			if l.cfg.Timeout != nil {
				timeout = l.cfg.Timeout(c.Contact)
			}
			c.state = inflight
			c.sent = ns
			c.timeout = int64(timeout)
			c.attempts = 1
			c.soft = ns + int64(timeout)
			c.deadline = ns + int64(timeout)*int64(l.cfg.HardFactor)
			pa.inflight++
			pa.queriesOut++
			l.stats.Queries++
			dst = append(dst, Query{To: c.Contact, SoftDeadline: time.Unix(0, c.soft), Deadline: time.Unix(0, c.deadline)})
		}
	}
	return dst
}

// OnResponse records from's answer: nodes it named (at most
// MaxPerResponse are considered) and an opaque token. A late answer after
// OnFailure is still used. Answers from nodes never asked are ignored.
func (l *Lookup) OnResponse(from identity.ID, nodes []routing.Contact, token int32, now time.Time) {
	p, i := l.locate(distance(l.target, from))
	if p < 0 {
		return
	}
	pa := &l.paths[p]
	c := &pa.cands[i]
	switch c.state {
	case inflight:
		pa.inflight--
	case slow, failed:
	default:
		return // never asked, or a duplicate answer
	}
	c.state = answered
	c.token = token
	hop := int(c.hop) + 1
	l.stats.Answers++
	if len(nodes) > l.cfg.MaxPerResponse {
		l.stats.Dropped += len(nodes) - l.cfg.MaxPerResponse
		nodes = nodes[:l.cfg.MaxPerResponse]
	}
	progress := false
	for _, n := range nodes {
		if !l.valid(n) {
			l.stats.Dropped++
			continue
		}
		if l.insert(p, n, hop) {
			d := distance(l.target, n.ID)
			if !pa.haveSeen || less(d, pa.bestSeen) {
				pa.bestSeen, pa.haveSeen, progress = d, true, true
			}
		}
	}
	if progress {
		pa.stalled, pa.burst = 0, false
	} else if pa.stalled++; pa.stalled >= l.cfg.Alpha && !l.cfg.NoBurst {
		pa.burst = true
	}
	l.checkDone(p)
}

// OnFailure records that the query to id timed out or failed.
func (l *Lookup) OnFailure(id identity.ID, now time.Time) {
	p, i := l.locate(distance(l.target, id))
	if p < 0 {
		return
	}
	pa := &l.paths[p]
	c := &pa.cands[i]
	if now.UnixNano() < c.deadline {
		return // an earlier attempt expired; a retransmission is pending
	}
	switch c.state {
	case inflight:
		pa.inflight--
	case slow:
	default:
		return
	}
	c.state = failed
	l.stats.Failures++
	l.checkDone(p)
}

// expireSoft moves queries past their soft timeout out of the α window
// and appends their retransmissions to dst while attempts remain.
func (l *Lookup) expireSoft(ns int64, dst []Query) []Query {
	for p := range l.paths {
		pa := &l.paths[p]
		if pa.done {
			continue
		}
		for i := range pa.cands {
			c := &pa.cands[i]
			if (c.state != inflight && c.state != slow) || c.soft > ns {
				continue
			}
			if c.state == inflight {
				c.state = slow
				pa.inflight--
				l.stats.Slow++
			}
			c.soft = math.MaxInt64
			if int(c.attempts) < l.cfg.MaxAttempts {
				c.attempts++
				c.soft = ns + c.timeout
				c.deadline = max(c.deadline, ns+c.timeout*int64(l.cfg.HardFactor))
				l.stats.Queries++
				l.stats.Resent++
				dst = append(dst, Query{To: c.Contact, SoftDeadline: time.Unix(0, c.soft), Deadline: time.Unix(0, c.deadline)})
			}
		}
	}
	return dst
}

func (l *Lookup) checkDone(p int) {
	pa := &l.paths[p]
	if pa.done {
		return
	}
	confirmed, open := 0, false
	for i := range pa.cands {
		switch pa.cands[i].state {
		case answered:
			confirmed++
		case fresh, inflight, slow:
			if confirmed < l.cfg.Confirm {
				open = true
			}
		}
		if confirmed >= l.cfg.Confirm || open {
			break
		}
	}
	if confirmed >= l.cfg.Confirm {
		pa.done = true
		return
	}
	if !open {
		pa.done = true
		l.stats.Exhausted = true
	}
	if pa.done && len(l.paths) > 1 && !l.merged && l.Done() {
		l.merge()
	}
}

// merge ends the disjoint phase: every path's candidates go into one list
// and the lookup goes on until the K closest of them all have answered.
// A path captured by liars never asked the honest nodes it was told of;
// here they are asked, and a path that reached the true closest nodes
// already confirmed them, so its result stands.
func (l *Lookup) merge() {
	l.merged = true
	var all []candidate
	for p := range l.paths {
		all = append(all, l.paths[p].cands...)
	}
	slices.SortFunc(all, func(a, b candidate) int { return identityCmp(a.dist, b.dist) })
	busy := 0
	for _, c := range all {
		if c.state == inflight {
			busy++
		}
	}
	l.paths = l.paths[:1]
	l.paths[0] = path{cands: all, inflight: busy}
	l.stats.Exhausted = false
	l.checkDone(0)
}

// Done reports whether every path has ended.
func (l *Lookup) Done() bool {
	for i := range l.paths {
		if !l.paths[i].done {
			return false
		}
	}
	return true
}

// NextDeadline returns the earliest soft timeout of a query in flight on
// a path that has not ended: when the driver must call Next again.
func (l *Lookup) NextDeadline() (time.Time, bool) {
	var first int64
	found := false
	for p := range l.paths {
		if l.paths[p].done {
			continue
		}
		for _, c := range l.paths[p].cands {
			if (c.state == inflight || c.state == slow) && c.soft != math.MaxInt64 && (!found || c.soft < first) {
				first, found = c.soft, true
			}
		}
	}
	return time.Unix(0, first), found
}

// Result appends to dst[:0] the K closest nodes found over all paths,
// nearest first: those that answered, and with Confirm < K also those
// named but not (yet) asked. Nodes that failed are never included.
func (l *Lookup) Result(dst []Found) []Found {
	dst = dst[:0]
	all := make([]candidate, 0, len(l.paths)*l.cfg.K)
	for p := range l.paths {
		n := 0
		for _, c := range l.paths[p].cands {
			if n >= l.cfg.K {
				break
			}
			if c.state == answered || (l.cfg.Confirm < l.cfg.K && c.state != failed) {
				all = append(all, c)
				n++
			}
		}
	}
	slices.SortFunc(all, func(a, b candidate) int { return identityCmp(a.dist, b.dist) })
	for _, c := range all[:min(len(all), l.cfg.K)] {
		dst = append(dst, Found{Contact: c.Contact, Answered: c.state == answered, Token: c.token, Hop: int(c.hop)})
	}
	return dst
}

// Stats returns the counters; Hops and MaxHops describe Result.
func (l *Lookup) Stats() Stats {
	s := l.stats
	res := l.Result(nil)
	if len(res) > 0 {
		s.Hops = res[0].Hop
		for _, f := range res {
			s.MaxHops = max(s.MaxHops, f.Hop)
		}
	}
	return s
}

func (l *Lookup) candidates() int {
	n := 0
	for p := range l.paths {
		n += len(l.paths[p].cands)
	}
	return n
}

// Target returns the id looked up.
func (l *Lookup) Target() identity.ID { return l.target }
