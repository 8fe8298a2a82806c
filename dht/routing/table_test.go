package routing

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
)

var t0 = time.Unix(1_800_000_000, 0)

func randID(r *rand.Rand) identity.ID {
	var id identity.ID
	for i := 0; i < len(id); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			id[i+j] = byte(v >> (8 * j))
		}
	}
	return id
}

// pubAddr gives the i-th contact its own global /24 (11.x.y.1).
func pubAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{11 + byte(i>>16), byte(i >> 8), byte(i), 1}), 39001)
}

// idWithPrefix returns an id sharing exactly cpl leading bits with self.
func idWithPrefix(r *rand.Rand, self identity.ID, cpl int) identity.ID {
	t := New(Config{Self: self})
	for len(t.buckets) <= cpl {
		t.buckets = append(t.buckets, bucket{})
	}
	t.buckets = append(t.buckets, bucket{}) // make cpl a non-last bucket
	return t.idInBucket(cpl, randID(r))
}

func checkInvariants(t *testing.T, tb *Table) {
	t.Helper()
	total := 0
	subnets := map[Subnet]int{}
	for bi, b := range tb.buckets {
		if len(b.entries) > 2*tb.cfg.K || len(b.replacements) > tb.cfg.Replacements {
			t.Fatalf("bucket %d: %d entries, %d replacements", bi, len(b.entries), len(b.replacements))
		}
		perBucket := map[Subnet]int{}
		for _, list := range [][]entry{b.entries, b.replacements} {
			for _, e := range list {
				cpl := CommonPrefixLen(tb.cfg.Self, e.ID)
				if bi < len(tb.buckets)-1 && cpl != bi || bi == len(tb.buckets)-1 && cpl < bi {
					t.Fatalf("id with prefix %d in bucket %d of %d", cpl, bi, len(tb.buckets))
				}
				if s, ok := SubnetOf(e.Addr.Addr()); ok {
					perBucket[s]++
					subnets[s]++
				}
			}
		}
		for s, n := range perBucket {
			if n > tb.cfg.MaxPerSubnetBucket {
				t.Fatalf("bucket %d holds %d of subnet %v", bi, n, s)
			}
		}
		total += len(b.entries)
	}
	if total != tb.size {
		t.Fatalf("size %d, counted %d", tb.size, total)
	}
	for s, n := range subnets {
		if n > tb.cfg.MaxPerSubnetTable || int(tb.subnets[s]) != n {
			t.Fatalf("subnet %v: %d stored, accounted %d", s, n, tb.subnets[s])
		}
	}
	if len(subnets) != len(tb.subnets) {
		t.Fatalf("subnet map has %d keys, %d in use", len(tb.subnets), len(subnets))
	}
}

func TestSplitAndInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	self := randID(r)
	tb := New(Config{Self: self})
	for i := range 5000 {
		if _, err := tb.Verified(Contact{randID(r), pubAddr(i)}, t0, 0); err != nil && !errors.Is(err, ErrFull) {
			t.Fatal(err)
		}
	}
	checkInvariants(t, tb)
	// 5000 uniform ids: buckets 0..~7 are full, so the table split well
	// past a single bucket, and every full bucket holds exactly K.
	if tb.Buckets() < 8 {
		t.Fatalf("only %d buckets after 5000 contacts", tb.Buckets())
	}
	for bi := range 6 {
		if n := len(tb.buckets[bi].entries); n != tb.cfg.K {
			t.Fatalf("far bucket %d has %d entries, want %d", bi, n, tb.cfg.K)
		}
	}
	if tb.Len() < 6*tb.cfg.K {
		t.Fatalf("table holds %d", tb.Len())
	}
}

