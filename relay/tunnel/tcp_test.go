package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/identity"
)

// startTCPPair starts a server with both endpoints and a client on TCP
// only.
func startTCPPair(t testing.TB, scfg ServerConfig, services map[string]Local) *pair {
	t.Helper()
	p := &pair{srvKey: newKey(t), cliKey: newKey(t)}
	p.srv = NewServer(p.srvKey, scfg)
	if _, err := p.srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ta, err := p.srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ta.String()
	t.Cleanup(func() { p.srv.Close() })
	p.cli = NewClient(p.cliKey, ClientConfig{Supernode: p.addr, SupernodeID: p.srvKey.ID(), Transport: TransportTCP,
		Services: services, LocalUDP: "127.0.0.1:0", Logger: testLogger(t)})
	if err := p.cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cli.Close() })
	return p
}

func transportOf(c net.Conn) string { return c.(*streamConn).conn.Transport() }

// TestTCPSessionBothWays: a stream the supernode end opens carries data
// both ways, each direction's half-close passed on, and closing the
// session at one end ends it at the other.
func TestTCPSessionBothWays(t *testing.T) {
	srv, cli := tcpSessionPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		for {
			st, err := cli.AcceptStream(ctx)
			if err != nil {
				return
			}
			go func() {
				io.Copy(st, st)
				st.CloseWrite()
			}()
		}
	}()
	msg := bytes.Repeat([]byte("both ways "), 100_000) // 1 MB: several windows
	for range 2 {
		st, err := srv.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(30 * time.Second))
		go func() {
			st.Write(msg)
			st.CloseWrite()
		}()
		got, err := io.ReadAll(st)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo: %d bytes, err %v; want %d identical", len(got), err, len(msg))
		}
		st.Close()
	}
	cli.Close("bye")
	select {
	case <-srv.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the supernode end did not see the node close the session")
	}
}

func tcpSessionPair(t *testing.T) (srv, cli *tcpSession) {
	sc, cc := tlsPair(t)
	srv, err := newTCPSession(sc, true)
	if err != nil {
		t.Fatal(err)
	}
	cli, err = newTCPSession(cc, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close("test over"); cli.Close("test over") })
	return srv, cli
}

// TestTCPSessionRefusesNodeStreams: nodes open no streams; one that does
// loses its tunnel (QUIC refuses such streams outright).
func TestTCPSessionRefusesNodeStreams(t *testing.T) {
	srv, cli := tcpSessionPair(t)
	// The open itself may already fail: the supernode can end the session
	// before the node's send of the stream's first frame completes.
	if st, err := cli.OpenStream(context.Background()); err == nil {
		st.Write([]byte("hello?"))
	}
	select {
	case <-srv.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the supernode kept a tunnel whose node opened a stream")
	}
	select {
	case <-cli.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the node's end of the closed tunnel stayed up")
	}
}

func TestTCPTunnelEcho(t *testing.T) {
	p := startTCPPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) && p.cli.Up() })
	if tr := p.cli.Transport(); tr != TransportTCP || p.srv.LenTransport(TransportTCP) != 1 {
		t.Fatalf("client on %q, server has %d TCP tunnels", tr, p.srv.LenTransport(TransportTCP))
	}
	msg := bytes.Repeat([]byte("pc2 tunnel over tcp "), 100_000)
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "echo", &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 4444})
	if err != nil {
		t.Fatal(err)
	}
	if tr := transportOf(c); tr != TransportTCP {
		t.Fatalf("stream on %s", tr)
	}
	if got := roundTrip(t, c, msg); !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want %d identical", len(got), len(msg))
	}
}

