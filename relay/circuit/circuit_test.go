package circuit_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/quicid"
)

// TestRelayedQUIC runs a real end-to-end QUIC connection between two peers
// through the relay, checks both peer ids, exchanges a stream, and inspects
// every byte the relay received and forwarded: the plaintext marker sent
// over the stream never appears there, while a marker sent in clear in a
// relayed datagram does (so the inspection would see a leak).
func TestRelayedQUIC(t *testing.T) {
	r := startRelay(t, circuit.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := newPeer(t, r, circuit.ClientConfig{})
	b := newPeer(t, r, circuit.ClientConfig{})
	res, err := b.cli.Reserve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.TTL <= 0 {
		t.Fatalf("reservation TTL %v", res.TTL)
	}
	ln := listenE2E(t, b, a.kp.ID())
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			accepted <- err
			return
		}
		id, err := quicid.PeerIDFromState(c.ConnectionState().TLS)
		if err == nil && id != a.kp.ID() {
			err = errors.New("listener sees the wrong peer id")
		}
		if err != nil {
			accepted <- err
			return
		}
		accepted <- nil
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		_, _ = io.Copy(s, s)
		s.Close()
	}()

	conn, err := dialE2E(ctx, t, a, b.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	if id, err := quicid.PeerIDFromState(conn.ConnectionState().TLS); err != nil || id != b.kp.ID() {
		t.Fatalf("dialer sees peer %v (%v), want %v", id, err, b.kp.ID())
	}
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if info, ok := a.cli.Session(conn.RemoteAddr()); !ok || info.Peer != b.kp.ID() {
		t.Fatalf("session info %+v %v", info, ok)
	}

	marker := []byte("PLAINTEXT-MARKER-7f3a9c-relay-must-never-see-this")
	msg := bytes.Repeat(marker, 2000) // ~100 KB, many packets
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(msg); err != nil {
		t.Fatal(err)
	}
	s.Close()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %d bytes, want %d", len(got), len(msg))
	}
	conn.CloseWithError(0, "done")

	for name, tp := range map[string]*tap{"forwarded": r.tap, "received": r.recv} {
		found, packets, total := tp.contains(marker)
		if found {
			t.Fatalf("plaintext marker visible in what the relay %s", name)
		}
		if total < len(msg) {
			t.Fatalf("relay %s only %d bytes in %d packets for a %d-byte exchange: inspection saw too little", name, total, packets, len(msg))
		}
		t.Logf("relay %s %d packets, %d bytes; marker absent", name, packets, total)
	}
	if r.srv.Stats.Forwarded.Load() == 0 {
		t.Fatal("relay counted no forwarded packets")
	}

	// The control: a marker in clear inside a relayed datagram is seen.
	clear := []byte("CLEARTEXT-CONTROL-MARKER")
	addr, err := a.cli.Connect(ctx, b.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.cli.PacketConn().WriteTo(clear, addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the clear marker at the tap", func() bool {
		found, _, _ := r.tap.contains(clear)
		return found
	})
}

