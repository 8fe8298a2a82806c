package fuzz

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/tunnel"
	"github.com/elacity/pc2/transport/quicid"
)

// yamuxFrame encodes one yamux frame (version 0): type, flags, stream id,
// length (the body's, or a window delta or ping id), body.
func yamuxFrame(typ byte, flags uint16, id, length uint32, body []byte) []byte {
	b := []byte{0, typ, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint32(b[4:], id)
	binary.BigEndian.PutUint32(b[8:], length)
	return append(b, body...)
}

func tunnelTCPSeeds() [][]byte {
	const syn, ack, fin, rst = 1, 2, 4, 8
	hdr, _ := tunnel.Header{Service: "echo"}.AppendBinary(nil)
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	return [][]byte{
		// node side: a supernode-opened stream (even id) with a header
		cat(yamuxFrame(1, syn, 2, 0, nil), yamuxFrame(0, 0, 2, uint32(len(hdr)), hdr), yamuxFrame(1, fin, 2, 0, nil)),
		// supernode side: a node-opened stream (odd id), data, reset
		cat(yamuxFrame(1, syn, 1, 0, nil), yamuxFrame(0, 0, 1, 5, []byte("hello")), yamuxFrame(1, rst, 1, 0, nil)),
		cat(yamuxFrame(2, syn, 0, 42, nil), yamuxFrame(2, ack, 0, 7, nil)), // ping, stray pong
		yamuxFrame(3, 0, 0, 0, nil),                                       // go away
		yamuxFrame(0, syn, 3, 0xffffffff, nil),                            // data past the window
		yamuxFrame(1, 0, 9, 0xffffffff, nil),                              // window update, unknown stream
		cat(yamuxFrame(1, syn, 1, 0, nil), yamuxFrame(1, syn, 1, 0, nil)), // duplicate stream
		{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},                              // bad version
		{0, 9, 0, 0},                                                      // bad type, short
	}
}

var tcpFuzz struct {
	once     sync.Once
	srv      *tunnel.Server
	srvAddr  string
	srvKey   *identity.KeyPair
	nodeConf *tls.Config // a node's config for srv
	fakeLn   net.Listener
	fakeKey  *identity.KeyPair
	fakeConf *tls.Config
}

func setupTCPFuzz(t testing.TB) {
	tcpFuzz.once.Do(func() {
		var err error
		tcpFuzz.srvKey, _ = identity.Generate(rand.Reader)
		tcpFuzz.srv = tunnel.NewServer(tcpFuzz.srvKey, tunnel.ServerConfig{HandshakesPerSecond: 1e9, HandshakeBurst: 1 << 30})
		a, err := tcpFuzz.srv.ListenTCP("127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		tcpFuzz.srvAddr = a.String()
		nk, _ := identity.Generate(rand.Reader)
		if tcpFuzz.nodeConf, err = quicid.ClientConfig(nk, tunnel.ALPN, tcpFuzz.srvKey.ID()); err != nil {
			panic(err)
		}
		tcpFuzz.fakeKey, _ = identity.Generate(rand.Reader)
		if tcpFuzz.fakeConf, err = quicid.ServerConfig(tcpFuzz.fakeKey, tunnel.ALPN, nil); err != nil {
			panic(err)
		}
		if tcpFuzz.fakeLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			panic(err)
		}
	})
}

// FuzzTunnelTCPSession feeds arbitrary bytes, after an authenticated TLS
// handshake and the welcome, to both ends of the TCP tunnel transport:
// the supernode's Server (bytes from a node) and a node's Client (bytes
// from a supernode). Each must neither panic nor hang: the supernode drops
// the tunnel when the connection closes, allocating a bounded amount; the
// node's Client closes promptly and leaves no goroutines behind.
func FuzzTunnelTCPSession(f *testing.F) {
	for _, s := range tunnelTCPSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		setupTCPFuzz(t)
		fuzzServerSide(t, data)
		fuzzClientSide(t, data)
	})
}

func fuzzServerSide(t *testing.T, data []byte) {
	srv := tcpFuzz.srv
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	raw, err := net.Dial("tcp", tcpFuzz.srvAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := tls.Client(raw, tcpFuzz.nodeConf)
	var welcome [1]byte
	if _, err := io.ReadFull(c, welcome[:]); err != nil {
		t.Fatalf("no welcome: %v", err)
	}
	go io.Copy(io.Discard, c) // whatever the server answers
	c.Write(data)
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for srv.LenTransport(tunnel.TransportTCP) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the supernode kept the tunnel of a closed connection after %d bytes", len(data))
		}
		time.Sleep(time.Millisecond)
	}
	runtime.ReadMemStats(&after)
	// A handshake and a session cost well under 1 MiB; what the bytes
	// make the server allocate must stay in proportion to them.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 2<<20+16*uint64(len(data)) {
		t.Fatalf("the supernode allocated %d bytes for %d input bytes", grew, len(data))
	}
}

func fuzzClientSide(t *testing.T, data []byte) {
	g0 := runtime.NumGoroutine()
	nk, _ := identity.Generate(rand.Reader)
	cli := tunnel.NewClient(nk, tunnel.ClientConfig{
		Supernode: tcpFuzz.fakeLn.Addr().String(), SupernodeID: tcpFuzz.fakeKey.ID(), Transport: tunnel.TransportTCP,
		LocalUDP: "127.0.0.1:0", BackoffMin: time.Hour, DialTimeout: 100 * time.Millisecond,
		Services: map[string]tunnel.Local{"echo": {Addr: "127.0.0.1:1"}}, // refuses: nothing listens on port 1
	})
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	raw, err := tcpFuzz.fakeLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := tls.Server(raw, tcpFuzz.fakeConf)
	if _, err := c.Write([]byte{tunnel.Version}); err != nil { // the welcome
		t.Fatalf("welcome: %v", err)
	}
	drained := make(chan struct{})
	go func() { io.Copy(io.Discard, c); close(drained) }()
	c.Write(data)
	c.CloseWrite()
	// The node ends the session at the end of the bytes (or earlier, at
	// bad ones), whatever they were.
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatalf("the node kept the session open after %d bytes and the end of the connection", len(data))
	}
	closed := make(chan struct{})
	go func() { cli.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("the node's client did not close after %d bytes from the supernode", len(data))
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > g0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left behind (had %d)", runtime.NumGoroutine(), g0)
		}
		time.Sleep(time.Millisecond)
	}
}
