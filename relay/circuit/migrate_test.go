package circuit_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/quicid"
)

// nodeConn is a sketch of what path management needs from a node's socket:
// one PacketConn for the node's one quic.Transport carrying its direct
// QUIC packets (from *net.UDPAddr) and its relayed ones (from
// *circuit.Addr), plus "pinned" views for extra paths to a peer's direct
// address (quic-go's client migration adds a transport and keeps the
// remote address).
type nodeConn struct {
	udp    *net.UDPConn
	q      chan inPkt
	cli    atomic.Pointer[circuit.Client]
	mu     sync.Mutex
	pinned map[netip.AddrPort]*pinnedConn
	closed chan struct{}
	once   sync.Once
	done   chan struct{}
}

type inPkt struct {
	b    []byte
	from net.Addr
}

func newNodeConn(t *testing.T) *nodeConn {
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	n := &nodeConn{udp: udp, q: make(chan inPkt, 1024), pinned: map[netip.AddrPort]*pinnedConn{}, closed: make(chan struct{}), done: make(chan struct{})}
	go n.run()
	return n
}

func push(q chan inPkt, b []byte, from net.Addr) {
	select {
	case q <- inPkt{bytes.Clone(b), from}:
	default:
	}
}

func (n *nodeConn) run() {
	defer close(n.done)
	buf := make([]byte, 2048)
	for {
		k, from, err := n.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if k == 0 {
			continue
		}
		if buf[0] < 0x40 {
			if c := n.cli.Load(); c != nil {
				c.Handle(buf[:k], from)
			}
			continue
		}
		n.mu.Lock()
		p := n.pinned[from]
		n.mu.Unlock()
		if p != nil {
			push(p.q, buf[:k], net.UDPAddrFromAddrPort(from))
			continue
		}
		push(n.q, buf[:k], net.UDPAddrFromAddrPort(from))
	}
}

// onRelayed is the relay client's OnPacket: relayed packets join the
// direct ones.
func (n *nodeConn) onRelayed(from *circuit.Addr, payload []byte) { push(n.q, payload, from) }

func (n *nodeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-n.q:
		return copy(b, p.b), p.from, nil
	case <-n.closed:
		return 0, nil, os.ErrDeadlineExceeded // quic-go: temporary, checks whether it is closed
	}
}

func (n *nodeConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	switch a := addr.(type) {
	case *circuit.Addr:
		if err := n.cli.Load().Send(a, b); err != nil {
			return 0, err
		}
		return len(b), nil
	case *net.UDPAddr:
		return n.udp.WriteToUDPAddrPort(b, a.AddrPort())
	}
	return 0, net.InvalidAddrError("unknown address type")
}

// WriteTo as a circuit.PacketWriter (the relay client's data packets).
type nodeWriter struct{ n *nodeConn }

func (w nodeWriter) WriteTo(b []byte, addr netip.AddrPort) error {
	_, err := w.n.udp.WriteToUDPAddrPort(b, addr)
	return err
}

func (n *nodeConn) Close() error {
	n.once.Do(func() { close(n.closed) })
	return nil
}
func (n *nodeConn) LocalAddr() net.Addr           { return n.udp.LocalAddr() }
func (n *nodeConn) SetDeadline(t time.Time) error { return nil }
func (n *nodeConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) { // quic-go's Transport.Close unblocking its reader
		n.Close()
	}
	return nil
}
func (n *nodeConn) SetWriteDeadline(t time.Time) error { return nil }
func (n *nodeConn) SetReadBuffer(int) error            { return nil }
func (n *nodeConn) SetWriteBuffer(int) error           { return nil }

// pin returns a PacketConn that sends everything to peer's direct address
// and receives the QUIC packets coming from it.
func (n *nodeConn) pin(peer netip.AddrPort) *pinnedConn {
	p := &pinnedConn{n: n, peer: peer, q: make(chan inPkt, 1024), closed: make(chan struct{})}
	n.mu.Lock()
	n.pinned[peer] = p
	n.mu.Unlock()
	return p
}

type pinnedConn struct {
	n      *nodeConn
	peer   netip.AddrPort
	q      chan inPkt
	closed chan struct{}
	once   sync.Once
}

