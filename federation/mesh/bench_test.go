package mesh

import (
	"context"
	"io"
	"net"
	"testing"
)

// The forwarding path: a visitor stream to a node whose tunnel is on A,
// opened at A (direct: A→node) or at C (mesh: C→A→node). All on
// loopback in one process, so the figures are the added cost of the
// extra QUIC hop and relay, not of a network.
//
//	go test -run '^$' -bench Forward -benchmem ./federation/mesh

// sinkServer discards what it reads and answers one byte per MiB.
func sinkServer(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				var n int
				for {
					k, err := c.Read(buf)
					n += k
					for n >= 1<<20 {
						n -= 1 << 20
						if _, err := c.Write([]byte{1}); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func benchDialers(l *lab) map[string]*Mesh { return map[string]*Mesh{"direct": l.a, "mesh": l.c} }

// BenchmarkForwardRTT: one 64-byte echo round trip on an open stream.
func BenchmarkForwardRTT(b *testing.B) {
	l := newLab(b, echoServer(b))
	for _, name := range []string{"direct", "mesh"} {
		m := benchDialers(l)[name]
		b.Run(name, func(b *testing.B) {
			conn, err := m.Dial(context.Background(), l.node, "https", nil)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			msg, got := make([]byte, 64), make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := conn.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkForwardConnect: a new visitor stream (open, header, the
// node's local dial) and its first echoed byte.
func BenchmarkForwardConnect(b *testing.B) {
	l := newLab(b, echoServer(b))
	for _, name := range []string{"direct", "mesh"} {
		m := benchDialers(l)[name]
		b.Run(name, func(b *testing.B) {
			one := make([]byte, 1)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				conn, err := m.Dial(context.Background(), l.node, "https", nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Write(one); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, one); err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}

// BenchmarkForwardThroughput: 1 MiB per op from visitor to node.
func BenchmarkForwardThroughput(b *testing.B) {
	l := newLab(b, sinkServer(b))
	for _, name := range []string{"direct", "mesh"} {
		m := benchDialers(l)[name]
		b.Run(name, func(b *testing.B) {
			conn, err := m.Dial(context.Background(), l.node, "https", nil)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			chunk, ack := make([]byte, 64<<10), make([]byte, 1)
			b.SetBytes(1 << 20)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				for range 16 {
					if _, err := conn.Write(chunk); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := io.ReadFull(conn, ack); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
