package routing

import "github.com/elacity/pc2/core/identity"

// Closest writes into dst[:0] the at most n bucket contacts closest to
// target, nearest first, and returns it. With onlyVerified it hands out
// only contacts that answered us at their address and have not failed
// since: what a FIND_NODE answer must use, so that an address injected by
// a third party is never propagated (victim injection, nat-dht.md §B3).
// The node's own lookups may pass false to also try unverified contacts.
// It does not allocate when cap(dst) >= n.
func (t *Table) Closest(dst []Contact, target identity.ID, n int, onlyVerified bool) []Contact {
	dst = dst[:0]
	if n <= 0 {
		return dst
	}
	// Buckets fall into three groups by XOR distance to target, each
	// strictly farther than the one before: target's own bucket b; the
	// buckets closer to us than b (all at the same leading distance bit);
	// then b-1, b-2, ... So the scan can stop at the first group boundary
	// where n contacts are in hand.
	last := len(t.buckets) - 1
	b := t.bucketIndex(target)
	dst = t.collect(dst, &t.buckets[b], target, n, onlyVerified)
	if len(dst) == n {
		return dst
	}
	for i := b + 1; i <= last; i++ {
		dst = t.collect(dst, &t.buckets[i], target, n, onlyVerified)
	}
	for i := b - 1; i >= 0 && len(dst) < n; i-- {
		dst = t.collect(dst, &t.buckets[i], target, n, onlyVerified)
	}
	return dst
}

// collect merges b's contacts into dst, kept sorted by distance to target
// and at most n long (bounded insertion: n is small).
func (t *Table) collect(dst []Contact, b *bucket, target identity.ID, n int, onlyVerified bool) []Contact {
	for i := range b.entries {
		e := &b.entries[i]
		if onlyVerified && (!e.verified || e.failures > 0) {
			continue
		}
		pos := len(dst)
		for pos > 0 && identity.CloserTo(target, e.ID, dst[pos-1].ID) {
			pos--
		}
		if pos >= n {
			continue
		}
		if len(dst) < n {
			dst = append(dst, Contact{})
		}
		copy(dst[pos+1:], dst[pos:len(dst)-1])
		dst[pos] = e.Contact
	}
	return dst
}
