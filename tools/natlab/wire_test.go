package natlab

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestWireRoundTrip(t *testing.T) {
	msgs := []Message{
		{Kind: KindRequest, ID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{Kind: KindRequest, Flags: FlagChangeIP | FlagChangePort, DelayMillis: MaxReplyDelayMillis},
		{Kind: KindResponse, ID: [8]byte{9}, Observed: netip.MustParseAddrPort("203.0.113.10:40000"),
			Responder: netip.MustParseAddrPort("198.51.100.11:3479")},
		{Kind: KindResponse, Observed: netip.MustParseAddrPort("[2001:db8::1]:1"),
			Responder: netip.MustParseAddrPort("[2001:db8::2]:65535")},
		{Kind: KindPunch, ID: [8]byte{0xff}},
		{Kind: KindPunchAck, ID: [8]byte{0xfe}},
	}
	for _, m := range msgs {
		b, err := m.Append(nil)
		if err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		if b[0] >= 0x40 || b[0] <= 0x03 {
			t.Fatalf("first byte %#x must be in 0x04..0x3f (not STUN, not QUIC)", b[0])
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("decode %x: %v", b, err)
		}
		if got != m {
			t.Fatalf("round trip: got %+v want %+v", got, m)
		}
		// Requests are as long as responses: no amplification.
		if m.Kind == KindRequest && len(b) != MsgSizeProbe {
			t.Fatalf("request is %d bytes", len(b))
		}
	}
}

func TestWireRejects(t *testing.T) {
	good, _ := Message{Kind: KindRequest}.Append(nil)
	resp, _ := Message{Kind: KindResponse, Observed: netip.MustParseAddrPort("203.0.113.1:1"),
		Responder: netip.MustParseAddrPort("198.51.100.10:3478")}.Append(nil)
	mut := func(b []byte, f func([]byte) []byte) []byte { return f(bytes.Clone(b)) }
	cases := map[string][]byte{
		"empty":           nil,
		"short":           good[:9],
		"bad version":     mut(good, func(b []byte) []byte { b[1] = 2; return b }),
		"unknown kind":    mut(good, func(b []byte) []byte { b[0] = 0x3f; return b }),
		"quic-like":       mut(good, func(b []byte) []byte { b[0] = 0xc0; return b }),
		"long request":    append(bytes.Clone(good), 0),
		"short request":   good[:MsgSizeProbe-1],
		"unknown flag":    mut(good, func(b []byte) []byte { b[10] = 4; return b }),
		"delay too long":  mut(good, func(b []byte) []byte { b[11], b[12] = 0x27, 0x11; return b }),
		"padding":         mut(good, func(b []byte) []byte { b[47] = 1; return b }),
		"bad family":      mut(resp, func(b []byte) []byte { b[10] = 5; return b }),
		"4 not mapped":    mut(resp, func(b []byte) []byte { b[21] = 0; return b }),
		"6 but mapped":    mut(resp, func(b []byte) []byte { b[29] = 6; return b }),
		"punch with body": append(mut(good, func(b []byte) []byte { b[0] = byte(KindPunch); return b })[:10], 0),
	}
	for name, b := range cases {
		if _, err := Decode(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode(%x) = %v, want ErrMalformed", name, b, err)
		}
	}
	if _, err := (Message{Kind: 0x20}).Append(nil); err == nil {
		t.Error("encoded an unknown kind")
	}
	if _, err := (Message{Kind: KindResponse}).Append(nil); err == nil {
		t.Error("encoded a response without addresses")
	}
	if _, err := (Message{Kind: KindRequest, DelayMillis: MaxReplyDelayMillis + 1}).Append(nil); err == nil {
		t.Error("encoded an over-long delay")
	}
}

func BenchmarkDecodeResponse(b *testing.B) {
	pkt, _ := Message{Kind: KindResponse, Observed: netip.MustParseAddrPort("203.0.113.10:40000"),
		Responder: netip.MustParseAddrPort("198.51.100.11:3479")}.Append(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(pkt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendResponse(b *testing.B) {
	m := Message{Kind: KindResponse, Observed: netip.MustParseAddrPort("203.0.113.10:40000"),
		Responder: netip.MustParseAddrPort("198.51.100.11:3479")}
	buf := make([]byte, 0, MsgSizeProbe)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = m.Append(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}
