package circuit_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/quicid"
)

// sharedSocket is what transport/udpmux gives a node: one UDP socket whose
// QUIC packets go to a quic.Transport and whose other packets (first byte
// below 0x40) go to a handler.
type sharedSocket struct {
	udp     *net.UDPConn
	tr      *quic.Transport
	handler atomic.Pointer[func([]byte, netip.AddrPort)]
	done    chan struct{}
}

func newSharedSocket(t testing.TB) *sharedSocket { return newSharedSocketMode(t, false) }

// newSharedSocketMode builds the socket either as udpmux does today
// (quic-go's ReadNonQUICPacket, which queues 32 packets and drops the
// rest) or, with own, with the relay's demux (the read loop hands non-QUIC
// packets over inline and queues QUIC ones for quic-go).
func newSharedSocketMode(t testing.TB, own bool) *sharedSocket {
	t.Helper()
	return newSharedSocketAt(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, own)
}

func newSharedSocketAt(t testing.TB, at *net.UDPAddr, own bool) *sharedSocket {
	t.Helper()
	udp, err := net.ListenUDP("udp4", at)
	if err != nil {
		t.Fatal(err)
	}
	_ = udp.SetReadBuffer(4 << 20)
	_ = udp.SetWriteBuffer(4 << 20)
	s := &sharedSocket{udp: udp, done: make(chan struct{})}
	dispatch := func(pkt []byte, from netip.AddrPort) {
		if h := s.handler.Load(); h != nil {
			(*h)(pkt, from)
		}
	}
	if own {
		pc, run, done := circuit.NewSocketDemux(udp, dispatch)
		s.tr = &quic.Transport{Conn: pc}
		go func() {
			run()
			<-done
			close(s.done)
		}()
	} else {
		s.tr = &quic.Transport{Conn: udp}
		go func() {
			defer close(s.done)
			buf := make([]byte, 2048)
			for {
				n, from, err := s.tr.ReadNonQUICPacket(context.Background(), buf)
				if err != nil {
					return
				}
				dispatch(buf[:n], from.(*net.UDPAddr).AddrPort())
			}
		}()
	}
	t.Cleanup(func() {
		s.tr.Close()
		udp.Close()
		<-s.done
	})
	return s
}

func (s *sharedSocket) addr() netip.AddrPort { return s.udp.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *sharedSocket) setHandler(h func([]byte, netip.AddrPort)) { s.handler.Store(&h) }

// WriteTo implements circuit.PacketWriter: raw packets leave from the
// socket that carries QUIC, as udpmux's WriteTo does.
func (s *sharedSocket) WriteTo(b []byte, addr netip.AddrPort) error {
	_, err := s.udp.WriteToUDPAddrPort(b, addr)
	return err
}

// tap records every datagram the relay sends.
type tap struct {
	w     circuit.PacketWriter
	mu    sync.Mutex
	sent  [][]byte
	bytes int
}

func (t *tap) WriteTo(b []byte, addr netip.AddrPort) error {
	t.mu.Lock()
	t.sent = append(t.sent, bytes.Clone(b))
	t.bytes += len(b)
	t.mu.Unlock()
	return t.w.WriteTo(b, addr)
}

func (t *tap) contains(marker []byte) (found bool, packets, total int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.sent {
		if bytes.Contains(p, marker) {
			found = true
		}
	}
	return found, len(t.sent), t.bytes
}

type testRelay struct {
	srv  *circuit.Server
	kp   *identity.KeyPair
	addr netip.AddrPort
	sock *sharedSocket
	tap  *tap
	recv *tap // every datagram the relay received that was not QUIC
}

// startRelay runs a relay on a shared socket, as a node with relaying on
// would, with taps on what it receives and forwards.
func startRelay(t testing.TB, cfg circuit.Config) *testRelay {
	t.Helper()
	kp := newKey(t)
	sock := newSharedSocketMode(t, true) // the relay's own socket loop, as Listen runs it
	r := &testRelay{kp: kp, sock: sock, addr: sock.addr(), tap: &tap{w: sock}, recv: &tap{}}
	r.srv = circuit.NewServer(kp, cfg)
	if err := r.srv.Start(sock.tr, r.tap); err != nil {
		t.Fatal(err)
	}
	sock.setHandler(func(pkt []byte, from netip.AddrPort) {
		r.recv.mu.Lock()
		r.recv.sent = append(r.recv.sent, bytes.Clone(pkt))
		r.recv.bytes += len(pkt)
		r.recv.mu.Unlock()
		r.srv.Handle(pkt, from)
	})
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func newKey(t testing.TB) *identity.KeyPair {
	t.Helper()
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// peer is a node with a shared socket and a control connection to a relay.
type peer struct {
	kp   *identity.KeyPair
	sock *sharedSocket
	cli  *circuit.Client
}

func newPeer(t testing.TB, r *testRelay, cfg circuit.ClientConfig) *peer {
	t.Helper()
	p, err := dialPeer(t, r, newKey(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func dialPeer(t testing.TB, r *testRelay, kp *identity.KeyPair, cfg circuit.ClientConfig) (*peer, error) {
	t.Helper()
	return dialPeerOn(t, r, kp, cfg, newSharedSocket(t))
}

func dialPeerOn(t testing.TB, r *testRelay, kp *identity.KeyPair, cfg circuit.ClientConfig, sock *sharedSocket) (*peer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := circuit.Dial(ctx, sock.tr, sock, kp, r.addr, r.kp.ID(), cfg)
	if err != nil {
		return nil, err
	}
	sock.setHandler(cli.Handle)
	t.Cleanup(func() { cli.Close() })
	return &peer{kp: kp, sock: sock, cli: cli}, nil
}

const testALPN = "pc2-test/1"

func e2eConfig() *quic.Config {
	c := quicid.Config(100, 10*time.Second)
	c.KeepAlivePeriod = 2 * time.Second
	return c
}

// listenE2E makes p accept end-to-end QUIC connections through its relay
// client from the peer ids in from (none: from anyone).
func listenE2E(t testing.TB, p *peer, from ...identity.ID) *quic.Listener {
	t.Helper()
	tr := &quic.Transport{Conn: p.cli.PacketConn()}
	t.Cleanup(func() { tr.Close() })
	tlsConf, err := quicid.ServerConfig(p.kp, testALPN, func(id identity.ID) error {
		if len(from) == 0 {
			return nil
		}
		for _, f := range from {
			if f == id {
				return nil
			}
		}
		return errors.New("unexpected peer")
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen(tlsConf, e2eConfig())
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// dialE2E connects p to target through the relay, end to end.
func dialE2E(ctx context.Context, t testing.TB, p *peer, target identity.ID) (*quic.Conn, error) {
	t.Helper()
	addr, err := p.cli.Connect(ctx, target)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: p.cli.PacketConn()}
	t.Cleanup(func() { tr.Close() })
	tlsConf, err := quicid.ClientConfig(p.kp, testALPN, target)
	if err != nil {
		return nil, err
	}
	return tr.Dial(ctx, addr, tlsConf, e2eConfig())
}

// serveEcho accepts connections on ln and echoes every stream.
func serveEcho(ln *quic.Listener) {
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
					_, _ = io.Copy(s, s)
					s.Close()
				}()
			}
		}()
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
