package sniproxy_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
)

func init() {
	behaviourTests["PendingEvicted"] = TestPendingEvictedForNewConnection
	behaviourTests["HelloHalfClose"] = TestHelloHalfCloseFailsFast
}

// TestPendingEvictedForNewConnection checks the slowloris defence: when
// every slot is held by connections that never finish their hello, a new
// connection takes the place of the oldest instead of waiting for the
// hello timeout.
func TestPendingEvictedForNewConnection(t *testing.T) {
	const slots = 4
	e := startProxy(t, sniproxy.Config{MaxConns: slots, MaxPendingPerIP: 100, HelloTimeout: 10 * time.Second}, false)
	backends := rawBackend(e.backend)
	hello := hellotest.ChromeLike(testName)
	var stuck []net.Conn
	for range slots {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(hello[:50]); err != nil {
			t.Fatal(err)
		}
		stuck = append(stuck, c)
	}
	waitFor(t, "pending hellos", func() bool { return metrics.Value(e.m.Pending) == slots })
	// Pending connections younger than HelloTimeout/5 are not evicted.
	time.Sleep(2*time.Second + 200*time.Millisecond) // the age under test

	start := time.Now()
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-backends:
		b.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the new connection was not served while the slots were held")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("served after %v: waited for a hello timeout instead of evicting", d)
	}
	if got := metrics.Value(e.m.PendingEvicted); got != 1 {
		t.Fatalf("PendingEvicted = %v, want 1", got)
	}
	closed := 0
	for _, s := range stuck {
		_ = s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := s.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed != 1 {
		t.Fatalf("%d stuck connections closed, want the oldest one", closed)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestHelloHalfCloseFailsFast checks that a client that half-closes
// inside its hello is dropped at once, not at the hello timeout.
func TestHelloHalfCloseFailsFast(t *testing.T) {
	e := startProxy(t, sniproxy.Config{HelloTimeout: 10 * time.Second}, false)
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := hellotest.ChromeLike(testName)
	if _, err := c.Write(hello[:200]); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(c); err != nil && isTimeout(err) {
		t.Fatal("the proxy kept a half-closed hello open")
	}
	waitFor(t, "truncated counter", func() bool { return metrics.Value(e.m.HelloTruncated) == 1 })
}
