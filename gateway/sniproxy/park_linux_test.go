package sniproxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
)

// relayedPair opens a client connection through e and returns it with the
// backend's side, after the hello and one byte each way.
func relayedPair(t testing.TB, e *env, backends <-chan net.Conn) (client, backend net.Conn) {
	t.Helper()
	hello := hellotest.ChromeLike(testName)
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	var b net.Conn
	select {
	case b = <-backends:
	case <-time.After(10 * time.Second):
		t.Fatal("no backend connection")
	}
	t.Cleanup(func() { b.Close() })
	_ = b.SetDeadline(time.Now().Add(30 * time.Second))
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(b, make([]byte, len(hello))); err != nil {
		t.Fatal(err)
	}
	exchange(t, c, b, 1)
	return c, b
}

// exchange sends n bytes each way and checks they arrive.
func exchange(t testing.TB, c, b net.Conn, n int) {
	t.Helper()
	up := bytes.Repeat([]byte{'u'}, n)
	down := bytes.Repeat([]byte{'d'}, n)
	errc := make(chan error, 2)
	go func() { _, err := c.Write(up); errc <- err }()
	go func() { _, err := b.Write(down); errc <- err }()
	got := make([]byte, n)
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, up) {
		t.Fatalf("backend got %d bytes, %v", len(got), err)
	}
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, down) {
		t.Fatalf("client got %d bytes, %v", len(got), err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// TestIdleConnectionsPark checks that on the goroutine path quiet relayed
// connections give up their goroutines and that parked connections still carry bytes both ways,
// pass a half-close on, and park again.
func TestIdleConnectionsPark(t *testing.T) {
	const conns = 40
	e := startProxy(t, sniproxy.Config{ParkAfter: 30 * time.Millisecond, MaxPendingPerIP: conns, Dial: plainDial}, false)
	backends := rawBackend(e.backend)
	g0 := runtime.NumGoroutine()
	type pair struct{ c, b net.Conn }
	var pairs []pair
	for range conns {
		c, b := relayedPair(t, e, backends)
		pairs = append(pairs, pair{c, b})
	}
	// Each relayed connection ran two goroutines; parked ones run none.
	waitFor(t, "idle connections to park", func() bool { return runtime.NumGoroutine() <= g0+conns/4 })
	for _, p := range pairs {
		exchange(t, p.c, p.b, 100<<10)
	}
	waitFor(t, "connections to park again", func() bool { return runtime.NumGoroutine() <= g0+conns/4 })

	// A half-close while parked reaches the other side, and the other
	// direction goes on.
	p := pairs[0]
	if err := p.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := p.b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("backend read after client half-close = %d, %v; want EOF", n, err)
	}
	if _, err := p.b.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(p.c, got); err != nil || string(got) != "after" {
		t.Fatalf("client got %q, %v", got, err)
	}
	p.b.Close()
	if n, err := p.c.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("client read after backend close = %d, %v; want EOF", n, err)
	}
	waitFor(t, "connection released", func() bool { return metrics.Value(e.m.Active) == conns-1 })
}

// TestServeStopsParkedConnections checks that cancelling Serve ends
// connections whose halves are parked (no goroutine to close them), on
// the goroutine path, and relayed connections of the event loops.
func TestServeStopsParkedConnections(t *testing.T) {
	for _, mode := range []string{"goroutines", "loops"} {
		t.Run(mode, func(t *testing.T) {
			backendLn := listen(t)
			backends := rawBackend(backendLn)
			m := sniproxy.NewMetrics(metrics.New())
			cfg := sniproxy.Config{
				Router:    staticRouter{names: map[string]sniproxy.Target{testName: {Addr: backendLn.Addr().String()}}},
				ParkAfter: 20 * time.Millisecond,
				Metrics:   m,
			}
			if mode == "goroutines" {
				cfg.Dial = plainDial
			}
			srv, err := sniproxy.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ln := listen(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, ln) }()
			e := &env{proxyAddr: ln.Addr().String(), m: m}
			g0 := runtime.NumGoroutine()
			const n = 20
			var c, b net.Conn
			for range n {
				c, b = relayedPair(t, e, backends)
			}
			// Parked, or never given goroutines (loops): none per
			// connection (the slack is for Serve's own goroutines).
			waitFor(t, "no goroutine per connection", func() bool { return runtime.NumGoroutine() <= g0+5 })
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return with a relayed connection open")
			}
			for _, x := range []net.Conn{c, b} {
				_ = x.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := x.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("connection still open after Serve returned: %v", err)
				}
			}
		})
	}
}

// TestParkedIdleTimeout checks that a parked connection is still closed
// after IdleTimeout, and counted once.
func TestParkedIdleTimeout(t *testing.T) {
	e := startProxy(t, sniproxy.Config{ParkAfter: 20 * time.Millisecond, IdleTimeout: 300 * time.Millisecond, Dial: plainDial}, false)
	c, b := relayedPair(t, e, rawBackend(e.backend))
	start := time.Now()
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read = %d, %v; want EOF at the idle timeout", n, err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", d)
	}
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("backend read = %v, want EOF", err)
	}
	waitFor(t, "idle counter", func() bool { return metrics.Value(e.m.IdleClosed) == 1 })
}

// TestStalledReaderClosed checks that a client that stops reading while
// the backend sends is closed after IdleTimeout rather than holding a
// goroutine and a full pipe for ever.
func TestStalledReaderClosed(t *testing.T) {
	e := startProxy(t, sniproxy.Config{IdleTimeout: 400 * time.Millisecond}, false)
	c, b := relayedPair(t, e, rawBackend(e.backend))
	_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
	chunk := make([]byte, 64<<10)
	_ = b.SetWriteDeadline(time.Now().Add(20 * time.Second))
	var err error
	for err == nil {
		_, err = b.Write(chunk) // fills every buffer, then fails once the proxy gives up
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("backend write: %v; the proxy never closed the stalled connection", err)
	}
	waitFor(t, "idle counter", func() bool { return metrics.Value(e.m.IdleClosed) == 1 })
}

func init() {
	behaviourTests["StalledReader"] = TestStalledReaderClosed
}

// TestServeReturnsWhenListenerClosed checks that closing the listener
// under a running Serve makes it return an error, on both paths.
func TestServeReturnsWhenListenerClosed(t *testing.T) {
	for _, mode := range []string{"goroutines", "loops"} {
		t.Run(mode, func(t *testing.T) {
			cfg := sniproxy.Config{Router: staticRouter{}}
			if mode == "goroutines" {
				cfg.Dial = plainDial
			}
			srv, err := sniproxy.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ln := listen(t)
			done := make(chan error, 1)
			go func() { done <- srv.Serve(context.Background(), ln) }()
			// A first connection, answered with an alert, proves Serve is
			// accepting and has gone back to waiting.
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(hellotest.ChromeLike("nobody.ela.test")); err != nil {
				t.Fatal(err)
			}
			if got, _ := io.ReadAll(c); len(got) == 0 {
				t.Fatal("no alert for an unknown name")
			}
			c.Close()
			ln.Close()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("Serve returned nil after its listener was closed")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return after its listener was closed")
			}
		})
	}
}
