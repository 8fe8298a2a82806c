package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/proxyproto"
)

func newKey(t testing.TB) *identity.KeyPair {
	t.Helper()
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// echoServer echoes every connection until EOF, then half-closes.
func echoServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("echo server: accept: %v", err)
				}
				return
			}
			go func() {
				defer c.Close()
				// Plain copies: io.Copy(c, c) would splice, holding a
				// pipe (two more descriptors) per connection. The small
				// buffer keeps the echo's own allocation out of the
				// tunnel's per-stream figures (BenchmarkTunnelStreamSetup).
				var buf [512]byte
				io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf[:])
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

type pair struct {
	srv    *Server
	cli    *Client
	srvKey *identity.KeyPair
	cliKey *identity.KeyPair
	addr   string
}

func startPair(t testing.TB, scfg ServerConfig, services map[string]Local) *pair {
	t.Helper()
	p := &pair{srvKey: newKey(t), cliKey: newKey(t)}
	p.srv = NewServer(p.srvKey, scfg)
	a, err := p.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = a.String()
	t.Cleanup(func() { p.srv.Close() })
	p.cli = NewClient(p.cliKey, ClientConfig{Supernode: p.addr, SupernodeID: p.srvKey.ID(), Services: services, LocalUDP: "127.0.0.1:0", Logger: testLogger(t)})
	if err := p.cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cli.Close() })
	return p
}

func roundTrip(t testing.TB, c net.Conn, msg []byte) []byte {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		c.Write(msg)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return got
}

func TestTunnelEcho(t *testing.T) {
	p := startPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) && p.cli.Up() })
	msg := bytes.Repeat([]byte("pc2 tunnel "), 100_000) // 1.1 MB: several windows
	visitor := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 4444}
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "echo", visitor)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, msg); !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want %d identical", len(got), len(msg))
	}
}

func TestUnknownServiceResetsStream(t *testing.T) {
	p := startPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "nope", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err == nil {
		t.Fatal("stream to an unknown service ended cleanly; want a reset")
	}
}

func TestNoTunnel(t *testing.T) {
	srv := NewServer(newKey(t), ServerConfig{})
	if _, err := srv.Dial(context.Background(), newKey(t).ID(), "echo", nil); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("err = %v, want ErrNoTunnel", err)
	}
}

