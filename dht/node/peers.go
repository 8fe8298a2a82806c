package node

import (
	"net/netip"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/packet"
)

// dialects remembers, per peer id, which framing the peer speaks. It is
// bounded: when full it starts over, which errs towards v3 (never towards
// sending v2 to a peer that speaks v3).
type dialects struct {
	mu  sync.Mutex
	m   map[identity.ID]uint8
	max int
}

const (
	speaksV3 uint8 = 1 << iota // sent us a v3 datagram
	speaksV2                   // sent us a v2 datagram, or answered v2 after a v3 timeout
)

func newDialects(max int) *dialects { return &dialects{m: map[identity.ID]uint8{}, max: max} }

func (d *dialects) mark(id identity.ID, f packet.Framing) {
	bit := speaksV3
	if f == packet.FramingV2 {
		bit = speaksV2
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m[id]&bit != 0 {
		return
	}
	if len(d.m) >= d.max {
		clear(d.m)
	}
	d.m[id] |= bit
}

func (d *dialects) get(id identity.ID) uint8 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m[id]
}

// framing returns the framing to send to id: v3 unless compat is on and
// the peer is known to speak v2 and not known to speak v3.
func (d *dialects) framing(id identity.ID, compat bool) packet.Framing {
	if compat && d.get(id) == speaksV2 {
		return packet.FramingV2
	}
	return packet.FramingV3
}

// addrSet is a bounded set of addresses with expiry: the addresses that
// completed a round trip with us, for the amplification rule.
type addrSet struct {
	mu  sync.Mutex
	m   map[netip.AddrPort]int64 // expiry, unix ns
	max int
	ttl time.Duration
}

func newAddrSet(max int, ttl time.Duration) *addrSet {
	return &addrSet{m: map[netip.AddrPort]int64{}, max: max, ttl: ttl}
}

func (s *addrSet) add(a netip.AddrPort, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[a]; !ok && len(s.m) >= s.max {
		ns := now.UnixNano()
		for k, exp := range s.m {
			if exp <= ns {
				delete(s.m, k)
			}
		}
		if len(s.m) >= s.max {
			// Still full of live entries: forget them all. Errs towards
			// smaller answers (more challenges), never larger ones.
			clear(s.m)
		}
	}
	s.m[a] = now.Add(s.ttl).UnixNano()
}

func (s *addrSet) has(a netip.AddrPort, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.m[a]
	return ok && exp > now.UnixNano()
}

// twinOf returns the id that shares id's X25519 key (sign bit flipped).
func twinOf(id identity.ID) identity.ID {
	id[31] ^= 0x80
	return id
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
