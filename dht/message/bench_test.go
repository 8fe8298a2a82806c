package message

import (
	"fmt"
	"testing"
)

// benchCases are the goldens that cover each message kind, plus the v2
// samples. The headline case is findNodeResponses/V4: a FIND_NODE response
// with 8 IPv4 nodes.
var benchGoldens = []string{
	"pingRequest/default",
	"findNodeRequests/V4Token",
	"findNodeResponses/V4",
	"findNodeResponses/V46Token",
	"findValueRequests/V4Cas",
	"findValueResponses/Encrypted",
	"storeValueRequests/SignedCas",
	"storeValueResponse/default",
	"findPeerRequests/V46CasExpected",
	"findPeerResponses/Peers",
	"announcePeerRequests/PeerAuthExtCas",
	"errors/WithMessage",
}

func benchInputs(b *testing.B) []golden {
	all := loadGoldens(b)
	var out []golden
	for _, name := range benchGoldens {
		for _, g := range all {
			if g.name == name {
				out = append(out, g)
			}
		}
	}
	if len(out) != len(benchGoldens) {
		b.Fatalf("found %d of %d bench goldens", len(out), len(benchGoldens))
	}
	return out
}

// BenchmarkDecode decodes each kind into a reused Message.
func BenchmarkDecode(b *testing.B) {
	for _, g := range benchInputs(b) {
		b.Run(g.name, func(b *testing.B) {
			var m Message
			b.SetBytes(int64(len(g.cbor)))
			b.ReportAllocs()
			for b.Loop() {
				if err := m.Decode(g.cbor, V3); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEncode appends each kind into a reused buffer.
func BenchmarkEncode(b *testing.B) {
	for _, g := range benchInputs(b) {
		b.Run(g.name, func(b *testing.B) {
			var m Message
			if err := m.Decode(g.cbor, V3); err != nil {
				b.Fatal(err)
			}
			m = *m.Clone()
			buf := make([]byte, 0, 2048)
			b.SetBytes(int64(len(g.cbor)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Append(buf[:0], V3); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkV2 round-trips the v2 samples.
func BenchmarkV2(b *testing.B) {
	for i, m := range sampleMessages(b, V2) {
		enc, err := m.Append(nil, V2)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%d-%v-%v", i, m.Method, m.Type), func(b *testing.B) {
			var d Message
			buf := make([]byte, 0, 2048)
			b.ReportAllocs()
			for b.Loop() {
				if err := d.Decode(enc, V2); err != nil {
					b.Fatal(err)
				}
				if _, err := d.Append(buf[:0], V2); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
