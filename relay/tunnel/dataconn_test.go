package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/gateway/proxyproto"
)

// startDataPair starts a server with both endpoints and a client on
// transport that keeps n data connections.
func startDataPair(t testing.TB, transport string, n int, scfg ServerConfig, services map[string]Local) *pair {
	t.Helper()
	p := &pair{srvKey: newKey(t), cliKey: newKey(t)}
	p.srv = NewServer(p.srvKey, scfg)
	ua, err := p.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta, err := p.srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ua.String()
	t.Cleanup(func() { p.srv.Close() })
	p.cli = NewClient(p.cliKey, ClientConfig{Supernode: ua.String(), SupernodeTCP: ta.String(), SupernodeID: p.srvKey.ID(),
		Transport: transport, DataConns: n, Services: services, LocalUDP: "127.0.0.1:0", Logger: testLogger(t)})
	if err := p.cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cli.Close() })
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) && p.cli.Up() })
	if n > 0 && scfg.BytesPerSecond == 0 {
		waitFor(t, "data connections pooled", 5*time.Second, func() bool { return p.idleData() == n })
	}
	return p
}

// tunnel is the node's current tunnel on the server.
func (p *pair) tunnel() *tunnelConn {
	p.srv.mu.Lock()
	defer p.srv.mu.Unlock()
	return p.srv.tunnels[p.cliKey.ID()]
}

// idleData is the number of idle data connections the server holds for
// the pair's node.
func (p *pair) idleData() int {
	tc := p.tunnel()
	if tc == nil || tc.data == nil {
		return -1
	}
	return tc.data.len()
}

func (p *pair) dataKeys(t testing.TB) *DataKeys {
	p.srv.mu.Lock()
	defer p.srv.mu.Unlock()
	tc := p.srv.tunnels[p.cliKey.ID()]
	if tc == nil || tc.data == nil {
		t.Fatal("no data pool")
	}
	return tc.data.keys
}

// TestDataConnsCarryTLSVisitors: on either tunnel transport, a visitor of
// the passthrough service rides an idle data connection (the gateway gets
// a socket it can splice), its bytes come back whole with each half-close
// passed on, its address reaches the local service sealed, the node opens
// a replacement, and other services still go over the tunnel's streams.
func TestDataConnsCarryTLSVisitors(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			echo := echoServer(t)
			p := startDataPair(t, transport, 2, ServerConfig{}, map[string]Local{"https": {Addr: echo}, "echo": {Addr: echo}})
			if p.cli.Transport() != transport {
				t.Fatalf("tunnel on %s, want %s", p.cli.Transport(), transport)
			}
			msg := bytes.Repeat([]byte("pc2 data connection "), 60_000) // 1.2 MB
			c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "https", nil)
			if err != nil {
				t.Fatal(err)
			}
			dc, ok := c.(*dataConn)
			if !ok {
				t.Fatalf("https visitor got %T, want a data connection", c)
			}
			if dc.TCP() == nil {
				t.Fatal("data connection exposes no socket to splice")
			}
			if got := roundTrip(t, c, msg); !bytes.Equal(got, msg) {
				t.Fatalf("echo returned %d bytes, want %d identical", len(got), len(msg))
			}
			if n := p.srv.DataUsed.Load(); n != 1 {
				t.Fatalf("DataUsed = %d, want 1", n)
			}
			waitFor(t, "replacement data connection", 5*time.Second, func() bool { return p.idleData() == 2 })
			waitFor(t, "stream quota returned", 5*time.Second, func() bool { return p.tunnel().streams.Load() == 0 })

			c, err = p.srv.Dial(context.Background(), p.cliKey.ID(), "echo", nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := c.(*streamConn); !ok {
				t.Fatalf("echo visitor got %T, want a tunnel stream", c)
			}
			if got := roundTrip(t, c, []byte("stream")); string(got) != "stream" {
				t.Fatalf("echo %q", got)
			}
		})
	}
}

