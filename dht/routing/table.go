package routing

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"net/netip"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/rtt"
)

// Defaults follow Boson 3.1 (shared/protocols/boson.md §3, §7) and geth's
// subnet limits (shared/research/nat-dht.md §B2).
const (
	DefaultK                  = 16
	DefaultReplacements       = 8
	DefaultMaxPerSubnetBucket = 2
	DefaultMaxPerSubnetTable  = 10
	DefaultMaxFailures        = 5
	DefaultCheckInterval      = 15 * time.Minute
	DefaultHomeCheckInterval  = 2 * time.Minute
	DefaultRetryInterval      = 10 * time.Second
)

// maxBuckets is one bucket per possible common-prefix length.
const maxBuckets = identity.IDSize * 8

// Config sets a table's limits. Zero fields take the defaults above.
type Config struct {
	// Self is the node's own id; it is never admitted.
	Self identity.ID
	// K is the bucket size (Boson: 16).
	K int
	// Replacements is the replacement cache size per bucket (Boson: 8).
	Replacements int
	// MaxPerSubnetBucket and MaxPerSubnetTable bound the contacts of one
	// source unit (IPv4 /24, IPv6 /64), replacements included.
	MaxPerSubnetBucket int
	MaxPerSubnetTable  int
	// MaxFailures consecutive failed requests evict a verified contact.
	// An unverified contact is evicted at its first failure: the table
	// pings an address that never answered it only once.
	MaxFailures int
	// CheckInterval is how long a verified contact may stay silent before
	// the table asks for a liveness check (jittered up to +25% per id).
	CheckInterval time.Duration
	// HomeCheckInterval replaces CheckInterval for the contacts closest
	// to our own id (the last bucket and home buckets): they are the ones
	// every lookup near us ends on, so a dead one there must stop being
	// handed out quickly, or it pushes a live node out of the K-contact
	// answers of all its neighbours.
	HomeCheckInterval time.Duration
	// RetryInterval is the back-off unit after a failure (linear: n
	// failures wait n units), and how soon a check the caller never
	// reported on is handed out again.
	RetryInterval time.Duration
	// DeveloperMode admits loopback and private addresses (tests, the
	// NAT lab). Subnet limits never apply to non-global addresses.
	DeveloperMode bool
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.K, DefaultK)
	def(&c.Replacements, DefaultReplacements)
	def(&c.MaxPerSubnetBucket, DefaultMaxPerSubnetBucket)
	def(&c.MaxPerSubnetTable, DefaultMaxPerSubnetTable)
	def(&c.MaxFailures, DefaultMaxFailures)
	if c.CheckInterval <= 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = DefaultRetryInterval
	}
	if c.HomeCheckInterval <= 0 {
		c.HomeCheckInterval = min(DefaultHomeCheckInterval, c.CheckInterval)
	}
}

// Outcome says what an insertion did.
type Outcome uint8

const (
	// Rejected: the contact was not stored (the error says why).
	Rejected Outcome = iota
	// Added: the contact is new in a bucket.
	Added
	// Updated: the contact was already in a bucket and was refreshed.
	Updated
	// Cached: the contact waits in its bucket's replacement cache.
	Cached
)

func (o Outcome) String() string {
	switch o {
	case Added:
		return "added"
	case Updated:
		return "updated"
	case Cached:
		return "cached"
	}
	return "rejected"
}

// Errors of insertions. They carry no detail so that a flood of bad
// contacts costs no allocation.
var (
	ErrSelf            = errors.New("routing: own id")
	ErrSubnetLimit     = errors.New("routing: subnet limit reached")
	ErrAddressConflict = errors.New("routing: id already known at another live address")
	ErrFull            = errors.New("routing: bucket and replacement cache full of verified contacts")
)

// Entry describes a stored contact (ForEach, Get).
type Entry struct {
	Contact
	Bucket      int
	Replacement bool // in the replacement cache, not handed out
	Verified    bool // answered a request of ours at Addr
	Failures    int  // consecutive failed requests
	LastSeen    time.Time
}

type entry struct {
	Contact
	added     int64 // unix ns
	lastSeen  int64 // unix ns of the last answer; 0 if never
	nextCheck int64 // unix ns
	rtt       rtt.Estimator
	sub       Subnet // source unit of Addr, valid if hasSub
	hasSub    bool
	failures  uint8
	verified  bool
}

func (e *entry) setAddr(a netip.AddrPort) {
	e.Addr = a
	e.sub, e.hasSub = SubnetOf(a.Addr())
}

type bucket struct {
	entries      []entry
	replacements []entry // oldest first
	lastRefresh  int64
}