// TestKeepsKClosest: fed a whole network in random order, a table must
// hold the K nodes closest to its own id (the boundary bucket keeps the
// closest, not K random ones), and still at most K in far buckets.
func TestKeepsKClosest(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(100+seed, 7))
		self := randID(r)
		tb := New(Config{Self: self})
		var all []Contact
		for i := range 3000 {
			all = append(all, Contact{randID(r), pubAddr(i)})
		}
		for _, i := range r.Perm(len(all)) {
			if seed%2 == 0 {
				tb.Verified(all[i], t0, 0)
			} else {
				tb.AddUnverified(all[i], t0) // inbound contacts, then verified by pings
			}
		}
		if seed%2 == 1 {
			for _, c := range tb.Due(t0, nil, 10000) {
				tb.Verified(c, t0, 0)
			}
		}
		slices.SortFunc(all, func(a, b Contact) int {
			return identity.Compare(identity.Distance(a.ID, self), identity.Distance(b.ID, self))
		})
		for _, c := range all[:16] {
			if !tb.Contains(c.ID) {
				t.Fatalf("seed %d: one of the 16 closest (%v) is missing; table %d entries", seed, c, tb.Len())
			}
		}
		if got := tb.Closest(nil, self, 16, true); len(got) != 16 || got[15].ID != all[15].ID {
			t.Fatalf("seed %d: Closest(self) does not return the 16 closest", seed)
		}
		for bi := range 4 {
			if n := len(tb.buckets[bi].entries); n != 16 {
				t.Fatalf("seed %d: far bucket %d holds %d", seed, bi, n)
			}
		}
		checkInvariants(t, tb)
	}
}

func TestOwnBucketSplitsOnlyNearSelf(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	self := randID(r)
	tb := New(Config{Self: self})
	// 50 contacts in the far half (prefix 0): bucket 0 split once from
	// the own bucket; with nothing closer known it is the home bucket and
	// keeps 2K (the closest known), the rest go to replacements.
	for i := range 50 {
		tb.Verified(Contact{idWithPrefix(r, self, 0), pubAddr(i)}, t0, 0)
	}
	if tb.Buckets() != 2 {
		t.Fatalf("%d buckets; want 2 (bucket 0 split once from the own bucket)", tb.Buckets())
	}
	if len(tb.buckets[0].entries) != 2*tb.cfg.K || len(tb.buckets[0].replacements) != tb.cfg.Replacements {
		t.Fatalf("bucket 0: %d entries %d replacements", len(tb.buckets[0].entries), len(tb.buckets[0].replacements))
	}
	// Closer contacts arrive: bucket 0 is no longer needed for the K
	// closest and shrinks back to K, its extras going to replacements.
	for i := range 20 {
		tb.Verified(Contact{idWithPrefix(r, self, 1+i%5), pubAddr(100 + i)}, t0, 0)
	}
	if len(tb.buckets[0].entries) != tb.cfg.K || len(tb.buckets[0].replacements) != tb.cfg.Replacements {
		t.Fatalf("bucket 0: %d entries %d replacements", len(tb.buckets[0].entries), len(tb.buckets[0].replacements))
	}
	checkInvariants(t, tb)
}

func TestClosestMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	self := randID(r)
	tb := New(Config{Self: self})
	for i := range 3000 {
		c := Contact{randID(r), pubAddr(i)}
		if i%5 == 0 {
			tb.AddUnverified(c, t0)
		} else {
			tb.Verified(c, t0, 0)
		}
	}
	var all, live []Contact
	tb.ForEach(func(e Entry) bool {
		if !e.Replacement {
			all = append(all, e.Contact)
			if e.Verified {
				live = append(live, e.Contact)
			}
		}
		return true
	})
	buf := make([]Contact, 0, 32)
	for trial := range 500 {
		target := randID(r)
		if trial%10 == 0 {
			target = idWithPrefix(r, self, 6+trial%20) // targets near us
		}
		for _, only := range []bool{false, true} {
			src := all
			if only {
				src = live
			}
			want := slices.Clone(src)
			slices.SortFunc(want, func(a, b Contact) int {
				return identity.Compare(identity.Distance(a.ID, target), identity.Distance(b.ID, target))
			})
			want = want[:min(20, len(want))]
			got := tb.Closest(buf, target, 20, only)
			if !slices.Equal(got, want) {
				t.Fatalf("trial %d onlyVerified=%v: Closest differs from brute force\n got %v\nwant %v", trial, only, got, want)
			}
		}
	}
}

