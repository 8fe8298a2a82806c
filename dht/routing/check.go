package routing

import (
	"math"
	"time"

	"github.com/elacity/pc2/core/identity"
)

// Due appends to dst[:0] up to max bucket contacts whose liveness check is
// due at now (unverified contacts at once, silent verified ones after
// CheckInterval, failing ones after their back-off) and returns it. The
// caller pings each and reports Verified or Failed; a check it never
// reports on is handed out again after RetryInterval.
func (t *Table) Due(now time.Time, dst []Contact, max int) []Contact {
	dst = dst[:0]
	ns := now.UnixNano()
	if ns < t.minCheck {
		return dst
	}
	again := ns + int64(t.cfg.RetryInterval)
	earliest := int64(math.MaxInt64)
	for bi := range t.buckets {
		b := &t.buckets[bi]
		for i := range b.entries {
			e := &b.entries[i]
			if e.nextCheck <= ns && len(dst) < max {
				dst = append(dst, e.Contact)
				e.nextCheck = again
			}
			earliest = min(earliest, e.nextCheck)
		}
	}
	t.minCheck = earliest
	return dst
}

// NextDue returns when the earliest liveness check falls due, and false if
// the table is empty.
func (t *Table) NextDue() (time.Time, bool) {
	var first int64
	found := false
	for bi := range t.buckets {
		for _, e := range t.buckets[bi].entries {
			if !found || e.nextCheck < first {
				first, found = e.nextCheck, true
			}
		}
	}
	if !found {
		return time.Time{}, false
	}
	return time.Unix(0, first), true
}

// Touch records that a lookup for target ran at now, which counts as a
// refresh of target's bucket.
func (t *Table) Touch(target identity.ID, now time.Time) {
	b := &t.buckets[t.bucketIndex(target)]
	b.lastRefresh = max(b.lastRefresh, now.UnixNano())
}

// RefreshTargets appends to dst[:0] one lookup target for every bucket not
// refreshed during the last every, and marks those buckets refreshed at
// now. random supplies the random bits of each target (so the simulator
// stays deterministic); the result falls in the bucket it refreshes.
func (t *Table) RefreshTargets(now time.Time, every time.Duration, random func() identity.ID, dst []identity.ID) []identity.ID {
	dst = dst[:0]
	ns := now.UnixNano()
	for bi := range t.buckets {
		b := &t.buckets[bi]
		if ns-b.lastRefresh < int64(every) {
			continue
		}
		b.lastRefresh = ns
		dst = append(dst, t.idInBucket(bi, random()))
	}
	return dst
}

// idInBucket turns random bits into an id of bucket bi: it shares exactly
// bi leading bits with Self (at least bi for the last bucket).
func (t *Table) idInBucket(bi int, r identity.ID) identity.ID {
	self := t.cfg.Self
	full := bi / 8
	copy(r[:full], self[:full])
	if full < len(r) {
		bit := uint(7 - bi%8)
		keep := byte(0xff) << (bit + 1) // the bits above bi in this byte
		if bi == len(t.buckets)-1 {
			r[full] = self[full]&keep | r[full]&^keep
		} else {
			flip := byte(1) << bit
			r[full] = self[full]&keep | (^self[full])&flip | r[full]&^(keep|flip)
		}
	}
	return r
}