// Table is a routing table. See the package doc.
type Table struct {
	cfg     Config
	buckets []bucket
	subnets map[Subnet]uint16 // entries and replacements per source unit
	size    int               // entries in buckets
	// minCheck is a lower bound of every bucket entry's nextCheck, so Due
	// returns at once when nothing can be due.
	minCheck int64
}

// New returns an empty table.
func New(cfg Config) *Table {
	cfg.setDefaults()
	t := &Table{cfg: cfg, subnets: make(map[Subnet]uint16)}
	t.buckets = append(t.buckets, t.newBucket(0))
	return t
}

func (t *Table) newBucket(lastRefresh int64) bucket {
	return bucket{entries: make([]entry, 0, t.cfg.K), lastRefresh: lastRefresh}
}

// Config returns the table's configuration with defaults filled in.
func (t *Table) Config() Config { return t.cfg }

// Self returns the node's own id.
func (t *Table) Self() identity.ID { return t.cfg.Self }

// Len returns the number of contacts in buckets (not counting replacements).
func (t *Table) Len() int { return t.size }

// Buckets returns the number of buckets.
func (t *Table) Buckets() int { return len(t.buckets) }

// CommonPrefixLen returns how many leading bits a and b share (256 if equal).
func CommonPrefixLen(a, b identity.ID) int {
	for i := 0; i < identity.IDSize; i += 8 {
		x := binary.BigEndian.Uint64(a[i:]) ^ binary.BigEndian.Uint64(b[i:])
		if x != 0 {
			return i*8 + bits.LeadingZeros64(x)
		}
	}
	return identity.IDSize * 8
}

func (t *Table) bucketIndex(id identity.ID) int {
	return min(CommonPrefixLen(t.cfg.Self, id), len(t.buckets)-1)
}

// BucketOf returns the index of the bucket id belongs to.
func (t *Table) BucketOf(id identity.ID) int { return t.bucketIndex(id) }

func findIn(es []entry, id identity.ID) int {
	k := binary.LittleEndian.Uint64(id[:8]) // cheap filter before the 32-byte compare
	for i := range es {
		if binary.LittleEndian.Uint64(es[i].ID[:8]) == k && es[i].ID == id {
			return i
		}
	}
	return -1
}

func routable(ap netip.AddrPort, dev bool) bool { return Routable(ap, dev) == nil }

// AddUnverified offers a contact that has not answered us at c.Addr: it
// sent us a request, or was restored from disk. It enters a bucket with
// room (and is then due for a check at once) or the replacement cache; it
// never displaces a verified contact and is never handed out by Closest
// with onlyVerified until it answers.
func (t *Table) AddUnverified(c Contact, now time.Time) (Outcome, error) {
	return t.insert(c, now.UnixNano(), false, 0)
}

// Verified records that c answered a request we sent to c.Addr, after rtt
// (0 if unknown). It inserts c if new; a verified contact may take the
// slot of an unverified or failing one in a full bucket.
func (t *Table) Verified(c Contact, now time.Time, sample time.Duration) (Outcome, error) {
	return t.insert(c, now.UnixNano(), true, sample)
}

func (t *Table) insert(c Contact, now int64, verified bool, sample time.Duration) (Outcome, error) {
	if c.ID == t.cfg.Self {
		return Rejected, ErrSelf
	}
	c.Addr = netip.AddrPortFrom(c.Addr.Addr().Unmap(), c.Addr.Port())
	if !routable(c.Addr, t.cfg.DeveloperMode) {
		return Rejected, ErrUnroutable
	}
	bi := t.bucketIndex(c.ID)
	b := &t.buckets[bi]
	if i := findIn(b.entries, c.ID); i >= 0 {
		e := &b.entries[i]
		if err := t.moveAddr(b, e, c.Addr, verified); err != nil {
			return Rejected, err
		}
		if verified {
			was := e.verified
			t.markVerified(e, bi, now, sample)
			if !was {
				t.trimHome(bi) // one more verified contact: farther buckets may shrink
			}
		}
		return Updated, nil
	}
	if i := findIn(b.replacements, c.ID); i >= 0 {
		r := &b.replacements[i]
		if err := t.moveAddr(b, r, c.Addr, verified); err != nil {
			return Rejected, err
		}
		if verified {
			t.markVerified(r, bi, now, sample)
			// Most recently verified last: the first to be promoted.
			v := *r
			copy(b.replacements[i:], b.replacements[i+1:])
			b.replacements[len(b.replacements)-1] = v
		}
		return Cached, nil
	}
	sub, hasSub := SubnetOf(c.Addr.Addr())
	if !t.subnetRoom(b, sub, hasSub, nil) {
		return Rejected, ErrSubnetLimit
	}
	for len(b.entries) >= t.cfg.K && bi == len(t.buckets)-1 && len(t.buckets) < maxBuckets {
		t.split(now)
		bi = t.bucketIndex(c.ID)
		b = &t.buckets[bi]
	}
	e := entry{Contact: c, added: now, nextCheck: now, sub: sub, hasSub: hasSub}
	t.minCheck = min(t.minCheck, now)
	if verified {
		t.markVerified(&e, bi, now, sample)
	}
	if len(b.entries) < t.cfg.K {
		b.entries = append(b.entries, e)
		t.size++
		t.account(&e, 1)
		t.trimHome(bi)
		return Added, nil
	}
	if need := t.homeNeed(bi); need > 0 && t.amongClosest(b, c.ID, need) {
		if len(b.entries) < t.cfg.K+need {
			b.entries = append(b.entries, e)
			t.size++
			t.account(&e, 1)
			t.trimHome(bi)
			return Added, nil
		}
		if verified {
			j := t.farthestFromSelf(b)
			old := b.entries[j]
			t.account(&old, -1)
			b.entries[j] = e
			t.account(&e, 1)
			t.cache(b, old) //nolint:errcheck // dropped if the cache is full of verified contacts
			return Added, nil
		}
	}
	if verified {
		if j := replaceable(b.entries); j >= 0 {
			t.account(&b.entries[j], -1)
			b.entries[j] = e
			t.account(&e, 1)
			return Added, nil
		}
	}
	return t.cache(b, e)
}

// homeNeed returns how many of the K contacts closest to our own id must
// come from bucket bi: K minus what the closer buckets hold. Such a
// "home" bucket may grow to K+need so the table keeps the K closest nodes
// it hears of (S/Kademlia's sibling list, mldht's home-bucket splitting),
// instead of K random ones of the boundary bucket; in a 10,000-node
// network that is what lets nearly every node know its k closest.
func (t *Table) homeNeed(bi int) int {
	if bi == len(t.buckets)-1 {
		return 0 // the last bucket splits instead
	}
	need := t.cfg.K
	for i := bi + 1; i < len(t.buckets) && need > 0; i++ {
		need -= verifiedLen(t.buckets[i].entries)
	}
	return max(need, 0)
}

// verifiedLen counts verified entries: only they make a farther bucket
// unnecessary, so unsolicited contacts cannot shrink home buckets.
func verifiedLen(es []entry) int {
	n := 0
	for i := range es {
		if es[i].verified {
			n++
		}
	}
	return n
}

// amongClosest reports whether id would be among the need contacts of b
// closest to our own id.
func (t *Table) amongClosest(b *bucket, id identity.ID, need int) bool {
	closer := 0
	for i := range b.entries {
		if identity.CloserTo(t.cfg.Self, b.entries[i].ID, id) {
			if closer++; closer >= need {
				return false
			}
		}
	}
	return true
}

// trimHome is called after bucket below grew: buckets farther out may no
// longer be needed for the K closest, so their extras beyond K+need move
// to the replacement cache, farthest from us first.
func (t *Table) trimHome(below int) {
	deeper := 0
	for i := len(t.buckets) - 1; i > below; i-- {
		deeper += verifiedLen(t.buckets[i].entries)
	}
	for bi := below; bi >= 0 && deeper < 2*t.cfg.K; bi-- {
		b := &t.buckets[bi]
		limit := t.cfg.K + max(0, t.cfg.K-deeper)
		if bi == len(t.buckets)-1 {
			limit = t.cfg.K
		}
		for len(b.entries) > limit {
			j := t.farthestFromSelf(b)
			old := b.entries[j]
			b.entries = append(b.entries[:j], b.entries[j+1:]...)
			t.size--
			t.account(&old, -1)
			t.cache(b, old) //nolint:errcheck // dropped if the cache is full of verified contacts
		}
		deeper += verifiedLen(b.entries)
	}
}

func (t *Table) farthestFromSelf(b *bucket) int {
	j := 0
	for i := 1; i < len(b.entries); i++ {
		if identity.CloserTo(t.cfg.Self, b.entries[j].ID, b.entries[i].ID) {
			j = i
		}
	}
	return j
}

