package circuit_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/quicid"
)

type countingWriter struct{ n, bytes atomic.Uint64 }

func (c *countingWriter) WriteTo(b []byte, _ netip.AddrPort) error {
	c.n.Add(1)
	c.bytes.Add(uint64(len(b)))
	return nil
}

// relayWith runs a relay whose data packets go to w, with one session from
// a to b; it returns the session's address as a sees it.
func relayWith(b *testing.B, w circuit.PacketWriter, cfg circuit.Config) (*circuit.Server, *peer, *peer, *circuit.Addr) {
	b.Helper()
	kp := newKey(b)
	sock := newSharedSocket(b)
	srv := circuit.NewServer(kp, cfg)
	if err := srv.Start(sock.tr, w); err != nil {
		b.Fatal(err)
	}
	sock.setHandler(srv.Handle)
	b.Cleanup(func() { srv.Close() })
	r := &testRelay{srv: srv, kp: kp, sock: sock, addr: sock.addr()}
	pa, pb := newPeer(b, r, circuit.ClientConfig{}), newPeer(b, r, circuit.ClientConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pb.cli.Reserve(ctx); err != nil {
		b.Fatal(err)
	}
	addr, err := pa.cli.Connect(ctx, pb.kp.ID())
	if err != nil {
		b.Fatal(err)
	}
	return srv, pa, pb, addr
}

// BenchmarkForwardHandle is the relay's per-packet work without sockets:
// parse, session lookup, source check, session bucket and byte count.
func BenchmarkForwardHandle(b *testing.B) {
	w := &countingWriter{}
	srv, pa, _, addr := relayWith(b, w, circuit.Config{Session: circuit.Limits{BytesPerSecond: 1 << 40, MaxBytes: 1 << 62}})
	pkt := circuit.AppendData(nil, addr.Session, make([]byte, 1200))
	from := pa.sock.addr()
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		srv.Handle(pkt, from)
	}
	if w.n.Load() < uint64(b.N) {
		b.Fatalf("forwarded %d of %d", w.n.Load(), b.N)
	}
}

// BenchmarkForwardLoopback pushes 1200-byte relayed datagrams from peer A's
// socket through a relay on its own UDP port (as the service runs it) to
// peer B's socket, on loopback; it reports delivered packets/s and loss.
func BenchmarkForwardLoopback(b *testing.B) {
	for _, batch := range []bool{true, false} {
		b.Run(fmt.Sprintf("batch=%v", batch), func(b *testing.B) { benchForwardLoopback(b, batch) })
	}
}

func benchForwardLoopback(b *testing.B, batch bool) {
	kp := newKey(b)
	srv := circuit.NewServer(kp, circuit.Config{})
	if !batch {
		circuit.NoBatch(srv)
	}
	relayAddr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func() *peer {
		k := newKey(b)
		sock := newSharedSocketMode(b, true) // the receiver must not be the bottleneck
		cli, err := circuit.Dial(ctx, sock.tr, sock, k, relayAddr, kp.ID(), circuit.ClientConfig{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cli.Close() })
		return &peer{kp: k, sock: sock, cli: cli}
	}
	pa, pb := dial(), dial()
	if _, err := pb.cli.Reserve(ctx); err != nil {
		b.Fatal(err)
	}
	addr, err := pa.cli.Connect(ctx, pb.kp.ID())
	if err != nil {
		b.Fatal(err)
	}
	var got atomic.Int64
	pb.sock.setHandler(func([]byte, netip.AddrPort) { got.Add(1) })
	pkt := circuit.AppendData(nil, addr.Session, make([]byte, 1200))
	to := net.UDPAddrFromAddrPort(relayAddr)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		if _, err := pa.sock.udp.WriteTo(pkt, to); err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 && int64(i)-got.Load() > 2048 {
			// Keep at most ~2k packets in flight: measure forwarding,
			// not socket-buffer overflow.
			deadline := time.Now().Add(50 * time.Millisecond)
			for int64(i)-got.Load() > 512 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Microsecond)
			}
		}
	}
	// Wait for stragglers (bounded).
	deadline := time.Now().Add(time.Second)
	for got.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.ReportMetric(float64(got.Load())/el.Seconds(), "delivered-pkt/s")
	b.ReportMetric(100*float64(int64(b.N)-got.Load())/float64(b.N), "loss-%")
}

// streamBench uploads 64 KiB writes on one stream of conn to a sink.
func streamBench(b *testing.B, conn *quic.Conn) {
	ctx := context.Background()
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	// Wait until the sink has it all: a one-byte answer after EOF.
	var one [1]byte
	if _, err := io.ReadFull(s, one[:]); err != nil {
		b.Fatal(err)
	}
}

func serveSink(ln *quic.Listener) {
	for {
		c, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		go func() {
			for {
				s, err := c.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() {
					_, _ = io.Copy(io.Discard, s)
					_, _ = s.Write([]byte{1})
					s.Close()
				}()
			}
		}()
	}
}

