package sim

import (
	"encoding/binary"
	"slices"

	"github.com/elacity/pc2/core/identity"
)

// idSet is a sorted set of node ids, for computing the true k closest
// nodes to a target without scanning the network.
type idSet struct {
	ids []identity.ID
	idx []int32 // node index of ids[i]
}

func (s *idSet) insert(id identity.ID, n int32) {
	i, _ := slices.BinarySearchFunc(s.ids, id, identity.Compare)
	s.ids = slices.Insert(s.ids, i, id)
	s.idx = slices.Insert(s.idx, i, n)
}

func (s *idSet) remove(id identity.ID) {
	i, ok := slices.BinarySearchFunc(s.ids, id, identity.Compare)
	if ok {
		s.ids = slices.Delete(s.ids, i, i+1)
		s.idx = slices.Delete(s.idx, i, i+1)
	}
}

// subtree returns the index range of ids sharing the first p bits of t.
func (s *idSet) subtree(t identity.ID, p int) (int, int) {
	lo, hi := t, t
	for bit := p; bit < 256; bit++ {
		lo[bit/8] &^= 0x80 >> (bit % 8)
		hi[bit/8] |= 0x80 >> (bit % 8)
	}
	i, _ := slices.BinarySearchFunc(s.ids, lo, identity.Compare)
	j, found := slices.BinarySearchFunc(s.ids, hi, identity.Compare)
	if found {
		j++
	}
	return i, j
}

// closest appends to dst the node indices of the k ids closest to t,
// nearest first, skipping exclude (-1: none). The k closest all lie in
// the smallest subtree around t holding enough ids, since every id inside
// a subtree is closer to t than every id outside it.
func (s *idSet) closest(dst []int32, t identity.ID, k int, exclude int32) []int32 {
	need := k
	if exclude >= 0 {
		need++
	}
	if need > len(s.ids) {
		need = len(s.ids)
	}
	p := 0
	for n := len(s.ids) / max(need, 1); n > 1; n >>= 1 {
		p++
	}
	var lo, hi int
	for {
		lo, hi = s.subtree(t, p)
		if hi-lo >= need || p == 0 {
			break
		}
		p--
	}
	for hi-lo >= 8*need && p < 255 { // tighten if the guess was loose
		l2, h2 := s.subtree(t, p+1)
		if h2-l2 < need {
			break
		}
		lo, hi, p = l2, h2, p+1
	}
	type cand struct {
		d [4]uint64
		n int32
	}
	cs := make([]cand, 0, hi-lo)
	for i := lo; i < hi; i++ {
		if s.idx[i] == exclude {
			continue
		}
		var c cand
		for w := range 4 {
			c.d[w] = binary.BigEndian.Uint64(s.ids[i][8*w:]) ^ binary.BigEndian.Uint64(t[8*w:])
		}
		c.n = s.idx[i]
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b cand) int {
		for w := range 4 {
			if a.d[w] != b.d[w] {
				if a.d[w] < b.d[w] {
					return -1
				}
				return 1
			}
		}
		return 0
	})
	for _, c := range cs[:min(k, len(cs))] {
		dst = append(dst, c.n)
	}
	return dst
}