func TestTCPAdmissionRefused(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	srv := NewServer(srvKey, ServerConfig{Admit: func(identity.ID) error { return errors.New("not registered") }})
	a, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli := NewClient(cliKey, ClientConfig{Supernode: a.String(), SupernodeID: srvKey.ID(), Transport: TransportTCP, BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0"})
	cli.Start()
	defer cli.Close()
	waitFor(t, "two attempts", 10*time.Second, func() bool { return cli.Attempts.Load() >= 2 })
	if srv.Has(cliKey.ID()) || srv.Accepted.Load() != 0 || cli.Connects.Load() != 0 || cli.Up() {
		t.Fatal("server accepted a node its admission check refused")
	}
}

func TestTCPWrongSupernodeIDRefused(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	srv := NewServer(srvKey, ServerConfig{})
	a, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli := NewClient(cliKey, ClientConfig{Supernode: a.String(), SupernodeID: newKey(t).ID(), Transport: TransportTCP, BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0"})
	cli.Start()
	defer cli.Close()
	waitFor(t, "two attempts", 10*time.Second, func() bool { return cli.Attempts.Load() >= 2 })
	if cli.Connects.Load() != 0 || srv.Has(cliKey.ID()) || srv.Accepted.Load() != 0 {
		t.Fatal("client connected to a supernode with the wrong id")
	}
}

func TestTCPHandshakeRateLimit(t *testing.T) {
	srvKey := newKey(t)
	srv := NewServer(srvKey, ServerConfig{HandshakesPerSecond: 0.001, HandshakeBurst: 1})
	a, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for range 2 {
		c := NewClient(newKey(t), ClientConfig{Supernode: a.String(), SupernodeID: srvKey.ID(), Transport: TransportTCP, BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0"})
		c.Start()
		defer c.Close()
	}
	waitFor(t, "one accepted and one refused handshake", 10*time.Second, func() bool { return srv.Refused.Load() >= 1 && srv.Accepted.Load() >= 1 })
	if n := srv.Accepted.Load(); n != 1 {
		t.Fatalf("accepted %d tunnels with a burst of 1", n)
	}
}

func TestTCPStreamQuota(t *testing.T) {
	p := startTCPPair(t, ServerConfig{MaxStreamsPerNode: 2}, map[string]Local{"echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	id := p.cliKey.ID()
	c1, err1 := p.srv.Dial(context.Background(), id, "echo", nil)
	c2, err2 := p.srv.Dial(context.Background(), id, "echo", nil)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if _, err := p.srv.Dial(context.Background(), id, "echo", nil); !errors.Is(err, ErrStreamQuota) {
		t.Fatalf("third stream: err = %v, want ErrStreamQuota", err)
	}
	c1.Close()
	c3, err := p.srv.Dial(context.Background(), id, "echo", nil)
	if err != nil {
		t.Fatalf("stream after one closed: %v", err)
	}
	if got := roundTrip(t, c3, []byte("three")); string(got) != "three" {
		t.Fatalf("echo %q", got)
	}
	c2.Close()
}

// TestTCPUnknownServiceEnds: yamux has no reset, so a stream to a service
// the node does not have ends (EOF) at once instead of failing.
func TestTCPUnknownServiceEnds(t *testing.T) {
	p := startTCPPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "nope", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("stream to an unknown service: %q, %v; want an empty stream", b, err)
	}
}

// TestTCPManyConcurrentStreams: many visitor streams (PC2_TUNNEL_STREAMS,
// default 1,000) open at once on one TCP tunnel all echo.
func TestTCPManyConcurrentStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("many streams; not in -short")
	}
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("PC2_TUNNEL_STREAMS")); err == nil && v > 0 {
		n = v
	}
	p := startTCPPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoProcess(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	runtime.GC()
	var before, during runtime.MemStats
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "echo", nil)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		conns[i] = c
		c.SetDeadline(time.Now().Add(120 * time.Second))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("stream %d write: %v", i, err)
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil || one[0] != byte(i) {
			t.Fatalf("stream %d: read %v %v", i, one, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&during)
	t.Logf("%d streams open on one TCP tunnel, each used once: heap +%d KiB, %.1f KiB per stream (supernode and node ends and the node's local TCP connections, in one process)",
		n, (during.HeapInuse-before.HeapInuse)>>10, float64(during.HeapInuse-before.HeapInuse)/float64(n)/1024)
	// All n open at once, used concurrently.
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := bytes.Repeat([]byte{byte(i + 1)}, 1000)
			go c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				bad.Add(1)
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			io.Copy(io.Discard, c)
			c.Close()
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d of %d concurrent streams did not echo", bad.Load(), n)
	}
	waitFor(t, "all streams closed at the node", 10*time.Second, func() bool { return p.cli.streams.Load() == 0 })
}

// TestTCPBackpressure: a visitor stream whose local service reads nothing
// stops the supernode's writes after a bounded amount (the node's stream
// window plus socket buffers), and does not hold up other streams on the
// same tunnel.
func TestTCPBackpressure(t *testing.T) {
	stuck, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := stuck.Accept()
		if err == nil {
			accepted <- c // held open, never read
		}
	}()
	p := startTCPPair(t, ServerConfig{}, map[string]Local{"stuck": {Addr: stuck.Addr().String()}, "echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "stuck", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer func() {
		select {
		case lc := <-accepted:
			lc.Close()
		default:
		}
	}()
	buf := make([]byte, 64<<10)
	var written int64
	for {
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Write(buf)
		written += int64(n)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !isTimeout(err) {
				t.Fatalf("write: %v", err)
			}
			break
		}
		if written > 256<<20 {
			t.Fatalf("wrote %d MiB to a stream nobody reads: no backpressure", written>>20)
		}
	}
	t.Logf("a stream nobody reads took %.1f MiB before its writes blocked (node window %d MiB + loopback socket buffers)", float64(written)/(1<<20), tcpStreamWindowClient>>20)
	// Another stream on the same tunnel still flows.
	e, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, e, []byte("not blocked")); string(got) != "not blocked" {
		t.Fatalf("second stream echo %q", got)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// blackholeUDP is a UDP socket that never answers: QUIC aimed at it gets
// no handshake, as on a network that drops UDP.
func blackholeUDP(t testing.TB) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().String()
}

// TestFallbackToTCP: QUIC gets no answer, the client falls back to TCP in
// about QUICWait, and the supernode serves visitors through it.
func TestFallbackToTCP(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	srv := NewServer(srvKey, ServerConfig{})
	if _, err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ta, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	start := time.Now()
	cli := NewClient(cliKey, ClientConfig{Supernode: blackholeUDP(t), SupernodeTCP: ta.String(), SupernodeID: srvKey.ID(),
		QUICWait: 500 * time.Millisecond, Services: map[string]Local{"echo": {Addr: echoServer(t)}}, LocalUDP: "127.0.0.1:0", Logger: testLogger(t)})
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitFor(t, "tunnel over TCP", 10*time.Second, func() bool { return srv.Has(cliKey.ID()) && cli.Up() })
	t.Logf("up over TCP %v after start (QUIC wait 500 ms)", time.Since(start))
	if tr := cli.Transport(); tr != TransportTCP {
		t.Fatalf("client on %q", tr)
	}
	c, err := srv.Dial(context.Background(), cliKey.ID(), "echo", &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 1})
	if err != nil {
		t.Fatal(err)
	}
	if tr := transportOf(c); tr != TransportTCP {
		t.Fatalf("visitor stream on %s", tr)
	}
	if got := roundTrip(t, c, []byte("fallback")); string(got) != "fallback" {
		t.Fatalf("echo %q", got)
	}
}

// udpGate forwards one client's UDP datagrams to a server and back while
// open, and drops them while closed: a network that blocks UDP, then
// stops blocking it.
type udpGate struct {
	open atomic.Bool
	pc   net.PacketConn
}

func newUDPGate(t testing.TB, server string) *udpGate {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.Dial("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	g := &udpGate{pc: pc}
	t.Cleanup(func() { pc.Close(); up.Close() })
	var client atomic.Pointer[net.Addr]
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			client.Store(&from)
			if g.open.Load() {
				up.Write(buf[:n])
			}
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := up.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP-induced errors
			}
			if to := client.Load(); to != nil && g.open.Load() {
				pc.WriteTo(buf[:n], *to)
			}
		}
	}()
	return g
}