func TestClosestNeverHandsOutUnverified(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	self := randID(r)
	tb := New(Config{Self: self})
	// A flood of unsolicited contacts (e.g. a victim's address injected
	// with many ids): none is ever handed out.
	victims := map[identity.ID]bool{}
	for i := range 200 {
		c := Contact{randID(r), pubAddr(i)}
		victims[c.ID] = true
		if _, err := tb.AddUnverified(c, t0); err != nil && !errors.Is(err, ErrFull) {
			t.Fatal(err)
		}
	}
	if tb.Len() == 0 {
		t.Fatal("unverified contacts were not stored at all")
	}
	if got := tb.Closest(nil, randID(r), 16, true); len(got) != 0 {
		t.Fatalf("handed out %d unverified contacts", len(got))
	}
	if got := tb.Closest(nil, randID(r), 16, false); len(got) != 16 {
		t.Fatalf("own lookups should see unverified contacts, got %d", len(got))
	}
	// One answers: it alone becomes visible. Then it fails once: hidden.
	var one Contact
	tb.ForEach(func(e Entry) bool {
		if !e.Replacement {
			one = e.Contact
			return false
		}
		return true
	})
	tb.Verified(one, t0, 30*time.Millisecond)
	got := tb.Closest(nil, randID(r), 16, true)
	if len(got) != 1 || got[0] != one {
		t.Fatalf("after one answer got %v", got)
	}
	tb.Failed(one.ID, t0)
	if got := tb.Closest(nil, randID(r), 16, true); len(got) != 0 {
		t.Fatalf("a failing contact is still handed out: %v", got)
	}
	// Snapshot persists only verified, healthy contacts.
	tb.Verified(one, t0, 0)
	if s := tb.Snapshot(nil); len(s) != 1 || s[0] != one {
		t.Fatalf("snapshot %v", s)
	}
}

func TestVerifiedDisplacesUnverifiedNeverTheReverse(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	self := randID(r)
	tb := New(Config{Self: self})
	for i := range 24 { // closer buckets hold K: bucket 0 is not home
		tb.Verified(Contact{idWithPrefix(r, self, 1+i%6), pubAddr(1000 + i)}, t0, 0)
	}
	for i := range 16 {
		tb.Verified(Contact{idWithPrefix(r, self, 0), pubAddr(i)}, t0, 0)
	}
	// Bucket 0 is full of verified contacts: unverified go to the cache.
	u := Contact{idWithPrefix(r, self, 0), pubAddr(100)}
	if o, _ := tb.AddUnverified(u, t0); o != Cached {
		t.Fatalf("unverified into a full bucket: %v", o)
	}
	// Make one bucket entry unverified by restoring into a fresh table.
	tb2 := New(Config{Self: self})
	for i := range 24 {
		tb2.Verified(Contact{idWithPrefix(r, self, 1+i%6), pubAddr(2000 + i)}, t0, 0)
	}
	var cs []Contact
	for i := range 16 {
		cs = append(cs, Contact{idWithPrefix(r, self, 0), pubAddr(200 + i)})
	}
	if n := tb2.Restore(cs, t0); n != 16 {
		t.Fatalf("restored %d", n)
	}
	v := Contact{idWithPrefix(r, self, 0), pubAddr(300)}
	if o, err := tb2.Verified(v, t0, 0); o != Added || err != nil {
		t.Fatalf("verified newcomer vs unverified bucket: %v %v", o, err)
	}
	if !tb2.Contains(v.ID) || len(tb2.buckets[0].entries) != 16 {
		t.Fatalf("newcomer not in bucket or size changed: %d", tb2.Len())
	}
	checkInvariants(t, tb)
	checkInvariants(t, tb2)
}

func TestEvictionAndPromotion(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	self := randID(r)
	tb := New(Config{Self: self, MaxFailures: 3})
	// Closer buckets hold K contacts, so bucket 0 is not a home bucket.
	for i := range 24 {
		tb.Verified(Contact{idWithPrefix(r, self, 1+i%6), pubAddr(1000 + i)}, t0, 0)
	}
	var members []Contact
	for i := range 16 {
		c := Contact{idWithPrefix(r, self, 0), pubAddr(i)}
		members = append(members, c)
		tb.Verified(c, t0, 0)
	}
	unv := Contact{idWithPrefix(r, self, 0), pubAddr(50)}
	ver := Contact{idWithPrefix(r, self, 0), pubAddr(51)}
	tb.AddUnverified(unv, t0)
	if o, _ := tb.Verified(ver, t0, 0); o != Cached {
		t.Fatalf("verified newcomer into a healthy full bucket: %v (must not evict live contacts)", o)
	}
	victim := members[3]
	for i := range 2 {
		if tb.Failed(victim.ID, t0) {
			t.Fatalf("evicted after %d failures, MaxFailures is 3", i+1)
		}
	}
	if !tb.Failed(victim.ID, t0) {
		t.Fatal("not evicted after 3 consecutive failures")
	}
	if tb.Contains(victim.ID) {
		t.Fatal("evicted contact still present")
	}
	if !tb.Contains(ver.ID) {
		t.Fatal("the verified replacement was not promoted first")
	}
	if tb.Contains(unv.ID) || len(tb.buckets[0].entries) != 16 {
		t.Fatalf("unexpected promotion: len %d", tb.Len())
	}
	// A success resets the failure count.
	m := members[5]
	tb.Failed(m.ID, t0)
	tb.Failed(m.ID, t0)
	tb.Verified(m, t0, 0)
	tb.Failed(m.ID, t0)
	tb.Failed(m.ID, t0)
	if !tb.Contains(m.ID) {
		t.Fatal("failures were not reset by an answer")
	}
	// An unverified bucket contact goes at its first failure.
	tb3 := New(Config{Self: self})
	tb3.AddUnverified(unv, t0)
	if !tb3.Failed(unv.ID, t0) || tb3.Contains(unv.ID) {
		t.Fatal("unverified contact survived a failed check")
	}
	checkInvariants(t, tb)
}

