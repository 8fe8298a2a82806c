package node

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/routing"
	"golang.org/x/net/ipv4"
)

// benchNode starts a node whose IPv4 table holds `contacts` verified
// contacts and that has completed a round trip with `peer` (so its
// answers to it are not held back by the amplification rule). The
// per-source budget is lifted: the benchmark measures the request path.
func benchNode(b *testing.B, workers, contacts int, peer netip.AddrPort) *Node {
	b.Helper()
	n, stop := startNode(b, newKey(b), "", func(c *Config, o *Options) {
		c.Workers = workers
		c.RateLimit = RateLimit{PacketsPerSecond: 1e9, Burst: 1 << 30}
		o.Timers.Tick = time.Hour
	})
	b.Cleanup(stop)
	in := n.inst[0]
	now := time.Now()
	in.tmu.Lock()
	for i := range contacts {
		c := routing.Contact{ID: newKey(b).ID(), Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), 40000)}
		in.table.Verified(c, now, time.Millisecond)
	}
	in.tmu.Unlock()
	in.verified.add(peer, now)
	return n
}

// findNodeRing seals count distinct FIND_NODE requests from p to n (the
// v3 replay rule refuses only a repeat of the last nonce, so cycling
// through them is legitimate traffic).
func findNodeRing(b *testing.B, p *rawPeer, n *Node, count int) [][]byte {
	ring := make([][]byte, count)
	for i := range ring {
		m := &message.Message{Type: message.TypeRequest, Method: message.MethodFindNode, Txid: uint64(i + 1),
			Target: randomID(), Want: message.WantIPv4, Version: versionClient} // not added to the table
		ring[i] = p.seal(n.ID(), m, packet.FramingV3)
	}
	return ring
}

// BenchmarkServeFindNode is the CPU cost of answering one encrypted
// FIND_NODE (16 nodes) on one core: rate limit, open, decode, closest
// contacts, encode, seal. No sockets.
func BenchmarkServeFindNode(b *testing.B) {
	p := newRawPeer(b, "127.0.0.1:0")
	n := benchNode(b, 1, 300, p.addr())
	ring := findNodeRing(b, p, n, 1024)
	in := n.inst[0]
	out := make([]byte, 0, packet.BufferSize)
	from := p.addr()
	b.ReportAllocs()
	b.SetBytes(int64(len(ring[0])))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r := in.ServeUDP(out, ring[i%len(ring)], from); len(r) < 500 {
			b.Fatalf("answer of %d bytes", len(r))
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkLoopbackFindNode sends encrypted FIND_NODE requests over
// loopback to a node with one worker socket (so at most one core serves)
// and counts the answers: requests per second per serving core, kernel
// and batching included. The client keeps a window of requests in flight
// and does no crypto per request (its datagrams are sealed beforehand).
func BenchmarkLoopbackFindNode(b *testing.B) {
	p := newRawPeer(b, "127.0.0.1:0")
	n := benchNode(b, 1, 300, p.addr())
	ring := findNodeRing(b, p, n, 4096)
	to := net.UDPAddrFromAddrPort(n.Addrs()[0])
	pc := ipv4.NewPacketConn(p.conn)
	p.conn.SetReadBuffer(8 << 20)
	const window, batch = 256, 32
	credits := make(chan struct{}, window) // one per request in flight
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		ms := make([]ipv4.Message, batch)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 2048)}
		}
		for got.Load() < int64(b.N) {
			p.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			k, err := pc.ReadBatch(ms, 0)
			if err != nil {
				return
			}
			answers := 0
			for _, m := range ms[:k] {
				if m.N > 200 { // a FIND_NODE answer, not a ping of the node's
					answers++
				}
			}
			got.Add(int64(answers))
			for range answers {
				<-credits
			}
		}
	}()
	ms := make([]ipv4.Message, batch)
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		k := min(batch, b.N-sent)
		for i := range k {
			select {
			case credits <- struct{}{}:
			case <-done:
				b.Fatalf("answers stopped: %d of %d", got.Load(), sent)
			}
			ms[i].Buffers = [][]byte{ring[(sent+i)%len(ring)]}
			ms[i].Addr = to
		}
		w, err := pc.WriteBatch(ms[:k], 0)
		if err != nil || w != k {
			b.Fatalf("write batch: %d of %d: %v", w, k, err)
		}
		sent += w
	}
	<-done
	elapsed := time.Since(start)
	b.StopTimer()
	if got.Load() < int64(b.N) {
		b.Fatalf("%d answers of %d requests (loss on loopback)", got.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
}
