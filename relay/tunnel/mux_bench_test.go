package tunnel

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/xtaci/smux"

	"github.com/elacity/pc2/transport/quicid"
)

// tlsPair returns the two ends of a TLS 1.3 connection over loopback TCP,
// authenticated as the tunnel's TCP transport does.
func tlsPair(tb testing.TB) (srv, cli *tls.Conn) {
	tb.Helper()
	sk, ck := newKey(tb), newKey(tb)
	sconf, err := quicid.ServerConfig(sk, ALPN, nil)
	if err != nil {
		tb.Fatal(err)
	}
	cconf, err := quicid.ClientConfig(ck, ALPN, sk.ID())
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	done := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- nil
			return
		}
		tc := tls.Server(c, sconf)
		if tc.Handshake() != nil {
			c.Close()
			done <- nil
			return
		}
		done <- tc
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	cli = tls.Client(c, cconf)
	if err := cli.Handshake(); err != nil {
		tb.Fatal(err)
	}
	srv = <-done
	if srv == nil {
		tb.Fatal("server handshake failed")
	}
	tb.Cleanup(func() { srv.Close(); cli.Close() })
	return srv, cli
}

// benchStreamThroughput writes b.N × 64 KiB from w to r, which discards.
func benchStreamThroughput(b *testing.B, w io.WriteCloser, r io.Reader) {
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	done := make(chan int64)
	go func() {
		// 64 KiB reads for every candidate (io.Discard's own ReadFrom
		// reads 8 KiB at a time).
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, r, make([]byte, 64<<10))
		done <- n
	}()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	w.Close()
	if n := <-done; n != int64(b.N)*int64(len(buf)) {
		b.Fatalf("read %d bytes, want %d", n, b.N*len(buf))
	}
}

// BenchmarkMuxRawTLS is the ceiling: one TLS connection, no multiplexer.
func BenchmarkMuxRawTLS(b *testing.B) {
	s, c := tlsPair(b)
	benchStreamThroughput(b, s, c)
}

// BenchmarkMuxYamux: one yamux stream over loopback TLS, by maximum
// stream window; "coalesced" runs it through coalescingConn as the tunnel
// does.
func BenchmarkMuxYamux(b *testing.B) {
	for _, w := range []struct {
		name     string
		size     uint32
		coalesce bool
	}{
		{"256KiB", 256 << 10, false}, {"1MiB", 1 << 20, false}, {"4MiB", 4 << 20, false}, {"16MiB", 16 << 20, false},
		{"1MiB-coalesced", 1 << 20, true}, {"4MiB-coalesced", 4 << 20, true},
	} {
		b.Run(w.name, func(b *testing.B) {
			s, c := tlsPair(b)
			conf := yamux.DefaultConfig()
			conf.MaxStreamWindowSize = w.size
			conf.LogOutput = io.Discard
			var sc, cc net.Conn = s, c
			if w.coalesce { // as the tunnel runs it: header and body in one record
				sc, cc = &coalescingConn{Conn: s}, &coalescingConn{Conn: c}
			}
			ss, err := yamux.Server(sc, conf)
			if err != nil {
				b.Fatal(err)
			}
			cs, err := yamux.Client(cc, conf)
			if err != nil {
				b.Fatal(err)
			}
			defer ss.Close()
			defer cs.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				st, _ := cs.Accept()
				accepted <- st
			}()
			st, err := ss.Open()
			if err != nil {
				b.Fatal(err)
			}
			st.Write([]byte{0}) // yamux announces a stream with its first frame
			r := <-accepted
			r.SetReadDeadline(time.Now().Add(time.Minute))
			var one [1]byte
			io.ReadFull(r, one[:])
			benchStreamThroughput(b, st, r)
		})
	}
}

// BenchmarkMuxSmux: one smux (protocol 2) stream over loopback TLS, with
// a 256 KiB per-stream buffer (a fixed window) and a 64 MiB session
// buffer. It stalls (a write never completes) at some runs' sizes, so it
// runs only with PC2_BENCH_SMUX=1 and a fixed count, e.g.
// PC2_BENCH_SMUX=1 go test -run '^$' -bench MuxSmux -benchtime 2000x.
func BenchmarkMuxSmux(b *testing.B) {
	if os.Getenv("PC2_BENCH_SMUX") != "1" {
		b.Skip("smux stalls under the default bench time; set PC2_BENCH_SMUX=1 and -benchtime 2000x")
	}
	for _, w := range []struct {
		name string
		size int
	}{{"256KiB", 256 << 10}} {
		b.Run(w.name, func(b *testing.B) {
			s, c := tlsPair(b)
			conf := smux.DefaultConfig()
			conf.Version = 2
			conf.MaxReceiveBuffer = 64 << 20
			conf.MaxStreamBuffer = w.size
			ss, err := smux.Server(s, conf)
			if err != nil {
				b.Fatal(err)
			}
			cs, err := smux.Client(c, conf)
			if err != nil {
				b.Fatal(err)
			}
			defer ss.Close()
			defer cs.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				st, _ := ss.AcceptStream()
				accepted <- st
			}()
			st, err := cs.OpenStream()
			if err != nil {
				b.Fatal(err)
			}
			benchStreamThroughput(b, st, <-accepted)
		})
	}
}
