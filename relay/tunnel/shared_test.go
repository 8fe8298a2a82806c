package tunnel

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/transport/udpmux"
)

// TestTunnelOnSharedSocket runs the client on a node's shared socket: the
// supernode sees the tunnel come from that socket (the one whose NAT
// mapping the node discovers), other handlers on the socket keep their
// packets, and a wake message sent to that socket after a supernode restart
// brings the tunnel back long before the 60 s backoff would.
func TestTunnelOnSharedSocket(t *testing.T) {
	mux, err := udpmux.Listen("udp4", "127.0.0.1:0", udpmux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	other := make(chan []byte, 1)
	mux.Handle(udpmux.FirstByte(0x01, 0x01), func(p []byte, _ netip.AddrPort) bool { other <- append([]byte(nil), p...); return true })

	srvKey, cliKey := newKey(t), newKey(t)
	upFrom := make(chan net.Addr, 4)
	scfg := ServerConfig{OnUp: func(_ identity.ID, a net.Addr) { upFrom <- a }}
	srv := NewServer(srvKey, scfg)
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cli := NewClient(cliKey, ClientConfig{Supernode: addr.String(), SupernodeID: srvKey.ID(), Shared: mux,
		Services: map[string]Local{"echo": {Addr: echoServer(t)}}, BackoffMin: time.Minute, BackoffMax: time.Minute, Logger: testLogger(t)})
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitFor(t, "tunnel", 5*time.Second, func() bool { return srv.Has(cliKey.ID()) && cli.Up() })
	if a := <-upFrom; a.(*net.UDPAddr).AddrPort() != mux.LocalAddr() {
		t.Fatalf("tunnel came from %s, not the shared socket %s", a, mux.LocalAddr())
	}
	c, err := srv.Dial(context.Background(), cliKey.ID(), "echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("shared")); string(got) != "shared" {
		t.Fatalf("echo %q", got)
	}
	// A non-QUIC packet for another handler still gets there.
	u, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer u.Close()
	u.WriteToUDPAddrPort([]byte{0x01, 'x'}, mux.LocalAddr())
	select {
	case p := <-other:
		if string(p) != "\x01x" {
			t.Fatalf("other handler got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("other handler got nothing")
	}

	srv.Close()
	waitFor(t, "client to notice", 10*time.Second, func() bool { return !cli.Up() })
	srv2 := NewServer(srvKey, scfg)
	if _, err := srv2.Listen(addr.String()); err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	srv2.Wake([]netip.AddrPort{mux.LocalAddr()})
	waitFor(t, "reconnect after wake", 10*time.Second, func() bool { return srv2.Has(cliKey.ID()) })
}

// TestTwoTunnelsShareASocket: two tunnels to two supernodes on one shared
// socket; the second supernode restarts and wakes the node: the first
// tunnel's wake handler (registered first) must pass the message on, and
// the second tunnel comes back at once.
func TestTwoTunnelsShareASocket(t *testing.T) {
	mux, err := udpmux.Listen("udp4", "127.0.0.1:0", udpmux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	cliKey := newKey(t)
	var srvs [2]*Server
	var keys [2]*identity.KeyPair
	var addrs [2]string
	var clis [2]*Client
	for i := range 2 {
		keys[i] = newKey(t)
		srvs[i] = NewServer(keys[i], ServerConfig{})
		a, err := srvs[i].Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = a.String()
		clis[i] = NewClient(cliKey, ClientConfig{Supernode: addrs[i], SupernodeID: keys[i].ID(), Shared: mux,
			Services: map[string]Local{"echo": {Addr: echoServer(t)}}, BackoffMin: time.Minute, BackoffMax: time.Minute, Logger: testLogger(t)})
		if err := clis[i].Start(); err != nil {
			t.Fatal(err)
		}
		defer clis[i].Close()
	}
	defer srvs[0].Close()
	waitFor(t, "both tunnels", 5*time.Second, func() bool { return srvs[0].Has(cliKey.ID()) && srvs[1].Has(cliKey.ID()) })
	srvs[1].Close()
	waitFor(t, "second tunnel down", 10*time.Second, func() bool { return !clis[1].Up() })
	again := NewServer(keys[1], ServerConfig{})
	if _, err := again.Listen(addrs[1]); err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	again.Wake([]netip.AddrPort{mux.LocalAddr()})
	waitFor(t, "second tunnel back after its wake", 10*time.Second, func() bool { return again.Has(cliKey.ID()) })
	if !clis[0].Up() {
		t.Fatal("first tunnel went down")
	}
}
