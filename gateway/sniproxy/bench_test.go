package sniproxy_test

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
)

// helloSink accepts connections, reads one ClientHello's worth of bytes and
// closes, so a connection's round trip ends when the hello has reached it.
func helloSink(b *testing.B, ln net.Listener, n int) {
	go func() {
		buf := make([]byte, n)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(c, buf[:n:n]); err != nil {
					b.Errorf("sink: %v", err)
				}
			}()
		}
	}()
}

func benchConnSetup(b *testing.B, addr string, hello []byte) {
	one := make([]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(hello); err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(one); err != io.EOF {
			b.Fatalf("read = %v, want EOF after the backend closed", err)
		}
		c.Close()
	}
}

// BenchmarkConnSetup measures one connection through the proxy on loopback:
// accept, hello read and parse, route, dial, replay, relay teardown. The
// Direct variant is the same client against the sink itself; allocations
// include the client's and the sink's.
func BenchmarkConnSetup(b *testing.B) {
	hello := hellotest.MustCapture(hellotest.Configs(testName)["default"])
	b.Run("loops", func(b *testing.B) {
		e := startProxy(b, sniproxy.Config{}, false)
		helloSink(b, e.backend, len(hello))
		benchConnSetup(b, e.proxyAddr, hello)
	})
	b.Run("goroutines", func(b *testing.B) {
		e := startProxy(b, sniproxy.Config{Dial: plainDial}, false)
		helloSink(b, e.backend, len(hello))
		benchConnSetup(b, e.proxyAddr, hello)
	})
	b.Run("direct", func(b *testing.B) {
		ln := listen(b)
		helloSink(b, ln, len(hello))
		benchConnSetup(b, ln.Addr().String(), hello)
	})
}

// BenchmarkRelay measures bulk bytes backend → client through the proxy
// (splice) against the same transfer without the proxy.
func BenchmarkRelay(b *testing.B) {
	const size = 256 << 20
	hello := hellotest.ChromeLike(testName)
	run := func(b *testing.B, addr string, backend net.Listener) {
		chunk := make([]byte, 1<<20)
		go func() {
			for {
				c, err := backend.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
						return
					}
					for sent := 0; sent < size; sent += len(chunk) {
						if _, err := c.Write(chunk); err != nil {
							return
						}
					}
				}()
			}
		}()
		b.SetBytes(size)
		b.ReportAllocs()
		buf := make([]byte, 256<<10)
		for b.Loop() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(hello); err != nil {
				b.Fatal(err)
			}
			if n, err := io.CopyBuffer(io.Discard, onlyReader{c}, buf); err != nil || n != size {
				b.Fatalf("got %d bytes, %v", n, err)
			}
			c.Close()
		}
	}
	b.Run("loops", func(b *testing.B) {
		e := startProxy(b, sniproxy.Config{}, false)
		run(b, e.proxyAddr, e.backend)
	})
	b.Run("goroutines", func(b *testing.B) {
		e := startProxy(b, sniproxy.Config{Dial: plainDial}, false)
		run(b, e.proxyAddr, e.backend)
	})
	b.Run("direct", func(b *testing.B) {
		ln := listen(b)
		run(b, ln.Addr().String(), ln)
	})
}

// memPerConn opens n connections with open (which returns every socket
// the test holds) and reports the proxy's stack and heap growth per
// connection once settle holds. The same connections opened without the
// proxy (direct) are measured too and their heap subtracted, so the figure
// is the proxy's alone. Only the first round is measured: later rounds
// reuse the stacks and spans freed by earlier ones.
func memPerConn(b *testing.B, n int, cfg sniproxy.Config, open func(b *testing.B, addr string, backend net.Listener) []net.Conn, settle func(e *env, g0 int) bool) {
	measure := func(f func()) (stack, heap float64) {
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		f()
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		return float64(int64(ms1.StackInuse)-int64(ms0.StackInuse)) / float64(n), float64(int64(ms1.HeapAlloc)-int64(ms0.HeapAlloc)) / float64(n)
	}
	var stackPer, heapPer float64
	first := true
	for b.Loop() {
		b.StopTimer()
		ln := listen(b)
		var direct []net.Conn
		_, directHeap := measure(func() { direct = open(b, ln.Addr().String(), ln) })
		e := startProxy(b, cfg, false)
		g0 := runtime.NumGoroutine()
		b.StartTimer()
		var keep []net.Conn
		stack, heap := measure(func() {
			keep = open(b, e.proxyAddr, e.backend)
			waitFor(b, "connections to settle", func() bool { return settle(e, g0) })
		})
		b.StopTimer()
		if first {
			stackPer, heapPer = stack, heap-directHeap
			first = false
		}
		for _, c := range append(keep, direct...) {
			c.Close()
		}
		e.stop()
		b.StartTimer()
	}
	b.ReportMetric(stackPer, "stack-B/conn")
	b.ReportMetric(heapPer, "heap-B/conn")
}

// BenchmarkIdleConnections reports the memory an idle relayed connection
// costs the proxy: on the event loops, and on the goroutine path once its
// connections have parked.
func BenchmarkIdleConnections(b *testing.B) {
	const n = 1000
	hello := hellotest.ChromeLike(testName)
	open := func(b *testing.B, addr string, backend net.Listener) []net.Conn {
		backends := rawBackend(backend)
		keep := make([]net.Conn, 0, 2*n)
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(hello); err != nil {
				b.Fatal(err)
			}
			be := <-backends
			if _, err := io.ReadFull(be, make([]byte, len(hello))); err != nil {
				b.Fatal(err)
			}
			// One byte back, so that both directions have run.
			if _, err := be.Write([]byte{1}); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
			keep = append(keep, c, be)
		}
		return keep
	}
	for _, mode := range []string{"loops", "goroutines"} {
		b.Run(mode, func(b *testing.B) {
			cfg := sniproxy.Config{MaxPendingPerIP: n, ParkAfter: 20 * time.Millisecond}
			if mode == "goroutines" {
				cfg.Dial = plainDial
			}
			memPerConn(b, n, cfg, open, func(_ *env, g0 int) bool { return runtime.NumGoroutine() <= g0+10 })
		})
	}
}

// BenchmarkPendingConnections reports the memory a connection costs while
// it has sent 100 bytes of its ClientHello and nothing more (slowloris).
func BenchmarkPendingConnections(b *testing.B) {
	const n = 1000
	partial := hellotest.ChromeLike(testName)[:100]
	for _, mode := range []string{"loops", "goroutines"} {
		b.Run(mode, func(b *testing.B) {
			open := func(b *testing.B, addr string, backend net.Listener) []net.Conn {
				keep := make([]net.Conn, 0, n)
				for range n {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := c.Write(partial); err != nil {
						b.Fatal(err)
					}
					keep = append(keep, c)
				}
				return keep
			}
			cfg := sniproxy.Config{MaxPendingPerIP: n, HelloTimeout: time.Minute}
			if mode == "goroutines" {
				cfg.Dial = plainDial
			}
			memPerConn(b, n, cfg, open, func(e *env, _ int) bool { return metrics.Value(e.m.Pending) == n })
		})
	}
}

// onlyReader hides io.WriterTo so that CopyBuffer reads in 256 KiB
// chunks (io.Discard's ReadFrom would read 8 KiB at a time).
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }
