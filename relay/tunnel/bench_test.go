package tunnel

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
)

// discardServer reads every connection to EOF and answers with the byte
// count's low byte, so a writer knows all bytes went through.
func discardServer(t testing.TB) string {
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
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				c.Write([]byte{byte(n)})
			}()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkTunnelUpload: bytes/s from the supernode through one visitor
// stream to the node's local service (loopback, TLS 1.3 QUIC).
func BenchmarkTunnelUpload(b *testing.B) {
	p := startPair(b, ServerConfig{}, map[string]Local{"sink": {Addr: discardServer(b)}})
	waitFor(b, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "sink", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	var one [1]byte
	if _, err := io.ReadFull(c, one[:]); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	c.Close()
}

// BenchmarkTunnelStreamSetup: a visitor stream opened, one byte echoed,
// closed: the per-visitor cost of the tunnel.
func BenchmarkTunnelStreamSetup(b *testing.B) {
	p := startPair(b, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(b)}})
	waitFor(b, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	visitor := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 4444}
	b.ReportAllocs()
	for range b.N {
		c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "echo", visitor)
		if err != nil {
			b.Fatal(err)
		}
		c.Write([]byte{1})
		c.(interface{ CloseWrite() error }).CloseWrite()
		if _, err := io.ReadAll(c); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

func BenchmarkHeaderRoundTrip(b *testing.B) {
	h := Header{Service: "https", Visitor: netip.MustParseAddrPort("[2001:db8::1]:443")}
	var buf [MaxHeaderLen]byte
	b.ReportAllocs()
	for range b.N {
		enc, _ := h.AppendBinary(buf[:0])
		if _, _, err := ParseHeader(enc); err != nil {
			b.Fatal(err)
		}
	}
}

// TestManyConcurrentStreams: many (PC2_TUNNEL_STREAMS, issue: 10,000) visitor streams open at once through
// one node's tunnel all complete, and the heap growth per open stream
// (both ends in this process) is reported.
func TestManyConcurrentStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 streams; not in -short")
	}
	// 1,000 by default to keep CI quick; PC2_TUNNEL_STREAMS=10000 runs the
	// issue's figure (about 15 s and 0.7 GB of heap without -race).
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("PC2_TUNNEL_STREAMS")); err == nil && v > 0 {
		n = v
	}
	// The echo server runs in a child process, so that this process holds
	// one descriptor per stream (the node's local connection), not two.
	p := startPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoProcess(t)}})
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
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("stream %d write: %v", i, err)
		}
		conns[i] = c
		// Reading the echo before opening the next stream paces the local
		// service's accept queue (somaxconn); all streams stay open.
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil || one[0] != byte(i) {
			t.Fatalf("stream %d: read %v %v", i, one, err)
		}
	}
	// All n are open at once: each still echoes.
	for i, c := range conns {
		if _, err := c.Write([]byte{byte(i + 1)}); err != nil {
			t.Fatalf("stream %d second write: %v", i, err)
		}
	}
	for i, c := range conns {
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil || one[0] != byte(i+1) {
			t.Fatalf("stream %d: second read %v %v", i, one, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&during)
	t.Logf("%d concurrent streams open: heap +%d KiB, %.1f KiB per stream (supernode and node ends, plus the node's local TCP connections, in one process)",
		n, (during.HeapInuse-before.HeapInuse)>>10, float64(during.HeapInuse-before.HeapInuse)/float64(n)/1024)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.(interface{ CloseWrite() error }).CloseWrite()
			io.Copy(io.Discard, c)
			c.Close()
		}()
	}
	wg.Wait()
}

const echoEnv = "PC2_TUNNEL_TEST_ECHO"

const clientsEnv = "PC2_TUNNEL_TEST_CLIENTS" // "n supernode-addr supernode-id [transport]"

func TestMain(m *testing.M) {
	if v := os.Getenv(clientsEnv); v != "" {
		os.Exit(runClients(v))
	}
	if os.Getenv(echoEnv) == "1" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			os.Exit(1)
		}
		fmt.Println(ln.Addr())
		go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }() // parent gone: exit
		for {
			c, err := ln.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, "echo process:", err)
				os.Exit(1)
			}
			go func() {
				defer c.Close()
				// Plain copies: io.Copy(c, c) would splice, holding a
				// pipe (two more descriptors) per connection.
				io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}
	os.Exit(m.Run())
}

// echoProcess starts an echo server in a child process and returns its
// address.
func echoProcess(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), echoEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("echo process: %v", err)
	}
	return strings.TrimSpace(line)
}

// runClients is the child side of TestIdleTunnelMemory: n tunnel clients
// to one supernode, until stdin closes.
func runClients(spec string) int {
	var n int
	var addr, idText, transport string
	if _, err := fmt.Sscan(spec, &n, &addr, &idText); err != nil {
		return 2
	}
	if f := strings.Fields(spec); len(f) > 3 {
		transport = f[3]
	}
	sid, err := identity.ParseID(idText)
	if err != nil {
		return 2
	}
	for range n {
		kp, _ := identity.Generate(rand.Reader)
		c := NewClient(kp, ClientConfig{Supernode: addr, SupernodeID: sid, LocalUDP: "127.0.0.1:0", Transport: transport})
		if err := c.Start(); err != nil {
			return 1
		}
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestIdleTunnelMemory reports the supernode's heap and goroutines per
// idle tunnel: the clients run in a child process, so only the server's
// side is measured. PC2_TUNNEL_IDLE sets the count (default 200).
func TestIdleTunnelMemory(t *testing.T) {
	for _, tr := range []string{TransportQUIC, TransportTCP} {
		t.Run(tr, func(t *testing.T) { idleTunnelMemory(t, tr) })
	}
}

func idleTunnelMemory(t *testing.T, transport string) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("PC2_TUNNEL_IDLE")); err == nil && v > 0 {
		n = v
	}
	srvKey := newKey(t)
	srv := NewServer(srvKey, ServerConfig{HandshakesPerSecond: 1e6, HandshakeBurst: n})
	a, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if transport == TransportTCP {
		if a, err = srv.ListenTCP("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	defer srv.Close()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d %s %s %s", clientsEnv, n, a, srvKey.ID(), transport))
	stdin, _ := cmd.StdinPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	waitFor(t, fmt.Sprintf("%d tunnels", n), 60*time.Second, func() bool { return srv.Len() == n })
	runtime.GC()
	runtime.ReadMemStats(&after)
	perTunnel := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(n) / 1024
	if got := srv.LenTransport(transport); got != n {
		t.Fatalf("%d of %d tunnels on %s", got, n, transport)
	}
	if path := os.Getenv("PC2_TUNNEL_HEAPPROFILE"); path != "" {
		// What idle tunnels hold: go tool pprof -sample_index=inuse_space.
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		pprof.WriteHeapProfile(f)
		f.Close()
	}
	t.Logf("%d idle %s tunnels: supernode heap %.1f KiB per tunnel, %.1f goroutines per tunnel (goal ≤ 16 KiB; stacks not included)",
		n, transport, perTunnel, float64(runtime.NumGoroutine()-g0)/float64(n))
}
