package fuzz

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/elacity/pc2/transport/punch"
)

var (
	fuzzAttempt = [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	fuzzToken   = [punch.TokenSize]byte{0x42, 0x42}
)

func punchPacketSeeds() [][]byte {
	k := punch.NewKey(fuzzAttempt, fuzzToken)
	other := punch.NewKey([8]byte{9}, fuzzToken)
	return [][]byte{
		k.Append(nil, punch.Packet{Type: punch.TypePunch, Flags: punch.FlagInitiator, Seq: 1}),
		k.Append(nil, punch.Packet{Type: punch.TypeAck, Flags: punch.FlagProbe, Seq: 7, Socket: 255}),
		other.Append(nil, punch.Packet{Type: punch.TypePunch, Seq: 1}),
		bytes.Repeat([]byte{0x3a}, punch.PacketSize),
		{0x3b, 1},
		{0xc0, 0, 0, 0, 1}, // QUIC long header
		{},
	}
}

// FuzzPunchPacket checks the punch packet decoder: no panic, no allocation
// (averaged over 20 runs: the fuzzing engine allocates in the background);
// ParseHeader accepts only 36-byte packets of the two types whose header
// re-encodes to the same bytes; Key.Open accepts exactly the packets the key
// itself produces for the decoded fields.
func FuzzPunchPacket(f *testing.F) {
	for _, s := range punchPacketSeeds() {
		f.Add(s)
	}
	k := punch.NewKey(fuzzAttempt, fuzzToken)
	f.Fuzz(func(t *testing.T, b []byte) {
		if allocs := testing.AllocsPerRun(20, func() { _, _ = punch.ParseHeader(b); _, _ = k.Open(b) }); allocs > 0 {
			t.Fatalf("decode allocated %.0f times", allocs)
		}
		p, err := punch.ParseHeader(b)
		if err != nil {
			if !errors.Is(err, punch.ErrMalformed) {
				t.Fatalf("structural error %v does not match ErrMalformed", err)
			}
			if _, err2 := k.Open(b); err2 == nil {
				t.Fatal("Open accepted what ParseHeader rejected")
			}
			return
		}
		if len(b) != punch.PacketSize || !punch.IsPunch(b) || b[0] >= 0x40 {
			t.Fatalf("accepted %d bytes starting %#x", len(b), b[0])
		}
		// The header re-encodes identically (the tag differs unless valid).
		again := punch.NewKey(p.Attempt, fuzzToken).Append(nil, p)
		if !bytes.Equal(again[:20], b[:20]) {
			t.Fatalf("header %x re-encodes to %x", b[:20], again[:20])
		}
		op, err := k.Open(b)
		if err != nil {
			if !errors.Is(err, punch.ErrForeign) {
				t.Fatalf("Open error %v on a well-formed packet", err)
			}
			if p.Attempt == fuzzAttempt && bytes.Equal(again, b) {
				t.Fatal("Open rejected a packet with a valid tag")
			}
			return
		}
		if op != p || !bytes.Equal(k.Append(nil, op), b) {
			t.Fatalf("Open accepted %x which the key does not produce", b)
		}
	})
}

func punchSignalSeeds() [][]byte {
	o := punch.Offer{Attempt: fuzzAttempt, Token: fuzzToken, Hard: true,
		UDP: []netip.AddrPort{netip.MustParseAddrPort("203.0.113.10:39001"), netip.MustParseAddrPort("10.0.1.2:39001")},
		TCP: []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:443")}}
	var out [][]byte
	for _, m := range []punch.SignalMsg{
		{Kind: punch.KindOffer, Offer: o},
		{Kind: punch.KindAnswer, Offer: punch.Offer{Attempt: fuzzAttempt}},
		{Kind: punch.KindSync, Offer: punch.Offer{Attempt: fuzzAttempt}, RTT: 23456 * time.Microsecond},
	} {
		b, err := punch.MarshalSignal(m)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return append(out, []byte{1, 1}, bytes.Repeat([]byte{0xff}, 60))
}

// FuzzPunchSignal checks the signalling decoder: no panic, bounded input
// size, candidate counts within the limit, and exact round trip.
func FuzzPunchSignal(f *testing.F) {
	for _, s := range punchSignalSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := punch.UnmarshalSignal(b)
		if err != nil {
			if !errors.Is(err, punch.ErrBadSignal) {
				t.Fatalf("error %v does not match ErrBadSignal", err)
			}
			return
		}
		if len(m.Offer.UDP) > punch.MaxCandidates || len(m.Offer.TCP) > punch.MaxCandidates {
			t.Fatalf("%d/%d candidates", len(m.Offer.UDP), len(m.Offer.TCP))
		}
		out, err := punch.MarshalSignal(m)
		if err != nil {
			t.Fatalf("decoded message does not re-encode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip\n in %x\nout %x", b, out)
		}
	})
}

// TestWritePunchSeedCorpus regenerates the punch targets' seed corpora when
// PC2_WRITE_SEEDS=1; otherwise it checks they exist.
func TestWritePunchSeedCorpus(t *testing.T) {
	for name, seeds := range map[string][][]byte{
		"FuzzPunchPacket": punchPacketSeeds(),
		"FuzzPunchSignal": punchSignalSeeds(),
	} {
		dir := filepath.Join("testdata", "fuzz", name)
		if os.Getenv("PC2_WRITE_SEEDS") != "1" {
			if entries, err := os.ReadDir(dir); err != nil || len(entries) == 0 {
				t.Errorf("%s has no seed corpus (run with PC2_WRITE_SEEDS=1): %v", dir, err)
			}
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range seeds {
			sum := sha256.Sum256(s)
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%x", sum[:8])), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
