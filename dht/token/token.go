// Package token issues and checks the write tokens of the DHT: a node
// that answers FIND_NODE with a token lets the requester STORE_VALUE or
// ANNOUNCE_PEER for that target within a short time, from the same
// address, as the same node — so a forged source address or a node that
// never looked the key up cannot write (index poisoning, BEP 5 style).
//
// Tokens are stateless: a keyed BLAKE2b of the 5-minute window number,
// the requester's id, IP, port and the target. A token is accepted in the
// window it was issued and the next one, so it lives 5 to 10 minutes.
// The key is random per process; a restart only makes clients ask again.
// Boson carries tokens as signed 32-bit integers where 0 means "none", so
// 0 is never issued.
package token

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/elacity/pc2/core/identity"
	"golang.org/x/crypto/blake2b"
)

// Window is how long a token window lasts.
const Window = 5 * time.Minute

// Manager issues and verifies tokens. It is safe for concurrent use.
type Manager struct {
	key [32]byte
}

// New returns a manager with a random key.
func New() *Manager {
	m := &Manager{}
	if _, err := rand.Read(m.key[:]); err != nil {
		panic("token: no randomness: " + err.Error()) // crypto/rand never fails on Linux ≥ 3.17
	}
	return m
}

// Issue returns the token for requester at addr for target at time now.
func (m *Manager) Issue(requester identity.ID, addr netip.AddrPort, target identity.ID, now time.Time) int32 {
	return m.compute(window(now), requester, addr, target)
}

// Valid reports whether tok was issued to requester at addr for target in
// the current or the previous window.
func (m *Manager) Valid(tok int32, requester identity.ID, addr netip.AddrPort, target identity.ID, now time.Time) bool {
	if tok == 0 {
		return false
	}
	w := window(now)
	return tok == m.compute(w, requester, addr, target) || tok == m.compute(w-1, requester, addr, target)
}

func window(now time.Time) int64 { return now.Unix() / int64(Window/time.Second) }

func (m *Manager) compute(w int64, requester identity.ID, addr netip.AddrPort, target identity.ID) int32 {
	// BLAKE2 has no length extension, so hashing a fixed-length secret
	// prefix is a sound MAC, and Sum256 does not allocate.
	var in [32 + 8 + 32 + 16 + 2 + 32]byte
	copy(in[:32], m.key[:])
	b := in[32:]
	binary.BigEndian.PutUint64(b[0:], uint64(w))
	copy(b[8:], requester[:])
	ip := addr.Addr().As16() // IPv4 as IPv4-mapped: one form per address
	copy(b[40:], ip[:])
	binary.BigEndian.PutUint16(b[56:], addr.Port())
	copy(b[58:], target[:])
	sum := blake2b.Sum256(in[:])
	tok := int32(binary.BigEndian.Uint32(sum[:4]))
	if tok == 0 {
		tok = 1
	}
	return tok
}
