package punch

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestPacketRoundTrip(t *testing.T) {
	k := NewKey([8]byte{1, 2, 3}, [TokenSize]byte{4})
	p := Packet{Type: TypeAck, Flags: FlagProbe | FlagInitiator, Attempt: k.Attempt(), Seq: 77, Socket: 200}
	b := k.Append(nil, p)
	if len(b) != PacketSize || b[0] >= 0x40 || !IsPunch(b) {
		t.Fatalf("encoding %x", b)
	}
	got, err := k.Open(b)
	if err != nil || got != p {
		t.Fatalf("open: %+v %v", got, err)
	}
	// Every single-bit flip is rejected.
	for i := range len(b) * 8 {
		c := append([]byte(nil), b...)
		c[i/8] ^= 1 << (i % 8)
		if _, err := k.Open(c); err == nil {
			t.Fatalf("bit %d flipped and accepted", i)
		}
	}
	other := NewKey(k.Attempt(), [TokenSize]byte{5})
	if _, err := other.Open(b); !errors.Is(err, ErrForeign) {
		t.Fatalf("other token: %v", err)
	}
	if _, err := NewKey([8]byte{9}, [TokenSize]byte{4}).Open(b); !errors.Is(err, ErrForeign) {
		t.Fatalf("other attempt: %v", err)
	}
	if _, err := k.Open(b[:PacketSize-1]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short: %v", err)
	}
	if allocs := testing.AllocsPerRun(100, func() { _, _ = k.Open(b) }); allocs != 0 {
		t.Fatalf("Open allocates %.0f", allocs)
	}
}

func TestSignalRoundTrip(t *testing.T) {
	o := NewOffer()
	o.Hard = true
	o.UDP = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.10:1"), netip.MustParseAddrPort("[2001:db8::2]:3")}
	o.TCP = []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:443")}
	for _, m := range []SignalMsg{{Kind: KindOffer, Offer: o}, {Kind: KindSync, RTT: 1500 * time.Microsecond}} {
		b, err := MarshalSignal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := UnmarshalSignal(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, _ := MarshalSignal(got)
		if string(b2) != string(b) || got.RTT != m.RTT || len(got.Offer.UDP) != len(m.Offer.UDP) {
			t.Fatalf("round trip %+v -> %+v", m, got)
		}
	}
	tooMany := Offer{UDP: make([]netip.AddrPort, MaxCandidates+1)}
	if _, err := MarshalSignal(SignalMsg{Kind: KindOffer, Offer: tooMany}); err == nil {
		t.Fatal("accepted too many candidates")
	}
	if _, err := UnmarshalSignal(make([]byte, 2000)); !errors.Is(err, ErrBadSignal) {
		t.Fatalf("oversize: %v", err)
	}
}

// BenchmarkKeyOpen is the per-packet cost of accepting a punch (every
// datagram an attempt receives goes through it).
func BenchmarkKeyOpen(b *testing.B) {
	k := NewKey([8]byte{1}, [TokenSize]byte{2})
	pkt := k.Append(nil, Packet{Type: TypePunch, Seq: 1})
	b.ReportAllocs()
	b.SetBytes(PacketSize)
	for b.Loop() {
		if _, err := k.Open(pkt); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKeyOpenForeign is the cost of dropping a packet of another
// attempt (no MAC computed).
func BenchmarkKeyOpenForeign(b *testing.B) {
	k := NewKey([8]byte{1}, [TokenSize]byte{2})
	pkt := NewKey([8]byte{3}, [TokenSize]byte{2}).Append(nil, Packet{Type: TypePunch, Seq: 1})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Open(pkt); err == nil {
			b.Fatal("accepted")
		}
	}
}

// BenchmarkKeyAppend is the cost of building one punch.
func BenchmarkKeyAppend(b *testing.B) {
	k := NewKey([8]byte{1}, [TokenSize]byte{2})
	buf := make([]byte, 0, PacketSize)
	b.ReportAllocs()
	for b.Loop() {
		buf = k.Append(buf[:0], Packet{Type: TypePunch, Seq: 1})
	}
}