// TestMoveBackToQUIC: a client on TCP because UDP is blocked moves back to
// QUIC when UDP gets through; a visitor stream open on TCP at that moment
// goes on working, new streams take QUIC, and the TCP tunnel closes once
// its last stream ends.
func TestMoveBackToQUIC(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	srv := NewServer(srvKey, ServerConfig{})
	ua, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	gate := newUDPGate(t, ua.String())
	cli := NewClient(cliKey, ClientConfig{Supernode: gate.pc.LocalAddr().String(), SupernodeTCP: ta.String(), SupernodeID: srvKey.ID(),
		QUICWait: 300 * time.Millisecond, UpgradeEvery: 100 * time.Millisecond,
		Services: map[string]Local{"echo": {Addr: echoServer(t)}}, LocalUDP: "127.0.0.1:0", Logger: testLogger(t)})
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitFor(t, "tunnel over TCP", 10*time.Second, func() bool { return srv.Has(cliKey.ID()) && cli.Transport() == TransportTCP })
	old, err := srv.Dial(context.Background(), cliKey.ID(), "echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	old.SetDeadline(time.Now().Add(20 * time.Second))
	echoOnce := func(c net.Conn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	echoOnce(old, "on tcp")

	gate.open.Store(true)
	start := time.Now()
	waitFor(t, "tunnel back on QUIC", 10*time.Second, func() bool {
		return cli.Transport() == TransportQUIC && srv.LenTransport(TransportQUIC) == 1
	})
	t.Logf("back on QUIC %v after UDP got through (retry every 100-200 ms)", time.Since(start))
	c, err := srv.Dial(context.Background(), cliKey.ID(), "echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if tr := transportOf(c); tr != TransportQUIC {
		t.Fatalf("new stream on %s, want quic", tr)
	}
	if got := roundTrip(t, c, []byte("on quic")); string(got) != "on quic" {
		t.Fatalf("echo %q", got)
	}
	// The stream opened on TCP still works, and its tunnel stays until it
	// ends.
	echoOnce(old, "still on tcp")
	if n := srv.LenTransport(TransportTCP); n != 1 {
		t.Fatalf("%d TCP tunnels while a stream is open on it, want 1 (draining)", n)
	}
	old.(interface{ CloseWrite() error }).CloseWrite()
	io.Copy(io.Discard, old)
	old.Close()
	waitFor(t, "the drained TCP tunnel to close", 10*time.Second, func() bool { return srv.LenTransport(TransportTCP) == 0 })
	if !cli.Up() || cli.Transport() != TransportQUIC {
		t.Fatalf("client up %v on %q after the old tunnel closed", cli.Up(), cli.Transport())
	}
}

// TestServicesTCPTransport: a supernode host listens on TCP at its UDP
// port number by default, and a node configured for TCP gets its tunnel
// there.
func TestServicesTCPTransport(t *testing.T) {
	srvSvc := NewServerService(nil)
	super, err := runHost(t, "metrics:\n  listen: \"off\"\ntunnel:\n  admitAll: true\n", config.RoleSupernode, srvSvc)
	if err != nil {
		t.Fatal(err)
	}
	udp, tcp := super.Extra["tunnel.listen"], super.Extra["tunnel.listenTCP"]
	if tcp == "" {
		t.Fatal("no TCP endpoint advertised")
	}
	_, up, _ := net.SplitHostPort(udp)
	_, tp, _ := net.SplitHostPort(tcp)
	if up != tp {
		t.Logf("TCP port %s differs from UDP port %s (dev mode: the number was taken on TCP)", tp, up)
	}
	cliSvc := NewClientService()
	node, err := runHost(t, nodeConfig(super, echoServer(t))+fmt.Sprintf("  transport: tcp\n  supernodeTCP: %s\n", tcp), config.RoleNode, cliSvc)
	if err != nil {
		t.Fatal(err)
	}
	// The supernode counts the tunnel up when it sends the welcome, the
	// node when it reads it.
	waitFor(t, "the node's TCP tunnel", 10*time.Second, func() bool { return srvSvc.Has(node.ID) && cliSvc.Client().Up() })
	if tr := cliSvc.Client().Transport(); tr != TransportTCP {
		t.Fatalf("node on %q", tr)
	}
	c, err := srvSvc.Dial(context.Background(), node.ID, "echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("svc")); string(got) != "svc" {
		t.Fatalf("echo %q", got)
	}
	_, err = runHost(t, "metrics:\n  listen: \"off\"\ntunnel-client:\n  supernode: 127.0.0.1:1\n  supernodeID: "+super.ID.String()+"\n  transport: udp\n", config.RoleNode, NewClientService())
	if err == nil || !strings.Contains(err.Error(), "transport") {
		t.Fatalf("transport: udp accepted (err %v)", err)
	}
}

// TestTCPPendingHandshakesPerSource: one source cannot hold more than
// maxPendingTCPPerSource connections in their TLS handshake; the next is
// closed at once, and a finished handshake frees its slot.
func TestTCPPendingHandshakesPerSource(t *testing.T) {
	srvKey := newKey(t)
	srv := NewServer(srvKey, ServerConfig{})
	a, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range maxPendingTCPPerSource {
		c, err := net.Dial("tcp", a.String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c) // connected, never says hello
	}
	// The silent ones hold their slots for tcpHandshakeTimeout (5 s).
	waitFor(t, "the server to count the silent connections", 4*time.Second, func() bool {
		c, err := net.Dial("tcp", a.String())
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return errors.Is(err, io.EOF) // closed at accept, not left to its handshake timeout
	})
	if srv.Refused.Load() == 0 {
		t.Fatal("no refusal counted")
	}
	// The silent ones still hold their slots; once they go, a node gets in.
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	cli := NewClient(newKey(t), ClientConfig{Supernode: a.String(), SupernodeID: srvKey.ID(), Transport: TransportTCP, BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0"})
	cli.Start()
	defer cli.Close()
	waitFor(t, "a tunnel after the silent connections closed", 10*time.Second, cli.Up)
}

// TestTCPIdleStreamMemory reports what an open, idle stream costs in the
// multiplexer alone (both ends, one process), after one small exchange.
func TestTCPIdleStreamMemory(t *testing.T) {
	const n = 2000
	srv, cli := tcpSessionPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	opened := make([]stream, 0, n)
	accepted := make([]stream, 0, n)
	for range n {
		st, err := srv.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		in, err := cli.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var one [1]byte
		if _, err := io.ReadFull(in, one[:]); err != nil {
			t.Fatal(err)
		}
		opened, accepted = append(opened, st), append(accepted, in)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / n / 1024
	t.Logf("%d idle streams: %.1f KiB heap per stream, both ends of the multiplexer", n, per)
	if per > 16 {
		t.Errorf("an idle stream costs %.1f KiB; yamux allocates stream buffers only for data in flight", per)
	}
	for i := range opened {
		opened[i].Close()
		accepted[i].Close()
	}
}

// TestMappedUDPPortWhileOnTCP: a node's UDP port needs QUIC datagrams;
// while the node is on the TCP fallback its UDP visitors are dropped (and
// counted), not sent down a tunnel that cannot carry them.
func TestMappedUDPPortWhileOnTCP(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	lo := freePort(t)
	srv, addr := portServer(t, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 20})
	ta, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	services := map[string]Local{"dns": {Addr: udpEcho(t)}}
	cli := portClient(t, cliKey, srvKey, addr, services, []PortSpec{{Service: "dns", Proto: ProtoUDP}}, nil)
	waitAnswers(t, cli, 1)
	g := grantOf(t, cli, "dns", ProtoUDP)
	vc, err := net.Dial("udp", g.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	udpRoundTrip(t, vc, "over quic")
	cli.Close()
	onTCP := NewClient(cliKey, ClientConfig{Supernode: ta.String(), SupernodeID: srvKey.ID(), Transport: TransportTCP,
		Services: services, LocalUDP: "127.0.0.1:0", Logger: testLogger(t)})
	if err := onTCP.Start(); err != nil {
		t.Fatal(err)
	}
	defer onTCP.Close()
	waitFor(t, "the node's TCP tunnel", 5*time.Second, func() bool { return srv.Has(cliKey.ID()) && srv.LenTransport(TransportTCP) == 1 })
	srv.ports.mu.Lock()
	u := srv.ports.byPort[ProtoUDP][g.Port].udp
	srv.ports.mu.Unlock()
	before := u.Dropped.Load()
	vc.Write([]byte("over tcp?"))
	waitFor(t, "the datagram to be dropped", 5*time.Second, func() bool { return u.Dropped.Load() > before })
}

// TestAutoRefusedOverQUICRetriesQUIC: a node refused over QUIC after the
// handshake (its name not registered yet) and admitted a moment later
// comes up on QUIC: a refusal proves UDP works, so it is no reason to fall
// back to TCP (which would hold no UDP ports until the next upgrade try).
func TestAutoRefusedOverQUICRetriesQUIC(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	var refused atomic.Bool
	srv := NewServer(srvKey, ServerConfig{Admit: func(identity.ID) error {
		if refused.CompareAndSwap(false, true) {
			return errors.New("not registered yet")
		}
		return nil
	}})
	ua, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli := NewClient(cliKey, ClientConfig{Supernode: ua.String(), SupernodeTCP: ta.String(), SupernodeID: srvKey.ID(),
		Transport: "auto", BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0", Logger: testLogger(t)})
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitFor(t, "tunnel up", 20*time.Second, cli.Up)
	if !refused.Load() {
		t.Fatal("the first attempt was not refused")
	}
	if tr := cli.Transport(); tr != TransportQUIC {
		t.Fatalf("tunnel up on %s after a refusal over QUIC, want %s", tr, TransportQUIC)
	}
}