func TestSubnetLimits(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	self := randID(r)
	for _, fam := range []string{"ipv4", "ipv6"} {
		tb := New(Config{Self: self})
		// Honest background so the table has many buckets.
		for i := range 2000 {
			tb.Verified(Contact{randID(r), pubAddr(i)}, t0, 0)
		}
		// 1,000 attacker ids from one /24 (or /64), all of which answer,
		// many aimed right next to us.
		for i := range 1000 {
			var a netip.Addr
			if fam == "ipv4" {
				a = netip.AddrFrom4([4]byte{66, 66, 66, byte(1 + i%250)})
			} else {
				a = netip.AddrFrom16([16]byte{0x2a, 0x01, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, byte(i >> 8), byte(i), 0, 1})
			}
			id := randID(r)
			if i%2 == 0 {
				id = idWithPrefix(r, self, 1+i%30)
			}
			tb.Verified(Contact{id, netip.AddrPortFrom(a, uint16(40000+i))}, t0, 0)
			tb.AddUnverified(Contact{randID(r), netip.AddrPortFrom(a, uint16(50000+i))}, t0)
		}
		perBucket := map[int]int{}
		total := 0
		tb.ForEach(func(e Entry) bool {
			if a := e.Addr.Addr(); a.Is4() && a.As4()[0] == 66 || a.Is6() && a.As16()[0] == 0x2a {
				perBucket[e.Bucket]++
				total++
			}
			return true
		})
		for b, n := range perBucket {
			if n > 2 {
				t.Fatalf("%s: attacker holds %d slots in bucket %d", fam, n, b)
			}
		}
		if total > 10 || total == 0 {
			t.Fatalf("%s: attacker holds %d slots in the table, want 1..10", fam, total)
		}
		checkInvariants(t, tb)
	}
	// All attacker ids aimed at one bucket: the per-bucket limit binds
	// before the per-table one.
	tb := New(Config{Self: self})
	for i := range 2000 {
		tb.Verified(Contact{randID(r), pubAddr(i)}, t0, 0)
	}
	if tb.Buckets() < 5 {
		t.Fatalf("background table has %d buckets", tb.Buckets())
	}
	for i := range 100 {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{66, 66, 66, byte(1 + i)}), 39001)
		tb.Verified(Contact{idWithPrefix(r, self, 3), a}, t0, 0)
	}
	n := 0
	tb.ForEach(func(e Entry) bool {
		if e.Addr.Addr().As4()[0] == 66 {
			if e.Bucket != 3 {
				t.Fatalf("attacker id landed in bucket %d", e.Bucket)
			}
			n++
		}
		return true
	})
	if n != 2 {
		t.Fatalf("one /24 aimed at bucket 3 holds %d slots there, want exactly 2", n)
	}
	// Another /24 still gets in: the limit is per source unit.
	if o, err := tb.Verified(Contact{idWithPrefix(r, self, 3), pubAddr(5000)}, t0, 0); o != Cached {
		t.Fatalf("other subnet refused: %v %v", o, err)
	}
}