// TestDataConnVisitorAddressSealed: the visitor's address reaches a
// PROXY-protocol service through a data connection.
func TestDataConnVisitorAddressSealed(t *testing.T) {
	proxied := make(chan proxyproto.Header, 1)
	p := startDataPair(t, TransportTCP, 1, ServerConfig{DataServices: []string{"pp"}}, map[string]Local{
		"pp": {Addr: proxyHeaderServer(t, proxied), ProxyProtocol: true},
	})
	visitor := &net.TCPAddr{IP: net.IPv4(198, 51, 100, 9), Port: 5555}
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "pp", visitor)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*dataConn); !ok {
		t.Fatalf("visitor got %T, want a data connection", c)
	}
	select {
	case h := <-proxied:
		if want := netip.MustParseAddrPort("198.51.100.9:5555"); h.Source != want {
			t.Fatalf("PROXY source %v, want %v", h.Source, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no PROXY header at the local service")
	}
}

// proxyHeaderServer accepts connections and passes on each one's PROXY
// header.
func proxyHeaderServer(t testing.TB, got chan<- proxyproto.Header) string {
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
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if h, err := proxyproto.Read(c, 256); err == nil {
					select {
					case got <- h:
					default:
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestDataConnIntegrity: concurrent visitors, more than the pool holds,
// send random bytes in random chunks while some abort half-way; the pool
// carries some and the tunnel's streams the overflow, and each visitor
// that completes gets exactly its own bytes back (the splice relay's
// pipes are shared: a pipe reused with bytes in it shows up here).
func TestDataConnIntegrity(t *testing.T) {
	const pool = 12
	p := startDataPair(t, TransportTCP, pool, ServerConfig{}, map[string]Local{"https": {Addr: echoServer(t)}})
	waves, perWave, size := 3, pool+4, 256<<10
	if testing.Short() {
		waves, size = 2, 64<<10
	}
	for wave := range waves {
		waitFor(t, "pool refilled", 10*time.Second, func() bool { return p.idleData() == pool })
		var wg sync.WaitGroup
		for i := range perWave {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dataIntegrityVisitor(t, p, mrand.New(mrand.NewPCG(uint64(wave), uint64(i))), size, i%6 == 0)
			}()
		}
		wg.Wait()
	}
	// Each wave starts with a full pool; replacements may carry more.
	used, all := p.srv.DataUsed.Load(), int64(waves*perWave)
	if used < int64(waves*pool) {
		t.Fatalf("%d of %d visitors rode data connections, want at least %d", used, all, waves*pool)
	}
	t.Logf("%d of %d visitors on data connections, the rest on tunnel streams", used, all)
}

// dataIntegrityVisitor sends size random bytes in random chunks to the
// echo service and checks it gets exactly them back; with abort it
// vanishes half-way instead.
func dataIntegrityVisitor(t *testing.T, p *pair, rng *mrand.Rand, size int, abort bool) {
	want := make([]byte, size)
	for j := range want {
		want[j] = byte(rng.Uint32())
	}
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "https", nil)
	if err != nil {
		t.Errorf("dial: %v", err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var got bytes.Buffer
	done := make(chan error, 1)
	go func() { _, err := io.Copy(&got, c); done <- err }()
	for off := 0; off < len(want); {
		if abort && off > len(want)/2 {
			c.Close()
			<-done
			return
		}
		n := min(len(want)-off, 1+rng.IntN(40<<10))
		if _, err := c.Write(want[off : off+n]); err != nil {
			t.Errorf("write: %v", err)
			return
		}
		off += n
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	if err := <-done; err != nil {
		t.Errorf("read: %v", err)
		return
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("got %d bytes back, want its own %d", got.Len(), len(want))
	}
}

// dialData opens a raw connection to the server's TCP endpoint and sends
// hello; it returns whether the server kept it open.
func sendDataHello(t *testing.T, addr string, hello []byte) (net.Conn, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	return c, errors.As(err, &ne) && ne.Timeout() // still open, silent
}

// TestDataConnHellosRefused: a hello with a wrong MAC, for a node without
// a tunnel, a replayed one, one beyond the pool bound and garbage are all
// closed and counted; a valid one is pooled.
func TestDataConnHellosRefused(t *testing.T) {
	p := startDataPair(t, TransportTCP, 1, ServerConfig{DataConnsPerNode: 2}, map[string]Local{"https": {Addr: echoServer(t)}})
	tcpAddr := p.cli.cfg.SupernodeTCP
	keys := p.dataKeys(t)
	var other [64]byte
	rand.Read(other[:])
	wrong, _ := NewDataKeys(other[:])
	stranger := newKey(t).ID()

	refused := p.srv.DataRefused.Load()
	for _, tc := range []struct {
		name  string
		hello []byte
	}{
		{"wrong key", wrong.AppendHello(nil, p.cliKey.ID(), 1000)},
		{"no tunnel", keys.AppendHello(nil, stranger, 1001)},
		{"seq 0", keys.AppendHello(nil, p.cliKey.ID(), 0)},
		{"garbage", append([]byte("PC2D\x09"), make([]byte, DataHelloLen-5)...)},
	} {
		if _, open := sendDataHello(t, tcpAddr, tc.hello); open {
			t.Errorf("%s: hello accepted", tc.name)
		}
	}
	if n := p.srv.DataRefused.Load() - refused; n != 4 {
		t.Fatalf("DataRefused grew by %d, want 4", n)
	}
	valid := keys.AppendHello(nil, p.cliKey.ID(), 1<<40)
	if _, open := sendDataHello(t, tcpAddr, valid); !open {
		t.Fatal("valid hello refused")
	}
	if _, open := sendDataHello(t, tcpAddr, valid); open {
		t.Fatal("replayed hello accepted")
	}
	// The pool holds 2 (the node's own and ours): the next is refused.
	if _, open := sendDataHello(t, tcpAddr, keys.AppendHello(nil, p.cliKey.ID(), 1<<40+1)); open {
		t.Fatal("hello beyond the pool bound accepted")
	}
	if n := p.idleData(); n != 2 {
		t.Fatalf("pool holds %d, want 2", n)
	}
}

// TestStaleDataConnSkipped: a pooled connection the node has closed is
// found at take and skipped; the visitor rides the next one.
func TestStaleDataConnSkipped(t *testing.T) {
	p := startDataPair(t, TransportTCP, 1, ServerConfig{}, map[string]Local{"https": {Addr: echoServer(t)}})
	c, open := sendDataHello(t, p.cli.cfg.SupernodeTCP, p.dataKeys(t).AppendHello(nil, p.cliKey.ID(), 1<<50))
	if !open {
		t.Fatal("hello refused")
	}
	c.Close() // newest in the pool: taken first
	waitFor(t, "both pooled", 5*time.Second, func() bool { return p.idleData() == 2 })
	v, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "https", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := v.(*dataConn); !ok {
		t.Fatalf("visitor got %T, want the node's data connection", v)
	}
	if got := roundTrip(t, v, []byte("after stale")); string(got) != "after stale" {
		t.Fatalf("echo %q", got)
	}
	if n := p.srv.DataStale.Load(); n != 1 {
		t.Fatalf("DataStale = %d, want 1", n)
	}
}

// TestDataConnsFollowTheTunnel: when the node's tunnel ends, the server
// drops its pooled connections and the node's new tunnel gets a new pool
// under new keys (the old keys are refused).
func TestDataConnsFollowTheTunnel(t *testing.T) {
	p := startDataPair(t, TransportTCP, 2, ServerConfig{}, map[string]Local{"https": {Addr: echoServer(t)}})
	old := p.dataKeys(t)
	tc := p.tunnel()
	tc.sess.Close("test")
	waitFor(t, "old pool closed", 5*time.Second, func() bool {
		tc.data.mu.Lock()
		defer tc.data.mu.Unlock()
		return len(tc.data.idle) == 0 && tc.data.closed
	})
	waitFor(t, "new tunnel with a pool", 10*time.Second, func() bool { return p.idleData() == 2 && p.dataKeys(t) != old })
	if _, open := sendDataHello(t, p.cli.cfg.SupernodeTCP, old.AppendHello(nil, p.cliKey.ID(), 1<<30)); open {
		t.Fatal("hello under the old tunnel's keys accepted")
	}
	v, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "https", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, v, []byte("new pool")); string(got) != "new pool" {
		t.Fatalf("echo %q", got)
	}
}

// TestNoDataConnsUnderByteQuota: a node with a bytes/s quota gets no data
// pool (the quota is counted on tunnel streams): its data connections are
// refused and its visitors ride the tunnel.
func TestNoDataConnsUnderByteQuota(t *testing.T) {
	p := startDataPair(t, TransportTCP, 1, ServerConfig{BytesPerSecond: 1 << 20}, map[string]Local{"https": {Addr: echoServer(t)}})
	waitFor(t, "a refused data connection", 5*time.Second, func() bool { return p.cli.DataFailures.Load() > 0 })
	if n := p.idleData(); n != -1 {
		t.Fatalf("pool of %d under a byte quota, want none", n)
	}
	v, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "https", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := v.(*streamConn); !ok {
		t.Fatalf("visitor got %T, want a tunnel stream", v)
	}
	v.Close()
}

// TestDataHelloAndHeader: encodings round-trip, every byte of a hello is
// covered by its MAC, and a header sealed for one connection does not
// open on another.
func TestDataHelloAndHeader(t *testing.T) {
	var secret [64]byte
	rand.Read(secret[:])
	k, err := NewDataKeys(secret[:])
	if err != nil {
		t.Fatal(err)
	}
	id := newKey(t).ID()
	hello := k.AppendHello(nil, id, 42)
	gotID, seq, err := ParseDataHello(hello)
	if err != nil || gotID != id || seq != 42 || !k.VerifyHello(hello) {
		t.Fatalf("ParseDataHello = %v %d %v, verify %v", gotID, seq, err, k.VerifyHello(hello))
	}
	for i := range hello {
		bad := bytes.Clone(hello)
		bad[i] ^= 0x01
		if _, _, err := ParseDataHello(bad); err == nil && k.VerifyHello(bad) {
			t.Fatalf("hello with byte %d flipped accepted", i)
		}
	}
	h := Header{Service: "https", Visitor: netip.MustParseAddrPort("[2001:db8::7]:443")}
	sealed, err := k.SealHeader(nil, 42, h)
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.ReadHeader(bytes.NewReader(sealed), 42)
	if err != nil || got != h {
		t.Fatalf("ReadHeader = %+v, %v", got, err)
	}
	if _, err := k.ReadHeader(bytes.NewReader(sealed), 43); !errors.Is(err, ErrBadDataConn) {
		t.Fatalf("header opened under another sequence number: %v", err)
	}
}

// BenchmarkDataConnUpload: bytes/s from the supernode through one
// visitor's data connection to the node's local service, spliced on the
// node; compare BenchmarkTCPTunnelUpload (the same visitor inside the
// TLS+yamux tunnel).
func BenchmarkDataConnUpload(b *testing.B) {
	p := startDataPair(b, TransportTCP, 1, ServerConfig{}, map[string]Local{"https": {Addr: discardServer(b)}})
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "https", nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, ok := c.(*dataConn); !ok {
		b.Fatalf("visitor got %T, want a data connection", c)
	}
	benchUpload(b, c)
}

// BenchmarkDataConnSetup: a visitor taken onto an idle data connection,
// one byte echoed, closed, while the node replaces what was taken; the
// share that found the pool empty rode the tunnel (reported as data/op).
func BenchmarkDataConnSetup(b *testing.B) {
	p := startDataPair(b, TransportTCP, 16, ServerConfig{}, map[string]Local{"https": {Addr: echoServer(b)}})
	visitor := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 4444}
	used := p.srv.DataUsed.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "https", visitor)
		if err != nil {
			b.Fatal(err)
		}
		echoByte(b, c)
	}
	b.ReportMetric(float64(p.srv.DataUsed.Load()-used)/float64(b.N), "data/op")
}