// moveAddr handles a known id at a new address: only an answer from the
// new address may re-point a contact, and only one whose old address is
// unverified or failing.
func (t *Table) moveAddr(b *bucket, e *entry, addr netip.AddrPort, verified bool) error {
	if e.Addr == addr {
		return nil
	}
	if !verified || (e.verified && e.failures == 0) {
		return ErrAddressConflict
	}
	sub, hasSub := SubnetOf(addr.Addr())
	if !t.subnetRoom(b, sub, hasSub, e) {
		return ErrSubnetLimit
	}
	t.account(e, -1)
	e.setAddr(addr)
	t.account(e, 1)
	e.rtt = rtt.Estimator{}
	return nil
}

func (t *Table) markVerified(e *entry, bi int, now int64, sample time.Duration) {
	e.verified = true
	e.failures = 0
	e.lastSeen = now
	if sample > 0 {
		e.rtt.Observe(sample)
	}
	// Spread checks by up to +25% so a table filled in one burst is not
	// re-checked in one burst; derived from the id to stay deterministic.
	ci := int64(t.cfg.CheckInterval)
	if bi == len(t.buckets)-1 || t.homeNeed(bi) > 0 {
		ci = int64(t.cfg.HomeCheckInterval)
	}
	jitter := ci / 4 * int64(binary.BigEndian.Uint16(e.ID[30:])) / 65536
	e.nextCheck = now + ci + jitter
	t.minCheck = min(t.minCheck, e.nextCheck)
}

// replaceable picks the bucket entry a verified newcomer may displace:
// an unverified one first, else the one with the most failures.
func replaceable(es []entry) int {
	best, worst := -1, uint8(0)
	for i := range es {
		if !es[i].verified {
			return i
		}
		if es[i].failures > worst {
			best, worst = i, es[i].failures
		}
	}
	return best
}

// cache parks e in b's replacement cache, evicting the oldest unverified
// replacement when full (or the oldest of all if e is verified).
func (t *Table) cache(b *bucket, e entry) (Outcome, error) {
	if b.replacements == nil {
		b.replacements = make([]entry, 0, t.cfg.Replacements)
	}
	if len(b.replacements) >= t.cfg.Replacements {
		victim := -1
		for i := range b.replacements {
			if !b.replacements[i].verified {
				victim = i
				break
			}
		}
		if victim < 0 {
			if !e.verified {
				return Rejected, ErrFull
			}
			victim = 0
		}
		t.account(&b.replacements[victim], -1)
		b.replacements = append(b.replacements[:victim], b.replacements[victim+1:]...)
	}
	b.replacements = append(b.replacements, e)
	t.account(&e, 1)
	return Cached, nil
}

// split divides the last bucket: contacts sharing exactly len-1 prefix
// bits with us stay, closer ones move to a new last bucket. Replacements
// follow their ids, and freed room is filled from the caches.
func (t *Table) split(now int64) {
	L := len(t.buckets) - 1
	t.buckets = append(t.buckets, t.newBucket(t.buckets[L].lastRefresh))
	old, nb := &t.buckets[L], &t.buckets[L+1]
	keep := old.entries[:0]
	for _, e := range old.entries {
		if CommonPrefixLen(t.cfg.Self, e.ID) > L {
			nb.entries = append(nb.entries, e)
		} else {
			keep = append(keep, e)
		}
	}
	clear(old.entries[len(keep):])
	old.entries = keep
	if len(old.replacements) > 0 {
		keepR := old.replacements[:0]
		for _, e := range old.replacements {
			if CommonPrefixLen(t.cfg.Self, e.ID) > L {
				if nb.replacements == nil {
					nb.replacements = make([]entry, 0, t.cfg.Replacements)
				}
				nb.replacements = append(nb.replacements, e)
			} else {
				keepR = append(keepR, e)
			}
		}
		clear(old.replacements[len(keepR):])
		old.replacements = keepR
	}
	t.promote(old, now)
	t.promote(nb, now)
}

// promote fills free bucket slots from the replacement cache, most
// recently verified first.
func (t *Table) promote(b *bucket, now int64) {
	for len(b.entries) < t.cfg.K && len(b.replacements) > 0 { // home extras are not refilled
		pick := len(b.replacements) - 1
		for i := pick; i >= 0; i-- {
			if b.replacements[i].verified {
				pick = i
				break
			}
		}
		e := b.replacements[pick]
		b.replacements = append(b.replacements[:pick], b.replacements[pick+1:]...)
		if !e.verified {
			e.nextCheck = now
		}
		t.minCheck = min(t.minCheck, e.nextCheck)
		b.entries = append(b.entries, e)
		t.size++
	}
}