func TestDeveloperModeAndBogons(t *testing.T) {
	self := identity.ID{1}
	loop := Contact{identity.ID{2}, netip.MustParseAddrPort("127.0.0.1:39001")}
	priv := Contact{identity.ID{3}, netip.MustParseAddrPort("192.168.1.5:39001")}
	doc := Contact{identity.ID{4}, netip.MustParseAddrPort("203.0.113.9:39001")}
	mapped := Contact{identity.ID{5}, netip.MustParseAddrPort("[::ffff:10.0.0.1]:39001")}
	zeroPort := Contact{identity.ID{6}, netip.MustParseAddrPort("11.1.1.1:0")}
	pub := Contact{identity.ID{7}, netip.MustParseAddrPort("11.1.1.1:39001")}
	tb := New(Config{Self: self})
	for _, c := range []Contact{loop, priv, doc, mapped, zeroPort} {
		if o, err := tb.Verified(c, t0, 0); o != Rejected || !errors.Is(err, ErrUnroutable) {
			t.Fatalf("%v admitted outside developer mode: %v %v", c, o, err)
		}
	}
	if _, err := tb.Verified(Contact{self, pub.Addr}, t0, 0); !errors.Is(err, ErrSelf) {
		t.Fatalf("own id admitted: %v", err)
	}
	if o, err := tb.Verified(pub, t0, 0); o != Added {
		t.Fatalf("public contact: %v %v", o, err)
	}
	dev := New(Config{Self: self, DeveloperMode: true})
	for _, c := range []Contact{loop, priv, doc, mapped} {
		if o, err := dev.Verified(c, t0, 0); o != Added {
			t.Fatalf("%v refused in developer mode: %v", c, err)
		}
	}
	if _, err := dev.Verified(zeroPort, t0, 0); !errors.Is(err, ErrUnroutable) {
		t.Fatal("port 0 admitted in developer mode")
	}
	// Loopback is exempt from subnet limits (every lab node shares it).
	r := rand.New(rand.NewPCG(15, 16))
	for i := range 40 {
		dev.Verified(Contact{randID(r), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(1000+i))}, t0, 0)
	}
	if dev.Len() < 30 {
		t.Fatalf("developer-mode loopback contacts limited: %d", dev.Len())
	}
	if got := dev.Closest(nil, identity.ID{}, 100, true); len(got) != dev.Len() {
		t.Fatal("developer-mode contacts not handed out")
	}
	for _, c := range dev.Closest(nil, identity.ID{}, 100, true) {
		if c.Addr.Addr().Is4In6() {
			t.Fatalf("mapped address stored unmapped? %v", c)
		}
	}
}

func TestAddressConflict(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	self := randID(r)
	tb := New(Config{Self: self})
	c := Contact{randID(r), pubAddr(1)}
	tb.Verified(c, t0, 0)
	moved := Contact{c.ID, pubAddr(2)}
	if _, err := tb.AddUnverified(moved, t0); !errors.Is(err, ErrAddressConflict) {
		t.Fatalf("unverified claim re-pointed a live contact: %v", err)
	}
	if _, err := tb.Verified(moved, t0, 0); !errors.Is(err, ErrAddressConflict) {
		t.Fatalf("a live contact was re-pointed: %v", err)
	}
	tb.Failed(c.ID, t0)
	if o, err := tb.Verified(moved, t0, 0); o != Updated || err != nil {
		t.Fatalf("a failing contact that answers elsewhere should move: %v %v", o, err)
	}
	if e, _ := tb.Get(c.ID); e.Addr != moved.Addr || !e.Verified || e.Failures != 0 {
		t.Fatalf("entry after move: %+v", e)
	}
	checkInvariants(t, tb)
}

func TestLivenessSchedule(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	self := randID(r)
	cfg := Config{Self: self, CheckInterval: time.Minute, RetryInterval: 5 * time.Second}
	tb := New(cfg)
	v := Contact{randID(r), pubAddr(1)}
	u := Contact{randID(r), pubAddr(2)}
	tb.Verified(v, t0, 0)
	tb.AddUnverified(u, t0)
	due := tb.Due(t0, nil, 10)
	if len(due) != 1 || due[0] != u {
		t.Fatalf("at t0 due %v, want only the unverified one", due)
	}
	if again := tb.Due(t0.Add(time.Second), nil, 10); len(again) != 0 {
		t.Fatalf("check handed out twice within the retry interval: %v", again)
	}
	if again := tb.Due(t0.Add(5*time.Second), nil, 10); len(again) != 1 {
		t.Fatalf("unreported check not handed out again after RetryInterval: %v", again)
	}
	tb.Verified(u, t0.Add(5*time.Second), 0)
	next, ok := tb.NextDue()
	if !ok || next.Before(t0.Add(time.Minute)) || next.After(t0.Add(75*time.Second)) {
		t.Fatalf("next check %v, want within [1m, 1m15s] of t0", next.Sub(t0))
	}
	if d := tb.Due(t0.Add(59*time.Second), nil, 10); len(d) != 0 {
		t.Fatalf("verified contact checked before CheckInterval: %v", d)
	}
	if d := tb.Due(t0.Add(2*time.Minute), nil, 10); len(d) != 2 {
		t.Fatalf("silent contacts not due after CheckInterval+jitter: %v", d)
	}
	// Back-off after failures: n failures wait n units.
	tb.Failed(v.ID, t0.Add(2*time.Minute))
	tb.Failed(v.ID, t0.Add(2*time.Minute))
	if d := tb.Due(t0.Add(2*time.Minute+9*time.Second), nil, 10); slices.Contains(d, v) {
		t.Fatal("retried before the back-off")
	}
	if d := tb.Due(t0.Add(2*time.Minute+10*time.Second), nil, 10); !slices.Contains(d, v) {
		t.Fatal("not retried after the back-off")
	}
	if d := tb.Due(t0.Add(time.Hour), nil, 1); len(d) != 1 {
		t.Fatalf("max not honoured: %d", len(d))
	}
}

