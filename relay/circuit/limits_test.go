package circuit_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
)

// echoOnce sends n random bytes on a new stream of conn and checks the echo.
func echoOnce(ctx context.Context, conn *quic.Conn, n int) error {
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	msg := make([]byte, n)
	_, _ = rand.Read(msg)
	go func() {
		_, _ = s.Write(msg)
		s.Close()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: %d bytes back, want %d", len(got), n)
	}
	return nil
}

// pair sets up a reserved target b (echoing) and returns a fresh peer's
// end-to-end connection to it.
func connectPair(ctx context.Context, t *testing.T, r *testRelay, b *peer) (*peer, *quic.Conn) {
	t.Helper()
	a := newPeer(t, r, circuit.ClientConfig{})
	conn, err := dialE2E(ctx, t, a, b.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	return a, conn
}

func reservedEchoTarget(ctx context.Context, t *testing.T, r *testRelay) *peer {
	t.Helper()
	b := newPeer(t, r, circuit.ClientConfig{})
	if _, err := b.cli.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	go serveEcho(listenE2E(t, b))
	return b
}

func waitDone(t *testing.T, p *peer, conn *quic.Conn, want circuit.Reason) {
	t.Helper()
	info, ok := p.cli.Session(conn.RemoteAddr())
	if !ok {
		t.Fatal("no session info")
	}
	select {
	case <-info.Done:
	case <-time.After(10 * time.Second):
		t.Fatalf("session not cut (want %v)", want)
	}
	info, _ = p.cli.Session(conn.RemoteAddr())
	if info.Reason != want {
		t.Fatalf("session ended for %v, want %v", info.Reason, want)
	}
}

// TestByteQuotaCut: a session that sends more than its byte quota is cut
// (both ends told why) while another session to the same target goes on.
func TestByteQuotaCut(t *testing.T) {
	const quota = 256 << 10
	r := startRelay(t, circuit.Config{Session: circuit.Limits{MaxBytes: quota}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := reservedEchoTarget(ctx, t, r)
	greedy, gconn := connectPair(ctx, t, r, b)
	polite, pconn := connectPair(ctx, t, r, b)
	if err := echoOnce(ctx, pconn, 10<<10); err != nil {
		t.Fatal(err)
	}

	// The greedy peer pushes 1 MiB through a 256 KiB quota.
	go func() { _ = echoOnce(ctx, gconn, 1<<20) }()
	waitDone(t, greedy, gconn, circuit.ReasonBytes)
	if r.srv.Stats.Cut.Load() != 1 {
		t.Fatalf("cut %d sessions, want 1", r.srv.Stats.Cut.Load())
	}
	if fwd := r.srv.Stats.ForwardedBytes.Load(); fwd > quota+64<<10 { // the polite session's bytes
		t.Fatalf("relay forwarded %d bytes, quota %d", fwd, quota)
	}
	// The other session, same target, is unaffected.
	if err := echoOnce(ctx, pconn, 10<<10); err != nil {
		t.Fatalf("other session after the cut: %v", err)
	}
	if info, _ := polite.cli.Session(pconn.RemoteAddr()); info.Reason != circuit.ReasonNone {
		t.Fatalf("other session ended: %v", info.Reason)
	}
	// The greedy session's packets are no longer forwarded.
	before := r.srv.Stats.Unknown.Load()
	addr := gconn.RemoteAddr().(*circuit.Addr)
	if err := greedy.sock.WriteTo(circuit.AppendData(nil, addr.Session, []byte("more")), r.addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the cut session's packet to be dropped as unknown", func() bool {
		return r.srv.Stats.Unknown.Load() > before
	})
}

// TestDurationCut: a session past its duration is cut, with no packet
// needed to notice, while a younger session goes on.
func TestDurationCut(t *testing.T) {
	const d = 1500 * time.Millisecond
	r := startRelay(t, circuit.Config{Session: circuit.Limits{MaxDuration: d}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := reservedEchoTarget(ctx, t, r)
	old, oconn := connectPair(ctx, t, r, b)
	start := time.Now()
	waitFor(t, 5*time.Second, "half the duration", func() bool { return time.Since(start) > d/2 })
	young, yconn := connectPair(ctx, t, r, b)
	waitDone(t, old, oconn, circuit.ReasonDuration)
	if el := time.Since(start); el < d {
		t.Fatalf("cut after %v, before the %v limit", el, d)
	}
	if err := echoOnce(ctx, yconn, 10<<10); err != nil {
		t.Fatalf("younger session after the cut: %v", err)
	}
	if info, _ := young.cli.Session(yconn.RemoteAddr()); info.Reason != circuit.ReasonNone {
		t.Fatalf("younger session ended: %v", info.Reason)
	}
}

// TestBandwidthLimit: a session flooding beyond its rate gets no more than
// rate × time + burst through, the excess is dropped at the relay, and a
// second session to the same target still echoes meanwhile.
func TestBandwidthLimit(t *testing.T) {
	const rate = 200 << 10 // bytes/s; burst = max(rate, 64 KiB)
	r := startRelay(t, circuit.Config{Session: circuit.Limits{BytesPerSecond: rate}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := reservedEchoTarget(ctx, t, r)
	created := time.Now() // before the session exists: its bucket starts later
	_, fconn := connectPair(ctx, t, r, b)
	_, pconn := connectPair(ctx, t, r, b)
	sid := fconn.RemoteAddr().(*circuit.Addr).Session

	// Flood: one-way upload to the echo server for 1.5 s; count what
	// comes back (the echo is limited by the same session's bucket).
	s, err := fconn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stop := make(chan struct{})
	go func() {
		buf := make([]byte, 32<<10)
		for {
			select {
			case <-stop:
				s.Close()
				return
			default:
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	}()
	got := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, s)
		got <- n
	}()
	// Meanwhile the other session works.
	for range 3 {
		if err := echoOnce(ctx, pconn, 8<<10); err != nil {
			t.Fatalf("other session during the flood: %v", err)
		}
	}
	waitFor(t, 10*time.Second, "1.5 s of flood", func() bool { return time.Since(start) > 1500*time.Millisecond })
	close(stop)
	fconn.CloseWithError(0, "done")
	n := <-got
	// Both directions share the bucket: forwarded ≤ rate·t + burst (rate).
	fwd, ok := r.srv.SessionBytes(sid)
	if !ok {
		t.Fatal("flood session gone")
	}
	elapsed := time.Since(created)
	limit := uint64(rate*elapsed.Seconds()) + rate
	t.Logf("flood %v: echoed %d bytes, relay forwarded %d in the session (limit %d), dropped %d packets", time.Since(start), n, fwd, limit, r.srv.Stats.RateDropped.Load())
	if fwd < rate {
		t.Fatalf("session forwarded only %d bytes: the flood did not reach the rate", fwd)
	}
	if fwd > limit {
		t.Fatalf("relay forwarded %d bytes in %v at %d B/s", fwd, elapsed, rate)
	}
	if r.srv.Stats.RateDropped.Load() == 0 {
		t.Fatal("no packet dropped by the rate limit: the flood did not exceed it")
	}
}

// TestDeniedAndAdmissionRate: a denied id gets no reservation; more new
// reservations per second than allowed are refused with CodeRateLimited.
func TestDeniedAndAdmissionRate(t *testing.T) {
	denied := newKey(t)
	r := startRelay(t, circuit.Config{
		Admit: func(id identity.ID) error {
			if id == denied.ID() {
				return errors.New("on the deny list")
			}
			return nil
		},
		ReservationsPerSecond: 0.001, ReservationBurst: 2,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := dialPeer(t, r, denied, circuit.ClientConfig{})
	if err == nil {
		_, err = p.cli.Reserve(ctx)
	}
	if err == nil {
		t.Fatal("denied id got a reservation")
	}
	t.Logf("denied: %v", err)
	for i := range 2 {
		if _, err := newPeer(t, r, circuit.ClientConfig{}).cli.Reserve(ctx); err != nil {
			t.Fatalf("reservation %d within the burst: %v", i, err)
		}
	}
	third := newPeer(t, r, circuit.ClientConfig{})
	_, err = third.cli.Reserve(ctx)
	var re *circuit.RemoteError
	if !errors.As(err, &re) || re.Code != circuit.CodeRateLimited {
		t.Fatalf("third reservation: %v, want code %d", err, circuit.CodeRateLimited)
	}
	if _, res, _ := r.srv.Counts(); res != 2 {
		t.Fatalf("%d reservations held, want 2", res)
	}
}

// TestSpoofedSource: a packet with a valid session id from any address
// other than the session's two is not forwarded; packets to a client from
// anyone but its relay are ignored.
func TestSpoofedSource(t *testing.T) {
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
	read := func() string {
		t.Helper()
		buf := make([]byte, 2048)
		_ = b.cli.PacketConn().SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := b.cli.PacketConn().ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if from.(*circuit.Addr).Session != addr.Session {
			t.Fatalf("packet from session %v, want %v", from, addr.Session)
		}
		return string(buf[:n])
	}
	if _, err := a.cli.PacketConn().WriteTo([]byte("one"), addr); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "one" {
		t.Fatalf("got %q", got)
	}

	// A third socket sends into the session.
	mallory := newSharedSocket(t)
	if err := mallory.WriteTo(circuit.AppendData(nil, addr.Session, []byte("spoof")), r.addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the spoofed packet to be dropped", func() bool { return r.srv.Stats.Spoofed.Load() == 1 })
	// Straight to the client, pretending nothing: not from the relay.
	b.cli.Handle(circuit.AppendData(nil, addr.Session, []byte("direct")), mallory.addr())
	if _, err := a.cli.PacketConn().WriteTo([]byte("two"), addr); err != nil {
		t.Fatal(err)
	}
	// Had the spoof been forwarded, it would have arrived first.
	if got := read(); got != "two" {
		t.Fatalf("got %q, want the next genuine packet", got)
	}
	// Unknown sessions and non-data packets are counted, not forwarded.
	var unknown circuit.SessionID
	unknown[0] = 1
	_ = mallory.WriteTo(circuit.AppendData(nil, unknown, []byte("x")), r.addr)
	_ = mallory.WriteTo([]byte{circuit.TypeData, 1, 2}, r.addr)
	waitFor(t, 5*time.Second, "unknown and malformed counts", func() bool {
		return r.srv.Stats.Unknown.Load() == 1 && r.srv.Stats.Malformed.Load() == 1
	})
	if r.srv.Stats.Forwarded.Load() != 2 {
		t.Fatalf("forwarded %d packets, want 2", r.srv.Stats.Forwarded.Load())
	}
}

// TestPeerBandwidth: one peer's rate is shared by all its sessions; its
// excess is dropped while another peer's packets to the same target all
// pass.
func TestPeerBandwidth(t *testing.T) {
	const rate = 100 << 10 // burst = max(rate, 64 KiB)
	r := startRelay(t, circuit.Config{PeerBytesPerSecond: rate})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b1, b2 := newPeer(t, r, circuit.ClientConfig{}), newPeer(t, r, circuit.ClientConfig{})
	for _, b := range []*peer{b1, b2} {
		if _, err := b.cli.Reserve(ctx); err != nil {
			t.Fatal(err)
		}
	}
	greedy, polite := newPeer(t, r, circuit.ClientConfig{}), newPeer(t, r, circuit.ClientConfig{})
	created := time.Now()
	g1, err := greedy.cli.Connect(ctx, b1.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	g2, err := greedy.cli.Connect(ctx, b2.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	p1, err := polite.cli.Connect(ctx, b1.kp.ID())
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, 1000)
	const n = 200 // 200 KB per session, 400 KB in all: far over 100 KB + 100 KB/s · t
	for i := range n {
		for _, a := range []*circuit.Addr{g1, g2} {
			if _, err := greedy.cli.PacketConn().WriteTo(pkt, a); err != nil {
				t.Fatal(err)
			}
		}
		if i%10 == 0 {
			if _, err := polite.cli.PacketConn().WriteTo(pkt[:100], p1); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 10*time.Second, "every packet to be handled", func() bool {
		st := &r.srv.Stats
		return st.Forwarded.Load()+st.RateDropped.Load() == 2*n+n/10
	})
	elapsed := time.Since(created)
	g1b, _ := r.srv.SessionBytes(g1.Session)
	g2b, _ := r.srv.SessionBytes(g2.Session)
	p1b, _ := r.srv.SessionBytes(p1.Session)
	limit := uint64(rate*elapsed.Seconds()) + rate
	t.Logf("greedy forwarded %d+%d bytes (limit %d), polite %d", g1b, g2b, limit, p1b)
	if g1b+g2b > limit {
		t.Fatalf("greedy peer got %d bytes through at %d B/s in %v", g1b+g2b, rate, elapsed)
	}
	if r.srv.Stats.RateDropped.Load() == 0 {
		t.Fatal("nothing dropped")
	}
	if want := uint64(n/10) * (100 + circuit.HeaderLen); p1b != want {
		t.Fatalf("polite peer's session forwarded %d bytes, want all %d", p1b, want)
	}
}

// TestHandshakeRateLimit: new control connections from one source IP
// beyond the per-IP rate are refused on the ClientHello.
func TestHandshakeRateLimit(t *testing.T) {
	r := startRelay(t, circuit.Config{HandshakesPerIP: 0.001}) // burst max(1, 2·rate) = 1
	if _, err := dialPeer(t, r, newKey(t), circuit.ClientConfig{}); err != nil {
		t.Fatalf("first control connection: %v", err)
	}
	if _, err := dialPeer(t, r, newKey(t), circuit.ClientConfig{}); err == nil {
		t.Fatal("second control connection from the same IP admitted")
	}
	if r.srv.Stats.Refused.Load() == 0 {
		t.Fatal("refusal not counted")
	}
}

// TestIdleSession: a session that forwards nothing for the idle timeout
// ends (both peers told) and frees its slots.
func TestIdleSession(t *testing.T) {
	r := startRelay(t, circuit.Config{IdleTimeout: 300 * time.Millisecond})
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
	start := time.Now()
	info, _ := a.cli.Session(addr)
	select {
	case <-info.Done:
	case <-ctx.Done():
		t.Fatal("idle session not ended")
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("ended after %v, before the idle timeout", el)
	}
	if info, _ := a.cli.Session(addr); info.Reason != circuit.ReasonIdle {
		t.Fatalf("ended for %v", info.Reason)
	}
	if _, _, n := r.srv.Counts(); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
}
