package token

import (
	"net/netip"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
)

func ids() (a, b, target identity.ID) {
	a[0], b[0], target[0] = 1, 2, 3
	return
}

func TestTokenBinding(t *testing.T) {
	m := New()
	a, b, target := ids()
	addr := netip.MustParseAddrPort("198.51.100.7:39001")
	now := time.Unix(1_800_000_000, 0)
	tok := m.Issue(a, addr, target, now)
	if tok == 0 {
		t.Fatal("issued the reserved token 0")
	}
	if !m.Valid(tok, a, addr, target, now) {
		t.Fatal("fresh token refused")
	}
	other := target
	other[31] ^= 1
	for name, ok := range map[string]bool{
		"other requester": m.Valid(tok, b, addr, target, now),
		"other ip":        m.Valid(tok, a, netip.MustParseAddrPort("198.51.100.8:39001"), target, now),
		"other port":      m.Valid(tok, a, netip.MustParseAddrPort("198.51.100.7:39002"), target, now),
		"other target":    m.Valid(tok, a, addr, other, now),
		"other manager":   New().Valid(tok, a, addr, target, now),
		"zero":            m.Valid(0, a, addr, target, now),
	} {
		if ok {
			t.Errorf("token accepted with %s", name)
		}
	}
}

func TestTokenLifetime(t *testing.T) {
	m := New()
	a, _, target := ids()
	addr := netip.MustParseAddrPort("[2001:db8::1]:39001")
	start := time.Unix(1_800_000_000, 0).Truncate(Window) // start of a window
	tok := m.Issue(a, addr, target, start)
	if !m.Valid(tok, a, addr, target, start.Add(Window+Window-time.Second)) {
		t.Fatal("token refused before the end of the next window")
	}
	if m.Valid(tok, a, addr, target, start.Add(2*Window)) {
		t.Fatal("token accepted two windows later")
	}
	issuedLate := m.Issue(a, addr, target, start.Add(Window-time.Second))
	if !m.Valid(issuedLate, a, addr, target, start.Add(Window)) {
		t.Fatal("token issued at the end of a window refused just after")
	}
}

func BenchmarkIssue(b *testing.B) {
	m := New()
	a, _, target := ids()
	addr := netip.MustParseAddrPort("198.51.100.7:39001")
	now := time.Unix(1_800_000_000, 0)
	b.ReportAllocs()
	for b.Loop() {
		m.Issue(a, addr, target, now)
	}
}
