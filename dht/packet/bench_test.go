package packet

import (
	"crypto/rand"
	"testing"

	"github.com/elacity/pc2/core/identity"
)

// A FIND_NODE response with 8 IPv4 nodes is about 380 bytes of CBOR.
const benchMsgSize = 380

func benchPair(b *testing.B) (*Codec, *Codec, *identity.KeyPair, *identity.KeyPair) {
	a, c := seedKey(b, 0), seedKey(b, 0x20)
	return newCodec(b, a, Config{}), newCodec(b, c, Config{}), a, c
}

func BenchmarkSeal(b *testing.B) {
	ca, _, _, kb := benchPair(b)
	msg := make([]byte, benchMsgSize)
	buf := make([]byte, 0, BufferSize)
	b.SetBytes(benchMsgSize)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.Seal(buf[:0], kb.ID(), msg, IPv4); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	ca, cb, _, kb := benchPair(b)
	msg := make([]byte, benchMsgSize)
	// Two packets alternate so the repeated-nonce check never trips.
	p1, _ := ca.Seal(nil, kb.ID(), msg, IPv4)
	p2, _ := ca.Seal(nil, kb.ID(), msg, IPv4)
	out := make([]byte, 0, BufferSize)
	b.SetBytes(benchMsgSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p := p1
		if i&1 == 1 {
			p = p2
		}
		i++
		if _, _, err := cb.Open(out[:0], p, IPv4); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenAnyV2 is the detection path for a v2 peer: the v3 MAC check
// fails first, then the v2 one succeeds.
func BenchmarkOpenAnyV2(b *testing.B) {
	ca, cb, _, kb := benchPair(b)
	p, _ := ca.SealV2(nil, kb.ID(), make([]byte, benchMsgSize), IPv4)
	out := make([]byte, 0, BufferSize)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, f, err := cb.OpenAny(out[:0], p, IPv4); err != nil || f != FramingV2 {
			b.Fatal(err)
		}
	}
}

// BenchmarkSealOpenParallel runs both sides on all cores.
func BenchmarkSealOpenParallel(b *testing.B) {
	ca, cb, _, kb := benchPair(b)
	msg := make([]byte, benchMsgSize)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		in, out := make([]byte, 0, BufferSize), make([]byte, 0, BufferSize)
		for pb.Next() {
			p, err := ca.Seal(in[:0], kb.ID(), msg, IPv4)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := cb.Open(out[:0], p, IPv4); err != nil && err != ErrReplay {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpenNewPeer is a first packet from a never-seen node: the key
// agreement dominates. The cache holds one peer so every packet is new.
func BenchmarkOpenNewPeer(b *testing.B) {
	kb := seedKey(b, 0x20)
	cb := newCodec(b, kb, Config{Peers: 1, MaxNewPeersPerSecond: -1})
	const n = 256
	pkts := make([][]byte, n)
	for i := range pkts {
		kp, _ := identity.Generate(rand.Reader)
		c := newCodec(b, kp, Config{})
		pkts[i], _ = c.Seal(nil, kb.ID(), make([]byte, 40), IPv4)
	}
	out := make([]byte, 0, BufferSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, _, err := cb.Open(out[:0], pkts[i%n], IPv4); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkFloodJunk is the CPU cost of a packet with a fresh, valid id and
// a garbage MAC (the most expensive junk: full key agreement, then drop).
func BenchmarkFloodJunk(b *testing.B) {
	kb := seedKey(b, 0x20)
	cb := newCodec(b, kb, Config{MaxNewPeersPerSecond: -1})
	const n = 256
	pkts := make([][]byte, n)
	for i := range pkts {
		kp, _ := identity.Generate(rand.Reader)
		pkts[i] = make([]byte, 120)
		copy(pkts[i], kp.ID().Bytes())
	}
	out := make([]byte, 0, BufferSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, _, err := cb.Open(out[:0], pkts[i%n], IPv4); err != ErrAuth {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkFloodNonPoint is junk whose id is not an Ed25519 point: refused
// in the point decompression, before any scalar multiplication.
func BenchmarkFloodNonPoint(b *testing.B) {
	kb := seedKey(b, 0x20)
	cb := newCodec(b, kb, Config{MaxNewPeersPerSecond: -1})
	var pkts [][]byte
	for len(pkts) < 256 {
		var id identity.ID
		_, _ = rand.Read(id[:])
		if _, err := id.X25519Public(); err == nil {
			continue
		}
		p := make([]byte, 120)
		copy(p, id[:])
		pkts = append(pkts, p)
	}
	out := make([]byte, 0, BufferSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, _, err := cb.Open(out[:0], pkts[i%len(pkts)], IPv4); err == nil {
			b.Fatal("accepted")
		}
		i++
	}
}

// BenchmarkFloodBudgeted is junk beyond the new-peer budget: refused
// before any curve arithmetic.
func BenchmarkFloodBudgeted(b *testing.B) {
	kb := seedKey(b, 0x20)
	cb := newCodec(b, kb, Config{MaxNewPeersPerSecond: 1})
	kp, _ := identity.Generate(rand.Reader)
	p := make([]byte, 120)
	copy(p, kp.ID().Bytes())
	_, _, _ = cb.Open(nil, p, IPv4) // spend the budget
	out := make([]byte, 0, BufferSize)
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = cb.Open(out[:0], p, IPv4)
	}
}