func (p *pinnedConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case k := <-p.q:
		return copy(b, k.b), k.from, nil
	case <-p.closed:
		return 0, nil, os.ErrDeadlineExceeded
	}
}
func (p *pinnedConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	return p.n.udp.WriteToUDPAddrPort(b, p.peer)
}
func (p *pinnedConn) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}
func (p *pinnedConn) LocalAddr() net.Addr           { return p.n.udp.LocalAddr() }
func (p *pinnedConn) SetDeadline(t time.Time) error { return nil }
func (p *pinnedConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		p.Close()
	}
	return nil
}
func (p *pinnedConn) SetWriteDeadline(t time.Time) error { return nil }
func (p *pinnedConn) SetReadBuffer(int) error            { return nil }
func (p *pinnedConn) SetWriteBuffer(int) error           { return nil }

type migNode struct {
	kp  *identity.KeyPair
	nc  *nodeConn
	tr  *quic.Transport
	cli *circuit.Client
}

func newMigNode(t *testing.T, r *testRelay) *migNode {
	t.Helper()
	kp := newKey(t)
	nc := newNodeConn(t)
	tr := &quic.Transport{Conn: nc}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := circuit.Dial(ctx, tr, nodeWriter{nc}, kp, r.addr, r.kp.ID(), circuit.ClientConfig{OnPacket: nc.onRelayed})
	if err != nil {
		t.Fatal(err)
	}
	nc.cli.Store(cli)
	t.Cleanup(func() {
		cli.Close()
		tr.Close()
		nc.Close()
		nc.udp.Close()
		<-nc.done
	})
	return &migNode{kp: kp, nc: nc, tr: tr, cli: cli}
}

// TestMigrateRelayToDirect shows that a relayed end-to-end QUIC connection
// can move to a direct path without being torn down, given a node socket
// shaped like nodeConn: a stream opened over the relay keeps going after
// the switch, and the bulk of its bytes no longer passes the relay.
func TestMigrateRelayToDirect(t *testing.T) {
	r := startRelay(t, circuit.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, b := newMigNode(t, r), newMigNode(t, r)
	if _, err := b.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	srvTLS, _ := quicid.ServerConfig(b.kp, testALPN, func(identity.ID) error { return nil })
	ln, err := b.tr.Listen(srvTLS, e2eConfig())
	if err != nil {
		t.Fatal(err)
	}
	go serveEcho(ln)
	addr, err := a.cli.Connect(ctx, b.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	cliTLS, _ := quicid.ClientConfig(a.kp, testALPN, b.kp.ID())
	conn, err := a.tr.Dial(ctx, addr, cliTLS, e2eConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")

	// A stream that lives across the switch.
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 1<<20)
	_, _ = rand.Read(msg)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(s)
		got <- b
	}()
	if _, err := s.Write(msg[:64<<10]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "relayed traffic", func() bool { return r.srv.Stats.ForwardedBytes.Load() > 64<<10 })

	// The direct path: "punched" (loopback needs none), added and switched to.
	direct := &quic.Transport{Conn: a.nc.pin(netip.MustParseAddrPort(b.nc.udp.LocalAddr().String()))}
	defer direct.Close()
	path, err := conn.AddPath(direct)
	if err != nil {
		t.Fatal(err)
	}
	if err := path.Probe(ctx); err != nil {
		t.Fatalf("probe direct path: %v", err)
	}
	if err := path.Switch(); err != nil {
		t.Fatal(err)
	}
	before := r.srv.Stats.ForwardedBytes.Load()
	if _, err := s.Write(msg[64<<10:]); err != nil {
		t.Fatalf("stream after the switch: %v", err)
	}
	s.Close()
	echo := <-got
	if !bytes.Equal(echo, msg) {
		t.Fatalf("echo across the switch: %d of %d bytes", len(echo), len(msg))
	}
	viaRelay := r.srv.Stats.ForwardedBytes.Load() - before
	t.Logf("after the switch: %d bytes via the relay for %d bytes each way", viaRelay, len(msg)-64<<10)
	if viaRelay > 256<<10 {
		t.Fatalf("%d bytes still went through the relay after switching to the direct path", viaRelay)
	}
}
