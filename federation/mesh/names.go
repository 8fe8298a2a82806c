package mesh

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"sync"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Better reports whether claim a wins over claim b for the same name.
// The rule every supernode applies, so that all converge on one owner:
//
//  1. the earlier Created wins (the Unix second the first supernode
//     accepted the registration; a renewal keeps it);
//  2. on a tie, the lower SHA-256("pc2-claim-v1\x00" ‖ name ‖ owner id)
//     wins: unpredictable before the claim, so nobody can pick an id
//     that always wins ties, and the same on every supernode.
//
// Claims by the same owner never conflict (the latest Updated gives the
// endpoints).
func Better(a, b *wire.Record) bool {
	if a.Created != b.Created {
		return a.Created < b.Created
	}
	ha, hb := claimHash(a), claimHash(b)
	return bytes.Compare(ha[:], hb[:]) < 0
}

func claimHash(r *wire.Record) [32]byte {
	h := sha256.New()
	h.Write([]byte("pc2-claim-v1\x00"))
	h.Write([]byte(r.Name))
	h.Write(r.Owner[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// pick returns the record to route among claims, by Better; among one
// owner's claims the latest update.
func pick(a, b *wire.Record) *wire.Record {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.Owner == b.Owner:
		if b.Updated > a.Updated {
			return b
		}
		return a
	case Better(b, a):
		return b
	}
	return a
}

// table holds the registrations other supernodes announced, per name and
// announcing supernode. Records are kept when their supernode dies: they
// are what lets the others keep routing its names.
type table struct {
	mu     sync.RWMutex
	names  map[string]map[identity.ID]*held
	owners map[identity.ID]int // records per owner, for tunnel admission
	total  int
	max    int
}

type held struct {
	rec *wire.Record
	gen uint64 // the snapshot generation it arrived in
}

func newTable(max int) *table {
	return &table{names: map[string]map[identity.ID]*held{}, owners: map[identity.ID]int{}, max: max}
}

// set stores rec as from's claim; false when the table is full.
func (t *table) set(from identity.ID, rec *wire.Record, gen uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.names[rec.Name]
	if m == nil {
		if t.total >= t.max {
			return false
		}
		m = map[identity.ID]*held{}
		t.names[rec.Name] = m
	}
	if old := m[from]; old != nil {
		t.dropOwner(old.rec.Owner)
	} else {
		if t.total >= t.max {
			return false
		}
		t.total++
	}
	m[from] = &held{rec: rec, gen: gen}
	t.owners[rec.Owner]++
	return true
}

func (t *table) dropOwner(id identity.ID) {
	if t.owners[id]--; t.owners[id] <= 0 {
		delete(t.owners, id)
	}
}

// del forgets from's claim on name.
func (t *table) del(from identity.ID, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.delLocked(from, name)
}

func (t *table) delLocked(from identity.ID, name string) {
	m := t.names[name]
	if h := m[from]; h != nil {
		t.dropOwner(h.rec.Owner)
		delete(m, from)
		t.total--
		if len(m) == 0 {
			delete(t.names, name)
		}
	}
}

// prune forgets from's claims older than gen: after a full snapshot, what
// it no longer announces.
func (t *table) prune(from identity.ID, gen uint64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var stale []string
	for name, m := range t.names {
		if h := m[from]; h != nil && h.gen < gen {
			stale = append(stale, name)
		}
	}
	for _, name := range stale {
		t.delLocked(from, name)
	}
	return len(stale)
}

// best returns the winning live remote claim on name, or nil.
func (t *table) best(name string, now int64) *wire.Record {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var win *wire.Record
	for _, h := range t.names[name] {
		if h.rec.Expires > now {
			win = pick(win, h.rec)
		}
	}
	return win
}

// owns reports whether id owns a live remote claim.
func (t *table) owns(id identity.ID) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.owners[id] > 0
}

// counts returns the number of names and of claims held.
func (t *table) counts() (names, claims int) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.names), t.total
}

// fromPeer counts the claims from one supernode.
func (t *table) fromPeer(id identity.ID) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := 0
	for _, m := range t.names {
		if m[id] != nil {
			n++
		}
	}
	return n
}

// normal folds a server name the way the registry does.
func normal(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }
