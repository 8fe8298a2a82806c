package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/quicid"
)

// relayPeer is a node's side of a relay in a test: one UDP socket shared by
// its QUIC transport (control connection) and relayed packets.
type relayPeer struct {
	kp  *identity.KeyPair
	tr  *quic.Transport
	udp *net.UDPConn
	cli *circuit.Client
}

func (p *relayPeer) WriteTo(b []byte, addr netip.AddrPort) error {
	_, err := p.udp.WriteToUDPAddrPort(b, addr)
	return err
}

func newRelayPeer(t *testing.T, info host.Info) *relayPeer {
	t.Helper()
	relayAddr, err := netip.ParseAddrPort(info.Extra["relay.listen"])
	if err != nil {
		t.Fatalf("relay address %q: %v", info.Extra["relay.listen"], err)
	}
	kp, _ := identity.Generate(rand.Reader)
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &relayPeer{kp: kp, udp: udp, tr: &quic.Transport{Conn: udp}}
	var cli atomic.Pointer[circuit.Client]
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := p.tr.ReadNonQUICPacket(context.Background(), buf)
			if err != nil {
				return
			}
			if c := cli.Load(); c != nil {
				c.Handle(buf[:n], from.(*net.UDPAddr).AddrPort())
			}
		}
	}()
	t.Cleanup(func() {
		if c := cli.Load(); c != nil {
			c.Close()
		}
		p.tr.Close()
		udp.Close()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := circuit.Dial(ctx, p.tr, p, kp, relayAddr, info.ID, circuit.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cli.Store(c)
	p.cli = c
	return p
}

// relayEcho connects a to b (reserved) through their relay with an
// end-to-end QUIC connection, checks both ids and echoes n bytes.
func relayEcho(t *testing.T, a, b *relayPeer, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const alpn = "pc2-e2e-test/1"
	trB := &quic.Transport{Conn: b.cli.PacketConn()}
	defer trB.Close()
	srvTLS, _ := quicid.ServerConfig(b.kp, alpn, func(id identity.ID) error {
		if id != a.kp.ID() {
			t.Errorf("b sees peer %v, want %v", id, a.kp.ID())
		}
		return nil
	})
	ln, err := trB.Listen(srvTLS, quicid.Config(10, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		_, _ = io.Copy(s, s)
		s.Close()
	}()
	addr, err := a.cli.Connect(ctx, b.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	trA := &quic.Transport{Conn: a.cli.PacketConn()}
	defer trA.Close()
	cliTLS, _ := quicid.ClientConfig(a.kp, alpn, b.kp.ID())
	conn, err := trA.Dial(ctx, addr, cliTLS, quicid.Config(10, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, n)
	_, _ = rand.Read(msg)
	go func() {
		_, _ = s.Write(msg)
		s.Close()
	}()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the relay: %d of %d bytes, %v", len(got), n, err)
	}
}

// TestRelayEndToEnd: `pc2 supernode` runs the relay by default; two peers
// reserve and connect end to end through it. `pc2 node` runs it only when
// its relay section enables it.
func TestRelayEndToEnd(t *testing.T) {
	super := startPC2(t, "supernode", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "super.yaml", "metrics:\n  listen: \"off\"\nrelay:\n  admitAll: true\n"))
	a, b := newRelayPeer(t, super), newRelayPeer(t, super)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	relayEcho(t, a, b, 1<<20)

	plain := startPC2(t, "node", "--dev", "--data", t.TempDir(), "--metrics", "off")
	if v, ok := plain.Extra["relay.listen"]; ok {
		t.Fatalf("pc2 node runs a relay (%s) without relay.enabled", v)
	}
	relayNode := startPC2(t, "node", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "node.yaml", "metrics:\n  listen: \"off\"\nrelay:\n  enabled: true\n  admitAll: true\n"))
	c, d := newRelayPeer(t, relayNode), newRelayPeer(t, relayNode)
	if _, err := d.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	relayEcho(t, c, d, 256<<10)
}