// subnetRoom reports whether b and the table have room for one more
// contact of subnet s; moving is the entry changing address, if any.
func (t *Table) subnetRoom(b *bucket, s Subnet, limited bool, moving *entry) bool {
	if !limited {
		return true
	}
	if moving != nil && moving.hasSub && moving.sub == s {
		return true // moving within one subnet changes no count
	}
	if int(t.subnets[s]) >= t.cfg.MaxPerSubnetTable {
		return false
	}
	n := 0
	for _, list := range [2][]entry{b.entries, b.replacements} {
		for i := range list {
			if list[i].hasSub && list[i].sub == s {
				n++
			}
		}
	}
	return n < t.cfg.MaxPerSubnetBucket
}

func (t *Table) account(e *entry, delta int) {
	if !e.hasSub {
		return
	}
	s := e.sub
	n := int(t.subnets[s]) + delta
	if n <= 0 {
		delete(t.subnets, s)
		return
	}
	t.subnets[s] = uint16(n)
}

// Failed records that a request to id timed out or failed. A contact with
// MaxFailures consecutive failures, or an unverified one at its first,
// is evicted and the best replacement promoted; a failing replacement is
// dropped. It reports whether id was removed.
func (t *Table) Failed(id identity.ID, now time.Time) bool {
	b := &t.buckets[t.bucketIndex(id)]
	if i := findIn(b.entries, id); i >= 0 {
		e := &b.entries[i]
		if e.failures < 255 {
			e.failures++
		}
		if !e.verified || int(e.failures) >= t.cfg.MaxFailures {
			t.removeAt(b, i, now.UnixNano())
			return true
		}
		e.nextCheck = now.UnixNano() + int64(e.failures)*int64(t.cfg.RetryInterval)
		t.minCheck = min(t.minCheck, e.nextCheck)
		return false
	}
	if i := findIn(b.replacements, id); i >= 0 {
		t.account(&b.replacements[i], -1)
		b.replacements = append(b.replacements[:i], b.replacements[i+1:]...)
		return true
	}
	return false
}

// Remove drops id from the table (for example when its address now
// answers with another id). It reports whether id was present.
func (t *Table) Remove(id identity.ID, now time.Time) bool {
	b := &t.buckets[t.bucketIndex(id)]
	if i := findIn(b.entries, id); i >= 0 {
		t.removeAt(b, i, now.UnixNano())
		return true
	}
	if i := findIn(b.replacements, id); i >= 0 {
		t.account(&b.replacements[i], -1)
		b.replacements = append(b.replacements[:i], b.replacements[i+1:]...)
		return true
	}
	return false
}

func (t *Table) removeAt(b *bucket, i int, now int64) {
	t.account(&b.entries[i], -1)
	b.entries = append(b.entries[:i], b.entries[i+1:]...)
	t.size--
	t.promote(b, now)
}

// Contains reports whether id is in a bucket (not only a replacement).
func (t *Table) Contains(id identity.ID) bool {
	return findIn(t.buckets[t.bucketIndex(id)].entries, id) >= 0
}

// Get returns what the table knows about id.
func (t *Table) Get(id identity.ID) (Entry, bool) {
	bi := t.bucketIndex(id)
	b := &t.buckets[bi]
	if i := findIn(b.entries, id); i >= 0 {
		return b.entries[i].info(bi, false), true
	}
	if i := findIn(b.replacements, id); i >= 0 {
		return b.replacements[i].info(bi, true), true
	}
	return Entry{}, false
}

func (e *entry) info(bucket int, repl bool) Entry {
	var seen time.Time
	if e.lastSeen != 0 {
		seen = time.Unix(0, e.lastSeen)
	}
	return Entry{Contact: e.Contact, Bucket: bucket, Replacement: repl, Verified: e.verified,
		Failures: int(e.failures), LastSeen: seen}
}

// RTT returns the round-trip estimate of a stored contact.
func (t *Table) RTT(id identity.ID) (rtt.Estimator, bool) {
	b := &t.buckets[t.bucketIndex(id)]
	if i := findIn(b.entries, id); i >= 0 {
		return b.entries[i].rtt, b.entries[i].rtt.Valid()
	}
	if i := findIn(b.replacements, id); i >= 0 {
		return b.replacements[i].rtt, b.replacements[i].rtt.Valid()
	}
	return rtt.Estimator{}, false
}

// ForEach calls fn for every bucket entry and replacement until fn
// returns false.
func (t *Table) ForEach(fn func(Entry) bool) {
	for bi := range t.buckets {
		b := &t.buckets[bi]
		for i := range b.entries {
			if !fn(b.entries[i].info(bi, false)) {
				return
			}
		}
		for i := range b.replacements {
			if !fn(b.replacements[i].info(bi, true)) {
				return
			}
		}
	}
}
