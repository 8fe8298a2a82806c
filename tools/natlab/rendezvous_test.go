package natlab_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
	"github.com/elacity/pc2/transport/punch"
)

// startRendezvous runs a rendezvous server on a loopback address of its own
// (the ports are fixed).
func startRendezvous(t *testing.T, ip string) netip.Addr {
	t.Helper()
	addr := netip.MustParseAddr(ip)
	s, err := natlab.ListenRendezvous(addr)
	if err != nil {
		t.Skipf("cannot bind the rendezvous ports on %v: %v", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return addr
}

func TestRendezvousSignalling(t *testing.T) {
	addr := startRendezvous(t, "127.0.0.71")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := netip.AddrPortFrom(addr, natlab.RendezvousPort)
	a, err := natlab.DialRendezvous(ctx, srv, "alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := natlab.DialRendezvous(ctx, srv, "bob", 5*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	// Garbage on a raw connection changes nothing for the others.
	raw, err := net.Dial("tcp", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	fmt.Fprintf(raw, "hello mallory\nto bob s1 !!notbase64!!\nto bob BAD_SESSION aGk\nto nobody s1 aGk\n%s\n", strings.Repeat("x", 5000))

	// Frames arrive in order per session, even with an emulated latency.
	for i := range 5 {
		if err := b.Send("alice", "s1", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Send("bob", "s2", []byte("to bob")); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		got, err := a.Recv(ctx, "s1")
		if err != nil || len(got) != 1 || got[0] != byte(i) {
			t.Fatalf("frame %d: %v %v", i, got, err)
		}
	}
	got, err := b.Recv(ctx, "s2")
	if err != nil || string(got) != "to bob" {
		t.Fatalf("bob got %q %v", got, err)
	}
	// Nothing from mallory's lines reached bob's session s1.
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	if got, err := b.Recv(short, "s1"); err == nil {
		t.Fatalf("bob received %q from malformed frames", got)
	}

	// The punch signalling runs over it.
	sa, sb := a.Signal("bob", "p1"), b.Signal("alice", "p1")
	errc := make(chan error, 1)
	go func() {
		_, err := punch.Negotiate(ctx, sb, punch.Responder, punch.Offer{})
		errc <- err
	}()
	plan, err := punch.Negotiate(ctx, sa, punch.Initiator, punch.NewOffer())
	if err != nil || <-errc != nil {
		t.Fatalf("negotiate: %v", err)
	}
	if plan.RTT < 5*time.Millisecond {
		t.Errorf("RTT %v below bob's emulated latency", plan.RTT)
	}
}

func TestRendezvousReflect(t *testing.T) {
	addr := startRendezvous(t, "127.0.0.72")
	// Reflector: the observed source of the connection.
	c, err := net.Dial("tcp", netip.AddrPortFrom(addr, natlab.ReflectPort).String())
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || strings.TrimSpace(line) != "observed "+c.LocalAddr().String() {
		t.Fatalf("reflector said %q (%v), local %v", line, err, c.LocalAddr())
	}
}