func TestWrongSupernodeIDRefused(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	srv := NewServer(srvKey, ServerConfig{})
	a, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli := NewClient(cliKey, ClientConfig{Supernode: a.String(), SupernodeID: newKey(t).ID(), BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0"})
	cli.Start()
	defer cli.Close()
	waitFor(t, "two attempts", 10*time.Second, func() bool { return cli.Attempts.Load() >= 2 })
	if cli.Connects.Load() != 0 || srv.Has(cliKey.ID()) {
		t.Fatal("client connected to a supernode with the wrong id")
	}
}

func TestAdmissionRefused(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	srv := NewServer(srvKey, ServerConfig{Admit: func(identity.ID) error { return errors.New("not registered") }})
	a, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli := NewClient(cliKey, ClientConfig{Supernode: a.String(), SupernodeID: srvKey.ID(), BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0"})
	cli.Start()
	defer cli.Close()
	waitFor(t, "two attempts", 10*time.Second, func() bool { return cli.Attempts.Load() >= 2 })
	if srv.Has(cliKey.ID()) || srv.Accepted.Load() != 0 || cli.Connects.Load() != 0 || cli.Up() {
		t.Fatal("server accepted a node its admission check refused")
	}
}

func TestHandshakeRateLimit(t *testing.T) {
	srvKey := newKey(t)
	srv := NewServer(srvKey, ServerConfig{HandshakesPerSecond: 0.001, HandshakeBurst: 1})
	a, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var clients []*Client
	for range 2 {
		c := NewClient(newKey(t), ClientConfig{Supernode: a.String(), SupernodeID: srvKey.ID(), BackoffMin: time.Millisecond, LocalUDP: "127.0.0.1:0"})
		c.Start()
		defer c.Close()
		clients = append(clients, c)
	}
	waitFor(t, "one accepted and one refused handshake", 10*time.Second, func() bool { return srv.Refused.Load() >= 1 && srv.Accepted.Load() >= 1 })
	if n := srv.Accepted.Load(); n != 1 {
		t.Fatalf("accepted %d tunnels with a burst of 1", n)
	}
}

func TestStreamQuota(t *testing.T) {
	p := startPair(t, ServerConfig{MaxStreamsPerNode: 2}, map[string]Local{"echo": {Addr: echoServer(t)}})
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
	c2.Close()
	c3.Close()
}

func TestReconnectAfterServerRestart(t *testing.T) {
	p := startPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	p.srv.Close()
	waitFor(t, "client to notice", 5*time.Second, func() bool { return !p.cli.Up() })
	srv2 := NewServer(p.srvKey, ServerConfig{})
	if _, err := srv2.Listen(p.addr); err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	start := time.Now()
	waitFor(t, "reconnect", 5*time.Second, func() bool { return srv2.Has(p.cliKey.ID()) })
	t.Logf("reconnected %v after the server listened again", time.Since(start))
	c, err := srv2.Dial(context.Background(), p.cliKey.ID(), "echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("again")); string(got) != "again" {
		t.Fatalf("got %q", got)
	}
}

func TestLocalProxyProtocol(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan proxyproto.Header, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h, err := proxyproto.Read(c, 256)
		if err == nil {
			got <- h
		}
		close(got)
	}()
	p := startPair(t, ServerConfig{}, map[string]Local{"web": {Addr: ln.Addr().String(), ProxyProtocol: true}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	visitor := &net.TCPAddr{IP: net.IPv4(198, 51, 100, 9), Port: 5555}
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "web", visitor)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case h, ok := <-got:
		if !ok {
			t.Fatal("local service got no PROXY header")
		}
		if want := netip.MustParseAddrPort("198.51.100.9:5555"); h.Source != want {
			t.Fatalf("PROXY source %v, want %v", h.Source, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection to the local service")
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Service: "https"},
		{Service: "a", Visitor: netip.MustParseAddrPort("203.0.113.1:443")},
		{Service: "web-1.x_y", Visitor: netip.MustParseAddrPort("[2001:db8::1]:65535")},
	} {
		b, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		got, n, err := ParseHeader(append(b, "trailing"...))
		if err != nil || n != len(b) || got != h {
			t.Fatalf("ParseHeader(%x) = %+v, %d, %v; want %+v, %d", b, got, n, err, h, len(b))
		}
		got, err = ReadHeader(bytes.NewReader(b))
		if err != nil || got != h {
			t.Fatalf("ReadHeader = %+v, %v", got, err)
		}
	}
	for _, bad := range [][]byte{nil, {2, 1, 'a', 0}, {1, 0}, {1, 64}, {1, 1, 'A', 0}, {1, 1, 'a', 5}, {1, 1, 'a', 4, 1, 2}} {
		if _, _, err := ParseHeader(bad); !errors.Is(err, ErrBadHeader) {
			t.Fatalf("ParseHeader(%x) err = %v, want ErrBadHeader", bad, err)
		}
	}
	if _, err := (Header{Service: "UPPER"}).AppendBinary(nil); err == nil {
		t.Fatal("encoded a bad service name")
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := 250*time.Millisecond, 30*time.Second
	for i := range 100 {
		if d := Backoff(0, lo, hi); d <= 0 || d > lo {
			t.Fatalf("first retry waits %v, want (0, %v]", d, lo)
		}
		if d := Backoff(i, lo, hi); d <= 0 || d > hi {
			t.Fatalf("retry %d waits %v, want (0, %v]", i, d, hi)
		}
	}
}

// TestWakeAfterCrash: a supernode that dies without closing its tunnels
// (kill -9: no CONNECTION_CLOSE) and comes back wakes its nodes, which
// reconnect long before their keep-alive would have found out.
func TestWakeAfterCrash(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	seen := make(chan net.Addr, 1)
	srv := NewServer(srvKey, ServerConfig{OnUp: func(_ identity.ID, a net.Addr) { seen <- a }})
	a, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cli := NewClient(cliKey, ClientConfig{Supernode: a.String(), SupernodeID: srvKey.ID(), LocalUDP: "127.0.0.1:0",
		Services: map[string]Local{"echo": {Addr: echoServer(t)}}})
	cli.Start()
	defer cli.Close()
	var nodeAddr net.Addr
	select {
	case nodeAddr = <-seen:
	case <-time.After(5 * time.Second):
		t.Fatal("no tunnel")
	}
	// Let the tunnel go quiet (handshake and path MTU probes done), as a
	// long-lived idle tunnel is: no packet in flight to reveal the crash.
	waitFor(t, "client side up", 5*time.Second, cli.Up)
	var lastSent uint64
	quietSince := time.Now()
	waitFor(t, "an idle tunnel", 5*time.Second, func() bool {
		n := cli.conn.Load().ConnectionStats().PacketsSent
		if n != lastSent {
			lastSent, quietSince = n, time.Now()
		}
		return time.Since(quietSince) > 500*time.Millisecond
	})
	// Crash: the socket goes away first, so no close frame leaves.
	srv.tr.Conn.Close()
	srv.Close()
	if !cli.Up() {
		t.Fatal("client saw the crash; the test needs a silent death")
	}

	srv2 := NewServer(srvKey, ServerConfig{})
	if _, err := srv2.Listen(a.String()); err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	start := time.Now()
	srv2.Wake([]netip.AddrPort{nodeAddr.(*net.UDPAddr).AddrPort()})
	// Without the wake the node would notice at its next keep-alive
	// (Idle/2 = 7.5 s) at the earliest.
	waitFor(t, "reconnect after wake", Idle/2-time.Second, func() bool { return srv2.Has(cliKey.ID()) })
	t.Logf("node back %v after the restarted supernode woke it", time.Since(start))
	// The supernode counts the tunnel up when it sends the welcome, the
	// node when it reads it.
	waitFor(t, "the node to count its second connect", 5*time.Second, func() bool { return cli.Connects.Load() >= 2 })
	if n := cli.Connects.Load(); n != 2 {
		t.Fatalf("connects = %d, want 2", n)
	}
}

// testLogger logs warnings and errors to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
