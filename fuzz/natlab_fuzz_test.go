package fuzz

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/tools/natlab"
)

// FuzzProbeDecode checks the NAT-lab probe protocol decoder: it never panics,
// accepts only canonical encodings (a decoded message re-encodes to the exact
// input bytes), accepts only the fixed message sizes, and never reports a
// kind outside 0x31..0x34 (first byte below 0x40, so QUIC never collides),
// and never allocates.
func FuzzProbeDecode(f *testing.F) {
	seeds := []natlab.Message{
		{Kind: natlab.KindRequest, ID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{Kind: natlab.KindRequest, Flags: natlab.FlagChangeIP | natlab.FlagChangePort, DelayMillis: 2500},
		{Kind: natlab.KindResponse, Observed: netip.MustParseAddrPort("203.0.113.10:40000"),
			Responder: netip.MustParseAddrPort("198.51.100.11:3479")},
		{Kind: natlab.KindResponse, Observed: netip.MustParseAddrPort("[2001:db8::1]:1"),
			Responder: netip.MustParseAddrPort("198.51.100.10:3478")},
		{Kind: natlab.KindPunch, ID: [8]byte{0xaa}},
		{Kind: natlab.KindPunchAck, ID: [8]byte{0xbb}},
	}
	for _, m := range seeds {
		b, err := m.Append(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0x31, 0x01})
	f.Add([]byte{0xc0, 0x00, 0x00, 0x00, 0x01})                   // QUIC long header
	f.Add([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}) // STUN binding request

	f.Fuzz(func(t *testing.T, b []byte) {
		// Decoding allocates nothing, whatever the input.
		if allocs := testing.AllocsPerRun(1, func() { _, _ = natlab.Decode(b) }); allocs > 0 {
			t.Fatalf("Decode allocated %.0f times on %d bytes", allocs, len(b))
		}
		m, err := natlab.Decode(b)
		if err != nil {
			return
		}
		if len(b) != natlab.MsgSizeProbe && len(b) != natlab.MsgSizePunch {
			t.Fatalf("accepted a %d-byte message", len(b))
		}
		if b[0] < 0x31 || b[0] > 0x34 {
			t.Fatalf("accepted kind %#x", b[0])
		}
		out, err := m.Append(make([]byte, 0, len(b)))
		if err != nil {
			t.Fatalf("decoded %+v does not re-encode: %v", m, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("non-canonical accept:\n in  %x\n out %x", b, out)
		}
		again, err := natlab.Decode(out)
		if err != nil || again != m {
			t.Fatalf("second decode: %+v %v, want %+v", again, err, m)
		}
	})
}