func TestRefreshTargets(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	self := randID(r)
	tb := New(Config{Self: self})
	for i := range 1000 {
		tb.Verified(Contact{randID(r), pubAddr(i)}, t0, 0)
	}
	rnd := func() identity.ID { return randID(r) }
	targets := tb.RefreshTargets(t0.Add(time.Hour), 15*time.Minute, rnd, nil)
	if len(targets) != tb.Buckets() {
		t.Fatalf("%d targets for %d stale buckets", len(targets), tb.Buckets())
	}
	seen := map[int]bool{}
	for _, id := range targets {
		seen[tb.BucketOf(id)] = true
	}
	if len(seen) != tb.Buckets() {
		t.Fatalf("targets cover %d of %d buckets", len(seen), tb.Buckets())
	}
	if again := tb.RefreshTargets(t0.Add(time.Hour+time.Minute), 15*time.Minute, rnd, nil); len(again) != 0 {
		t.Fatalf("refreshed buckets offered again: %d", len(again))
	}
	tb.Touch(targets[0], t0.Add(2*time.Hour))
	if again := tb.RefreshTargets(t0.Add(2*time.Hour), 15*time.Minute, rnd, nil); len(again) != tb.Buckets()-1 {
		t.Fatalf("a touched bucket was offered for refresh: %d", len(again))
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	cs := []Contact{
		{randID(r), netip.MustParseAddrPort("11.2.3.4:39001")},
		{randID(r), netip.MustParseAddrPort("[2a01::1]:39001")},
	}
	b := AppendSnapshot(nil, cs)
	got, err := ParseSnapshot(b, 100)
	if err != nil || !slices.Equal(got, cs) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"magic":     []byte("XX\x01\x00"),
		"count":     append([]byte("RT\x01"), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"varint":    []byte("RT\x01\x80\x00"),
		"truncated": b[:len(b)-1],
		"trailing":  append(slices.Clone(b), 0),
		"family":    func() []byte { c := slices.Clone(b); c[4+32] = 5; return c }(),
	} {
		if _, err := ParseSnapshot(bad, 100); !errors.Is(err, ErrSnapshot) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ParseSnapshot(b, 1); !errors.Is(err, ErrSnapshot) {
		t.Error("max not enforced")
	}
	tb := New(Config{Self: randID(r)})
	if n := tb.Restore(got, t0); n != 2 {
		t.Fatalf("restored %d", n)
	}
	if len(tb.Closest(nil, randID(r), 10, true)) != 0 {
		t.Fatal("restored contacts handed out before they answered")
	}
}

func TestHomeContactsCheckedSooner(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	self := randID(r)
	tb := New(Config{Self: self, CheckInterval: 15 * time.Minute, HomeCheckInterval: 2 * time.Minute})
	var all []Contact
	for i := range 3000 {
		all = append(all, Contact{randID(r), pubAddr(i)})
	}
	// Twice: in the first pass far buckets were briefly the closest known
	// (home) and got the short interval; answers after that do not.
	for range 2 {
		for _, c := range all {
			tb.Verified(c, t0, 0)
		}
	}
	due := tb.Due(t0.Add(3*time.Minute), nil, 10000)
	home := tb.Closest(nil, self, 16, true)
	for _, c := range home {
		if !slices.Contains(due, c) {
			t.Fatalf("home contact %v not due after 3 min", c)
		}
	}
	for _, c := range due {
		if b := tb.BucketOf(c.ID); b < 2 {
			t.Fatalf("far contact (bucket %d) checked after 3 min, CheckInterval is 15", b)
		}
	}
}
