package peer_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/elacity/pc2/transport/peer"
)

// BenchmarkStream measures one stream's echo throughput on loopback, on the
// direct path (0x25 framing on the shared socket) and through the relay
// (relay/circuit, 0x24 framing, one more hop), and the allocations per
// 16 KiB chunk.
func BenchmarkStream(b *testing.B) {
	for _, path := range []string{"direct", "relay"} {
		b.Run(path, func(b *testing.B) {
			l := newLabB(b)
			mod := func(c *peer.Config) {
				if path == "relay" {
					c.Candidates = nil // never punch
				}
			}
			a, bb := l.nodeB(b, mod), l.nodeB(b, mod)
			ls, err := bb.e.Listen("sink")
			if err != nil {
				b.Fatal(err)
			}
			go func() {
				for {
					s, err := ls.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						_, _ = io.Copy(io.Discard, s)
						_, _ = s.Write([]byte{1})
						_ = s.CloseWrite()
					}()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := a.e.Dial(ctx, bb.e.ID(), "sink")
			if err != nil {
				b.Fatal(err)
			}
			if path == "direct" {
				deadline := time.Now().Add(10 * time.Second)
				for a.e.Path(bb.e.ID()).Kind != peer.PathDirect {
					if time.Now().After(deadline) {
						b.Fatal("no direct path")
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			chunk := make([]byte, 16<<10)
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := s.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			_ = s.CloseWrite()
			if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if got := s.Path().Kind; string(got) != path {
				b.Fatalf("ran on %s", got)
			}
		})
	}
}