// TestReservationRefresh: a reservation with a short TTL stays usable
// because the client refreshes it; after the client closes, it is gone.
func TestReservationRefresh(t *testing.T) {
	r := startRelay(t, circuit.Config{ReservationTTL: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := newPeer(t, r, circuit.ClientConfig{})
	b := newPeer(t, r, circuit.ClientConfig{})
	if _, err := b.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	// Wait well past three TTLs (by the relay's own clock of sweeps).
	start := time.Now()
	waitFor(t, 5*time.Second, "three TTLs", func() bool { return time.Since(start) > time.Second })
	if _, err := a.cli.Connect(ctx, b.kp.ID()); err != nil {
		t.Fatalf("connect after 3 TTLs with refresh: %v", err)
	}
	b.cli.Close()
	waitFor(t, 5*time.Second, "the reservation to go", func() bool {
		_, res, _ := r.srv.Counts()
		return res == 0
	})
	_, err := a.cli.Connect(ctx, b.kp.ID())
	var re *circuit.RemoteError
	if !errors.As(err, &re) || re.Code != circuit.CodeNoPeer {
		t.Fatalf("connect to a gone peer: %v, want code %d", err, circuit.CodeNoPeer)
	}
}

// TestConnectUnreserved: a peer without a reservation cannot be reached.
func TestConnectUnreserved(t *testing.T) {
	r := startRelay(t, circuit.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := newPeer(t, r, circuit.ClientConfig{})
	b := newPeer(t, r, circuit.ClientConfig{})
	_, err := a.cli.Connect(ctx, b.kp.ID())
	var re *circuit.RemoteError
	if !errors.As(err, &re) || re.Code != circuit.CodeNoPeer {
		t.Fatalf("got %v, want code %d", err, circuit.CodeNoPeer)
	}
	// A target that refuses.
	c := newPeer(t, r, circuit.ClientConfig{Accept: func(identity.ID) bool { return false }})
	if _, err := c.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = a.cli.Connect(ctx, c.kp.ID())
	if !errors.As(err, &re) || re.Code != circuit.CodeRefused {
		t.Fatalf("got %v, want code %d", err, circuit.CodeRefused)
	}
	if _, _, n := r.srv.Counts(); n != 0 {
		t.Fatalf("%d sessions left after refusals", n)
	}
}

// TestRelease: a peer releases its session; the relay forgets it and the
// other peer is told.
func TestRelease(t *testing.T) {
	r := startRelay(t, circuit.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := newPeer(t, r, circuit.ClientConfig{})
	b := newPeer(t, r, circuit.ClientConfig{})
	if _, err := b.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	addr, err := a.cli.Connect(ctx, b.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, n := r.srv.Counts(); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
	bAddr := &circuit.Addr{Relay: addr.Relay, Session: addr.Session}
	info, ok := b.cli.Session(bAddr)
	if !ok {
		t.Fatal("target has no session info")
	}
	if err := a.cli.Release(ctx, addr); err != nil {
		t.Fatal(err)
	}
	select {
	case <-info.Done:
	case <-ctx.Done():
		t.Fatal("target not told of the release")
	}
	if info, _ := b.cli.Session(bAddr); info.Reason != circuit.ReasonReleased {
		t.Fatalf("target sees %v", info.Reason)
	}
	if _, _, n := r.srv.Counts(); n != 0 {
		t.Fatalf("%d sessions after release", n)
	}
	if _, err := a.cli.PacketConn().WriteTo([]byte("x"), addr); !errors.Is(err, circuit.ErrSessionClosed) {
		t.Fatalf("write on a released session: %v", err)
	}
	var re *circuit.RemoteError
	if err := b.cli.Release(ctx, bAddr); !errors.As(err, &re) {
		t.Fatalf("second release: %v, want a refusal", err)
	}
}

// TestDualStackListen: a relay on a wildcard (dual-stack) socket sees IPv4
// peers as v4-mapped addresses; binding and forwarding still match them.
func TestDualStackListen(t *testing.T) {
	kp := newKey(t)
	srv := circuit.NewServer(kp, circuit.Config{})
	ap, err := srv.Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	r := &testRelay{srv: srv, kp: kp, addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port())}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := newPeer(t, r, circuit.ClientConfig{}), newPeer(t, r, circuit.ClientConfig{})
	if _, err := b.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	addr, err := a.cli.Connect(ctx, b.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.cli.PacketConn().WriteTo([]byte("v4 via v6"), addr); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = b.cli.PacketConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := b.cli.PacketConn().ReadFrom(buf)
	if err != nil || string(buf[:n]) != "v4 via v6" {
		t.Fatalf("read %q, %v (spoofed %d, unknown %d)", buf[:n], err, srv.Stats.Spoofed.Load(), srv.Stats.Unknown.Load())
	}
}

// TestClientForgetsOldSessions: a client that opens and releases many
// sessions keeps a bounded record of them.
func TestClientForgetsOldSessions(t *testing.T) {
	r := startRelay(t, circuit.Config{ConnectsPerSecond: 1e6, ConnectBurst: 1e6})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, b := newPeer(t, r, circuit.ClientConfig{}), newPeer(t, r, circuit.ClientConfig{})
	if _, err := b.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	var addrs []*circuit.Addr
	for range 100 {
		addr, err := a.cli.Connect(ctx, b.kp.ID())
		if err != nil {
			t.Fatal(err)
		}
		if err := a.cli.Release(ctx, addr); err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, addr)
	}
	if _, ok := a.cli.Session(addrs[0]); ok {
		t.Fatal("the oldest ended session is still remembered")
	}
	if info, ok := a.cli.Session(addrs[99]); !ok || info.Reason != circuit.ReasonReleased {
		t.Fatalf("the last session: %+v, %v", info, ok)
	}
}
