package udpmux_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/transport/quicid"
	"github.com/elacity/pc2/transport/udpmux"
)

func listen(t testing.TB) *udpmux.Mux {
	t.Helper()
	m, err := udpmux.Listen("udp4", "127.0.0.1:0", udpmux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// echo answers every packet starting with 0x01 with the same bytes, first
// byte 0x02.
func echo(m *udpmux.Mux) func() {
	return m.Handle(udpmux.FirstByte(0x01, 0x01), func(pkt []byte, from netip.AddrPort) bool {
		out := append([]byte{0x02}, pkt[1:]...)
		_ = m.WriteTo(out, from)
		return true
	})
}

// TestQUICAndRawOnOneSocket runs a QUIC connection (a stream echoing 1 MiB)
// between two muxes while they exchange raw non-QUIC packets on the very
// same sockets, and checks that both kinds arrive complete and unmixed.
func TestQUICAndRawOnOneSocket(t *testing.T) {
	a, b := listen(t), listen(t)
	echo(a)
	got := make(chan []byte, 64)
	b.Handle(udpmux.FirstByte(0x02, 0x02), func(pkt []byte, from netip.AddrPort) bool {
		if from != a.LocalAddr() {
			t.Errorf("echo from %s, want %s", from, a.LocalAddr())
		}
		got <- bytes.Clone(pkt)
		return true
	})

	kpA, _ := identity.Generate(rand.Reader)
	kpB, _ := identity.Generate(rand.Reader)
	srvTLS, err := quicid.ServerConfig(kpA, "test", func(identity.ID) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	cliTLS, err := quicid.ClientConfig(kpB, "test", kpA.ID())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := a.Transport().Listen(srvTLS, quicid.Config(10, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
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

	var wg sync.WaitGroup
	wg.Add(1)
	var quicErr error
	go func() {
		defer wg.Done()
		quicErr = func() error {
			c, err := b.Dial(ctx, a.LocalAddr(), cliTLS, quicid.Config(10, 10*time.Second))
			if err != nil {
				return err
			}
			defer c.CloseWithError(0, "")
			s, err := c.OpenStreamSync(ctx)
			if err != nil {
				return err
			}
			want := make([]byte, 1<<20)
			rand.Read(want)
			go func() { s.Write(want); s.Close() }()
			back, err := io.ReadAll(s)
			if err != nil {
				return err
			}
			if !bytes.Equal(back, want) {
				return fmt.Errorf("stream echo: %d bytes back, differ", len(back))
			}
			return nil
		}()
	}()

	// Raw packets interleaved with the transfer: each must come back once.
	const n = 50
	seen := map[string]bool{}
	for i := range n {
		msg := fmt.Appendf([]byte{0x01}, "raw %d", i)
		if err := b.WriteTo(msg, a.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		// Wait for the answer (or resend: UDP on a busy loopback may drop).
		deadline := time.After(2 * time.Second)
		for !seen[string(msg[1:])] {
			select {
			case p := <-got:
				seen[string(p[1:])] = true
			case <-time.After(200 * time.Millisecond):
				_ = b.WriteTo(msg, a.LocalAddr())
			case <-deadline:
				t.Fatalf("no echo of %q", msg)
			}
		}
	}
	wg.Wait()
	if quicErr != nil {
		t.Fatalf("quic: %v", quicErr)
	}
	if st := a.Stats(); st.Delivered < n {
		t.Errorf("a delivered %d raw packets, want ≥ %d", st.Delivered, n)
	}
}

func TestWriteToRefusesQUICLikePackets(t *testing.T) {
	m := listen(t)
	for _, p := range [][]byte{nil, {0x40}, {0xc3, 1, 2}} {
		if err := m.WriteTo(p, m.LocalAddr()); !errors.Is(err, udpmux.ErrQUICLike) {
			t.Errorf("WriteTo(%x) = %v, want ErrQUICLike", p, err)
		}
	}
	m.Close()
	if err := m.WriteTo([]byte{1}, m.LocalAddr()); !errors.Is(err, udpmux.ErrClosed) {
		t.Errorf("WriteTo after Close = %v, want ErrClosed", err)
	}
}

// TestRoutingAndRemove checks first-match order, unmatched and oversize
// counting, and that a removed handler gets nothing more.
func TestRoutingAndRemove(t *testing.T) {
	m := listen(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, second := make(chan byte, 10), make(chan byte, 10)
	removeFirst := m.Handle(udpmux.FirstByte(0x05, 0x06), func(p []byte, _ netip.AddrPort) bool { first <- p[0]; return true })
	// A handler that declines passes the packet on.
	declined := 0
	m.Handle(udpmux.FirstByte(0x00, 0x3f), func(p []byte, _ netip.AddrPort) bool { declined++; return false })
	m.Handle(udpmux.FirstByte(0x00, 0x3f), func(p []byte, _ netip.AddrPort) bool { second <- p[0]; return true })
	send := func(p []byte) {
		if _, err := c.WriteToUDPAddrPort(p, m.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(ch chan byte, want byte) {
		t.Helper()
		select {
		case b := <-ch:
			if b != want {
				t.Fatalf("got %#x, want %#x", b, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %#x not delivered", want)
		}
	}
	send([]byte{0x05})
	wait(first, 0x05)
	send([]byte{0x07})
	wait(second, 0x07)
	removeFirst()
	removeFirst() // idempotent
	send([]byte{0x06})
	wait(second, 0x06)
	m.Handle(udpmux.FirstByte(0x09, 0x09), func(p []byte, _ netip.AddrPort) bool { first <- p[0]; return true })
	send([]byte{0x09}) // shadowed by the catch-all registered earlier
	wait(second, 0x09)
	big := make([]byte, 2000)
	big[0] = 0x0a
	send(big)
	select {
	case <-second:
	case <-time.After(5 * time.Second):
		t.Fatal("long packet not delivered")
	}
	if st := m.Stats(); st.Delivered != 5 || st.Unmatched != 0 || declined != 4 {
		t.Errorf("stats %+v, declined %d; want 5 delivered, 4 declined", st, declined)
	}

	// A mux with no handler counts what it drops.
	idle := listen(t)
	if _, err := c.WriteToUDPAddrPort([]byte{0x01}, idle.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for idle.Stats().Unmatched != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("unmatched packet not counted: %+v", idle.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(first) != 0 {
		t.Errorf("removed handler got a packet")
	}
}

// BenchmarkRawRoundTrip measures a non-QUIC request/answer through two
// muxes on loopback (the path of every STUN and punch packet).
func BenchmarkRawRoundTrip(b *testing.B) {
	a, c := listen(b), listen(b)
	echo(a)
	got := make(chan struct{}, 1)
	c.Handle(udpmux.FirstByte(0x02, 0x02), func([]byte, netip.AddrPort) bool { got <- struct{}{}; return true })
	msg := make([]byte, 64)
	msg[0] = 0x01
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := c.WriteTo(msg, a.LocalAddr()); err != nil {
			b.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(time.Second):
			b.Fatal("lost")
		}
	}
}

// BenchmarkPlainUDPRoundTrip is the same exchange on two plain UDP sockets:
// the baseline for BenchmarkRawRoundTrip's cost of sharing the socket with
// quic-go.
func BenchmarkPlainUDPRoundTrip(b *testing.B) {
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	a, err := net.ListenUDP("udp4", lo)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	c, err := net.ListenUDP("udp4", lo)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := a.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			buf[0] = 0x02
			a.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	msg := make([]byte, 64)
	msg[0] = 0x01
	buf := make([]byte, 1500)
	dst := a.LocalAddr().(*net.UDPAddr).AddrPort()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			b.Fatal(err)
		}
	}
}
