package natlab

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"
)

// loopbackServer starts a probe server on 127.0.0.1 and 127.0.0.2 (both
// loopback, no root needed) on two free ports.
func loopbackServer(t testing.TB) (primary, alt netip.AddrPort) {
	t.Helper()
	a := [2]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}
	var s *ProbeServer
	var p [2]uint16
	for try := 0; ; try++ {
		p = [2]uint16{uint16(20000 + rand.IntN(20000)), uint16(40000 + rand.IntN(20000))}
		var err error
		if s, err = ListenProbeServer(a, p); err == nil {
			break
		}
		if try > 20 {
			t.Fatalf("no free ports: %v", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return netip.AddrPortFrom(a[0], p[0]), netip.AddrPortFrom(a[1], p[1])
}

func TestProbeServerLoopback(t *testing.T) {
	primary, alt := loopbackServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := listenUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	for _, tc := range []struct {
		flags Flags
		from  netip.AddrPort
	}{
		{0, primary},
		{FlagChangeIP, netip.AddrPortFrom(alt.Addr(), primary.Port())},
		{FlagChangePort, netip.AddrPortFrom(primary.Addr(), alt.Port())},
		{FlagChangeIP | FlagChangePort, alt},
	} {
		r, err := Query(ctx, c, primary, tc.flags, 0, ProbeTiming{Wait: time.Second, Tries: 5}) // replies that must come
		if err != nil {
			t.Fatalf("flags %v: %v", tc.flags, err)
		}
		if r.From != tc.from || r.Responder != tc.from {
			t.Errorf("flags %v: reply from %v claiming %v, want %v", tc.flags, r.From, r.Responder, tc.from)
		}
		if r.Observed.Port() != local || r.Observed.Addr() != primary.Addr() {
			t.Errorf("observed %v, want 127.0.0.1:%d", r.Observed, local)
		}
	}
	// Delayed reply arrives after the delay, not before. One try (a resend
	// would restart the server's delay), waited for patiently: what is
	// proven is the lower bound, and a loaded machine may take well over
	// the lab's 150 ms per-try wait to deliver a reply.
	t0 := time.Now()
	if _, err := Query(ctx, c, primary, 0, 200*time.Millisecond, ProbeTiming{Wait: 5 * time.Second, Tries: 1}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d < 200*time.Millisecond {
		t.Errorf("delayed reply after %v", d)
	}
	// Garbage gets no answer.
	if _, err := c.WriteToUDPAddrPort([]byte("\x31\x01garbage"), primary); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 100)
	if n, _, err := c.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("answered garbage with %x", buf[:n])
	}
}

func TestClassifyLoopbackIsOpenInternet(t *testing.T) {
	primary, alt := loopbackServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := Classify(ctx, primary, alt, ProbeTiming{})
	if err != nil {
		t.Fatal(err)
	}
	want := Behaviour{Mapping: MappingNone, Filtering: EIF, Hairpin: true}
	if r.Behaviour() != want {
		t.Fatalf("loopback classified %v, want %v", r.Behaviour(), want)
	}
}

func TestDelayedRepliesBounded(t *testing.T) {
	primary, _ := loopbackServer(t)
	c, err := listenUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// More delayed requests than the per-source bound: only the bound is
	// answered.
	for i := range maxPendingDelayedPerSrc + 10 {
		pkt, _ := Message{Kind: KindRequest, ID: [8]byte{byte(i)}, DelayMillis: 300}.Append(nil)
		if _, err := c.WriteToUDPAddrPort(pkt, primary); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	buf := make([]byte, 100)
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	for {
		_, _, err := c.ReadFromUDPAddrPort(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got++
	}
	if got != maxPendingDelayedPerSrc {
		t.Fatalf("%d delayed replies, want the per-source bound %d", got, maxPendingDelayedPerSrc)
	}
}

func BenchmarkProbeRoundTrip(b *testing.B) {
	primary, _ := loopbackServer(b)
	c, err := listenUDP()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Query(ctx, c, primary, 0, 0, ProbeTiming{}); err != nil {
			b.Fatal(err)
		}
	}
}
