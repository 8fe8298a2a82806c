package fuzz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/tools/natlab"
	"github.com/pion/stun/v3"
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

// stunSeeds are STUN messages for FuzzSTUNAnswer: miniupnpd's four test
// requests, a plain request, one with SOFTWARE and FINGERPRINT, and ones the
// probe server must refuse (indication, USERNAME, bad CHANGE-REQUEST bits).
// (None of the setters used can fail; a nil seed would fail FuzzSTUNAnswer.)
func stunSeeds() [][]byte {
	build := func(setters ...stun.Setter) []byte {
		m, err := stun.Build(append([]stun.Setter{stun.NewTransactionIDSetter([12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})}, setters...)...)
		if err != nil {
			return nil
		}
		return m.Raw
	}
	change := func(v byte) stun.Setter { return stunAttr{stun.AttrChangeRequest, []byte{0, 0, 0, v}} }
	var out [][]byte
	for _, v := range []byte{0, 2, 4, 6} {
		out = append(out, build(stun.BindingRequest, change(v)))
	}
	return append(out,
		build(stun.BindingRequest),
		build(stun.BindingRequest, stun.NewSoftware("pc2"), change(6), stun.Fingerprint),
		build(stun.NewType(stun.MethodBinding, stun.ClassIndication)),
		build(stun.BindingRequest, stun.NewUsername("u")),
		build(stun.BindingRequest, change(1)),
		build(stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(203, 0, 113, 10), Port: 4000}),
	)
}

type stunAttr struct {
	t stun.AttrType
	v []byte
}

func (a stunAttr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

// FuzzSTUNAnswer checks the probe server's STUN Binding responder: no panic;
// a rejection is an ErrSTUNRejected with no answer; an answer only to an exactly-sized Binding
// request of at most MaxSTUNRequest bytes, and then a Binding success with
// the request's transaction id whose XOR-MAPPED-ADDRESS is the observed
// address, of fixed size (32 bytes IPv4, 44 IPv6, so bounded amplification),
// with only the two CHANGE-REQUEST flags. (The allocation bound is checked on
// the worst case by TestAnswerSTUNAllocs in tools/natlab: measuring it here
// made every execution, and so the fuzzer's quadratic minimizer, ~5× slower.)
func FuzzSTUNAnswer(f *testing.F) {
	for i, s := range stunSeeds() {
		if s == nil {
			f.Fatalf("seed %d failed to build", i)
		}
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add(make([]byte, natlab.MsgSizeProbe))
	observed := []netip.AddrPort{
		netip.MustParseAddrPort("203.0.113.10:40000"),
		netip.MustParseAddrPort("[2001:db8::1]:1"),
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		buf := make([]byte, 0, 64)
		for i, obs := range observed {
			resp, flags, err := natlab.AnswerSTUN(b, obs, buf)
			if err != nil {
				if !errors.Is(err, natlab.ErrSTUNRejected) || resp != nil || flags != 0 {
					t.Fatalf("rejection %v returned %x, flags %v", err, resp, flags)
				}
				return
			}
			if !natlab.IsSTUN(b) || len(b) > natlab.MaxSTUNRequest || len(b) != 20+int(binary.BigEndian.Uint16(b[2:4])) ||
				b[0] != 0 || b[1] != 1 {
				t.Fatalf("answered a non-request or mis-sized input %x", b)
			}
			if flags&^(natlab.FlagChangeIP|natlab.FlagChangePort) != 0 {
				t.Fatalf("flags %v", flags)
			}
			if want := []int{32, 44}[i]; len(resp) != want {
				t.Fatalf("%d-byte answer for %v, want %d", len(resp), obs, want)
			}
			m := &stun.Message{Raw: append([]byte(nil), resp...)}
			if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess || !bytes.Equal(m.TransactionID[:], b[8:20]) {
				t.Fatalf("answer %x does not decode as a success for this transaction: %v", resp, err)
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(m); err != nil {
				t.Fatal(err)
			}
			got, _ := netip.AddrFromSlice(xa.IP)
			if netip.AddrPortFrom(got.Unmap(), uint16(xa.Port)) != obs {
				t.Fatalf("XOR-MAPPED-ADDRESS %v, want %v", xa, obs)
			}
		}
	})
}
