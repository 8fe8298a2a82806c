package routing

import (
	"encoding/binary"

	"github.com/elacity/pc2/core/identity"
)

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
	// keys[i] holds the first 64 bits of dst[i]'s distance, so most
	// comparisons are one integer compare; on the stack for n <= 64.
	var keyBuf [64]uint64
	var keys []uint64
	if n <= len(keyBuf) {
		keys = keyBuf[:n]
	} else {
		keys = make([]uint64, n)
	}
	q := query{target: target, t0: binary.BigEndian.Uint64(target[:8]), n: n, onlyVerified: onlyVerified}
	last := len(t.buckets) - 1
	b := t.bucketIndex(target)
	dst = q.collect(dst, keys, &t.buckets[b])
	if len(dst) == n {
		return dst
	}
	for i := b + 1; i <= last; i++ {
		dst = q.collect(dst, keys, &t.buckets[i])
	}
	for i := b - 1; i >= 0 && len(dst) < n; i-- {
		dst = q.collect(dst, keys, &t.buckets[i])
	}
	return dst
}

type query struct {
	target       identity.ID
	t0           uint64
	n            int
	onlyVerified bool
}

// collect merges b's contacts into dst, kept sorted by distance to target
// and at most n long (bounded insertion: n is small).
// keys (len n) holds the first 64 bits of each dst entry's distance.
func (c *query) collect(dst []Contact, keys []uint64, b *bucket) []Contact {
	for i := range b.entries {
		e := &b.entries[i]
		if c.onlyVerified && (!e.verified || e.failures > 0) {
			continue
		}
		k := binary.BigEndian.Uint64(e.ID[:8]) ^ c.t0
		pos := len(dst)
		for pos > 0 && (k < keys[pos-1] || k == keys[pos-1] && identity.CloserTo(c.target, e.ID, dst[pos-1].ID)) {
			pos--
		}
		if pos >= c.n {
			continue
		}
		if len(dst) < c.n {
			dst = append(dst, Contact{})
		}
		m := len(dst)
		copy(dst[pos+1:], dst[pos:m-1])
		copy(keys[pos+1:m], keys[pos:m-1])
		dst[pos] = e.Contact
		keys[pos] = k
	}
	return dst
}
