package routing

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/elacity/pc2/core/identity"
)

// Snapshot appends to dst[:0] every verified bucket contact that has not
// failed since, for the node to persist.
func (t *Table) Snapshot(dst []Contact) []Contact {
	dst = dst[:0]
	for bi := range t.buckets {
		for _, e := range t.buckets[bi].entries {
			if e.verified && e.failures == 0 {
				dst = append(dst, e.Contact)
			}
		}
	}
	return dst
}

// Restore offers persisted contacts to the table as unverified: an address
// that answered a previous run may since belong to someone else, so it is
// checked again before Closest with onlyVerified hands it out. It returns
// how many were stored (in buckets or replacement caches).
func (t *Table) Restore(cs []Contact, now time.Time) int {
	n := 0
	for _, c := range cs {
		if o, _ := t.AddUnverified(c, now); o != Rejected {
			n++
		}
	}
	return n
}

// Snapshot encoding, version 1:
//
//	"RT" 0x01 count(uvarint) { id[32] family(4|6) ip[4|16] port[2 BE] }*
//
// It is what the node writes to its database; ParseSnapshot reads it back
// and is fuzzed (fuzz/routing_fuzz_test.go) because a database file is
// input the node did not necessarily write.
var snapshotMagic = [3]byte{'R', 'T', 1}

// ErrSnapshot is wrapped by ParseSnapshot's errors.
var ErrSnapshot = errors.New("routing: bad snapshot")

// AppendSnapshot encodes cs onto b.
func AppendSnapshot(b []byte, cs []Contact) []byte {
	b = append(b, snapshotMagic[:]...)
	b = binary.AppendUvarint(b, uint64(len(cs)))
	for _, c := range cs {
		b = append(b, c.ID[:]...)
		a := c.Addr.Addr().Unmap()
		if a.Is4() {
			v := a.As4()
			b = append(b, 4)
			b = append(b, v[:]...)
		} else {
			v := a.As16()
			b = append(b, 6)
			b = append(b, v[:]...)
		}
		b = binary.BigEndian.AppendUint16(b, c.Addr.Port())
	}
	return b
}

// ParseSnapshot decodes at most max contacts. It checks the count against
// the input length before allocating, and rejects trailing bytes, unknown
// families and invalid addresses with an error naming the entry.
func ParseSnapshot(b []byte, max int) ([]Contact, error) {
	if len(b) < len(snapshotMagic) || [3]byte(b[:3]) != snapshotMagic {
		return nil, fmt.Errorf("%w: missing header", ErrSnapshot)
	}
	b = b[3:]
	count, n := binary.Uvarint(b)
	if n <= 0 || n != len(binary.AppendUvarint(nil, count)) {
		return nil, fmt.Errorf("%w: bad count", ErrSnapshot) // also refuses non-minimal varints: one encoding per snapshot
	}
	b = b[n:]
	const minEntry = identity.IDSize + 1 + 4 + 2
	if count > uint64(max) || count > uint64(len(b)/minEntry) {
		return nil, fmt.Errorf("%w: %d contacts in %d bytes (max %d)", ErrSnapshot, count, len(b), max)
	}
	out := make([]Contact, 0, count)
	for i := range int(count) {
		if len(b) < minEntry {
			return nil, fmt.Errorf("%w: entry %d truncated", ErrSnapshot, i)
		}
		var c Contact
		copy(c.ID[:], b[:identity.IDSize])
		b = b[identity.IDSize:]
		fam := b[0]
		b = b[1:]
		var ip netip.Addr
		switch fam {
		case 4:
			ip = netip.AddrFrom4([4]byte(b[:4]))
			b = b[4:]
		case 6:
			if len(b) < 16+2 {
				return nil, fmt.Errorf("%w: entry %d truncated", ErrSnapshot, i)
			}
			ip = netip.AddrFrom16([16]byte(b[:16]))
			if ip.Is4In6() {
				return nil, fmt.Errorf("%w: entry %d: mapped IPv4 in an IPv6 entry", ErrSnapshot, i)
			}
			b = b[16:]
		default:
			return nil, fmt.Errorf("%w: entry %d: family %d", ErrSnapshot, i, fam)
		}
		port := binary.BigEndian.Uint16(b)
		b = b[2:]
		if port == 0 || ip.IsUnspecified() {
			return nil, fmt.Errorf("%w: entry %d: address %s:%d", ErrSnapshot, i, ip, port)
		}
		c.Addr = netip.AddrPortFrom(ip, port)
		out = append(out, c)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrSnapshot, len(b))
	}
	return out, nil
}