// BenchmarkStreamRelayed is one end-to-end QUIC stream through the relay
// (no limits); compare with BenchmarkStreamDirect. The peers' sockets are
// built as udpmux does today (peer=quicgo-queue: quic-go's 32-packet
// non-QUIC queue) or with the relay's demux (peer=demux).
func BenchmarkStreamRelayed(b *testing.B) {
	for _, own := range []bool{false, true} {
		name := "peer=quicgo-queue"
		if own {
			name = "peer=demux"
		}
		b.Run(name, func(b *testing.B) { benchRelayed(b, own) })
	}
}

func benchRelayed(b *testing.B, own bool) {
	r := startRelayBench(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pp [2]*peer
	for i := range pp {
		p, err := dialPeerOn(b, r, newKey(b), circuit.ClientConfig{}, newSharedSocketMode(b, own))
		if err != nil {
			b.Fatal(err)
		}
		pp[i] = p
	}
	pa, pb := pp[0], pp[1]
	if _, err := pb.cli.Reserve(ctx); err != nil {
		b.Fatal(err)
	}
	go serveSink(listenE2E(b, pb))
	conn, err := dialE2E(ctx, b, pa, pb.kp.ID())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	streamBench(b, conn)
	b.ReportMetric(float64(r.srv.Stats.RateDropped.Load()+r.srv.Stats.Unknown.Load()), "relay-drops")
}

// BenchmarkStreamDirect is the same stream between the same kind of
// sockets, without the relay.
func BenchmarkStreamDirect(b *testing.B) {
	ka, kb := newKey(b), newKey(b)
	sa, sb := newSharedSocket(b), newSharedSocket(b)
	tlsS, err := quicid.ServerConfig(kb, testALPN, func(identity.ID) error { return nil })
	if err != nil {
		b.Fatal(err)
	}
	ln, err := sb.tr.Listen(tlsS, e2eConfig())
	if err != nil {
		b.Fatal(err)
	}
	go serveSink(ln)
	tlsC, err := quicid.ClientConfig(ka, testALPN, kb.ID())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := sa.tr.Dial(ctx, net.UDPAddrFromAddrPort(sb.addr()), tlsC, e2eConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	streamBench(b, conn)
}

// startRelayBench is startRelay on the relay's own socket, without taps
// (they would copy every packet).
func startRelayBench(b *testing.B) *testRelay { return startRelayWith(b, circuit.Config{}) }

// BenchmarkFirstByte measures nat-dht.md N4's latency half: from the end
// of signalling (Connect returned: the relay has the session and the
// target has accepted it) to the first relayed byte at the target, against
// the round trip through the relay measured right after on the same
// session. Each iteration is a new session (released after).
func BenchmarkFirstByte(b *testing.B) {
	r := startRelayWith(b, circuit.Config{ConnectsPerSecond: 1e6, ConnectBurst: 1e6})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var pp [2]*peer
	for i := range pp {
		p, err := dialPeerOn(b, r, newKey(b), circuit.ClientConfig{}, newSharedSocketMode(b, true))
		if err != nil {
			b.Fatal(err)
		}
		pp[i] = p
	}
	pa, pb := pp[0], pp[1]
	if _, err := pb.cli.Reserve(ctx); err != nil {
		b.Fatal(err)
	}
	arrived := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pb.cli.PacketConn().ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "first" {
				arrived <- time.Now()
				continue
			}
			_, _ = pb.cli.PacketConn().WriteTo(buf[:n], from) // echo
		}
	}()
	buf := make([]byte, 2048)
	var first, rtt time.Duration
	for b.Loop() {
		addr, err := pa.cli.Connect(ctx, pb.kp.ID())
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if _, err := pa.cli.PacketConn().WriteTo([]byte("first"), addr); err != nil {
			b.Fatal(err)
		}
		select {
		case t1 := <-arrived:
			first += t1.Sub(t0)
		case <-time.After(5 * time.Second):
			b.Fatal("first packet lost")
		}
		t2 := time.Now()
		if _, err := pa.cli.PacketConn().WriteTo([]byte("ping"), addr); err != nil {
			b.Fatal(err)
		}
		_ = pa.cli.PacketConn().SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := pa.cli.PacketConn().ReadFrom(buf); err != nil {
			b.Fatal(err)
		}
		rtt += time.Since(t2)
		if err := pa.cli.Release(ctx, addr); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(first.Microseconds())/float64(b.N), "first-byte-µs")
	b.ReportMetric(float64(rtt.Microseconds())/float64(b.N), "relay-rtt-µs")
	b.ReportMetric(float64(first)/float64(rtt), "first/rtt")
}

// startRelayWith is startRelayBench with a configuration.
func startRelayWith(b *testing.B, cfg circuit.Config) *testRelay {
	kp := newKey(b)
	srv := circuit.NewServer(kp, cfg)
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	return &testRelay{srv: srv, kp: kp, addr: addr}
}
