package udpserver

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/logging"
)

// The request/response benchmark behind the choice of event loop: the same
// handler (echo of a 120-byte request, the size of a DHT FIND_NODE) and the
// same closed-loop load generator (4 client sockets, 32 requests in flight
// each) against each server. Compare the req/s metric.

const (
	benchClients = 4
	benchWindow  = 32
	benchReqSize = 120
)

func runLoad(b *testing.B, target netip.AddrPort) {
	b.Helper()
	var remaining atomic.Int64
	remaining.Store(int64(b.N))
	var lost atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range benchClients {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			defer c.Close()
			req := make([]byte, benchReqSize)
			req[0] = 'r' // a request that is answered (a zero first byte is not)
			buf := make([]byte, 2048)
			inflight := 0
			for inflight < benchWindow && remaining.Add(-1) >= 0 {
				c.Write(req)
				inflight++
			}
			for inflight > 0 {
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Read(buf); err != nil {
					lost.Add(int64(inflight)) // count and stop: loss ends this client's window
					return
				}
				inflight--
				if remaining.Add(-1) >= 0 {
					c.Write(req)
					inflight++
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "req/s")
	if l := lost.Load(); l > int64(b.N)/100 {
		b.Fatalf("%d of %d requests lost: the figure would be meaningless", l, b.N)
	}
}

func BenchmarkServerPlain(b *testing.B) {
	s, err := Listen(Config{Addr: "127.0.0.1:0", Batch: 1}, HandlerFunc(echo))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	runLoad(b, s.LocalAddr())
}

func BenchmarkServerBatched(b *testing.B) {
	s, err := Listen(Config{Addr: "127.0.0.1:0", Batch: 32}, HandlerFunc(echo))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	runLoad(b, s.LocalAddr())
}

type gnetEcho struct {
	gnet.BuiltinEventEngine
	ready chan gnet.Engine
}

func (g *gnetEcho) OnBoot(e gnet.Engine) gnet.Action { g.ready <- e; return gnet.None }

func (g *gnetEcho) OnTraffic(c gnet.Conn) gnet.Action {
	pkt, _ := c.Next(-1)
	var from netip.AddrPort
	if ua, ok := c.RemoteAddr().(*net.UDPAddr); ok {
		from = ua.AddrPort()
	}
	var out [2048]byte
	if reply := echo(out[:0], pkt, from); len(reply) > 0 {
		c.Write(reply)
	}
	return gnet.None
}

func BenchmarkServerGnet(b *testing.B) {
	probe, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	addr := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	probe.Close()
	h := &gnetEcho{ready: make(chan gnet.Engine, 1)}
	go gnet.Run(h, "udp://"+addr.String(), gnet.WithMulticore(true), gnet.WithReusePort(true), gnet.WithSocketRecvBuffer(4<<20), gnet.WithSocketSendBuffer(4<<20), gnet.WithLogLevel(logging.ErrorLevel))
	eng := <-h.ready
	defer eng.Stop(context.Background())
	b.ReportAllocs()
	runLoad(b, addr)
}
