package record

import (
	"crypto/rand"
	"testing"
)

func BenchmarkValueValidate(b *testing.B) {
	a, r := keyA(b), keyB(b)
	signed, _ := NewSigned(a, 3, make([]byte, MaxSignedData))
	enc, _ := NewEncrypted(a, r.ID(), 3, make([]byte, MaxEncryptedPlain), rand.Reader)
	imm, _ := NewImmutable(make([]byte, MaxImmutableData))
	for _, c := range []struct {
		name string
		v    Value
	}{{"signed-896B", signed}, {"encrypted-832B", enc}, {"immutable-1024B", imm}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.v.Validate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkValueValidateV2(b *testing.B) {
	a := keyA(b)
	v, _ := NewSignedV2(a, [24]byte{1}, 3, make([]byte, MaxSignedData))
	b.ReportAllocs()
	for b.Loop() {
		if err := v.ValidateV2(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPeerValidate(b *testing.B) {
	a, n := keyA(b), keyB(b)
	plain, _ := NewPeer(a, nil, 1, 7, "tcp://203.0.113.10:9090", nil)
	auth, _ := NewPeer(a, n, 1, 7, "https://alice.ela.city/", []byte(`{"altEndpoint":"tcp://203.0.113.10:9090"}`))
	v2, _ := NewPeerV2(a, n.ID(), a.ID(), 20000, "alice.pc2.net")
	b.Run("v3.1", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := plain.Validate(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("v3.1-authenticated", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := auth.Validate(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("v2", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := v2.Validate(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkPeerCBOR(b *testing.B) {
	a, n := keyA(b), keyB(b)
	p, _ := NewPeer(a, n, 1, 7, "https://alice.ela.city/", []byte(`{"x":1}`))
	enc := p.AppendCBOR(nil)
	buf := make([]byte, 0, 1024)
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf = p.AppendCBOR(buf[:0])
		}
	})
	b.Run("decode", func(b *testing.B) {
		var q PeerInfo
		b.ReportAllocs()
		for b.Loop() {
			if err := q.DecodeCBOR(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}
