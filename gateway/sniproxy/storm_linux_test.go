//go:build linux

package sniproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
)

func init() {
	behaviourTests["Storm"] = TestStormAccounting
}

// fdKinds counts this process's descriptors by kind (socket, pipe,
// anon_inode:[eventpoll], ...).
func fdKinds(t testing.TB) map[string]int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	kinds := make(map[string]int)
	for _, e := range ents {
		l, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the ReadDir descriptor itself, closed
		}
		if i := strings.IndexAny(l, ":["); i > 0 && !strings.HasPrefix(l, "anon_inode:") {
			l = l[:i]
		}
		kinds[l]++
	}
	return kinds
}

// stormKinds are the ways a connection goes in TestStormAccounting.
var stormKinds = []string{
	"relay", "half-close", "client-reset", "backend-closes", "not-tls",
	"abort-in-hello", "hello-timeout", "unknown-name", "refused", "tunnel",
}

const (
	refusedName = "refused.ela.test"
	tunnelName  = "tunnel.ela.test"
)

// TestStormAccounting runs a mixed storm of connections (relayed, half-
// closed, reset, refused, unknown, not TLS, slow, handed off) and checks
// that everything returns to where it was: the gauges at zero, no
// descriptor left open, no stale epoll entry, and the per-IP and MaxConns
// budgets whole again.
func TestStormAccounting(t *testing.T) {
	const (
		maxConns = 40
		perIP    = 12
		rounds   = 6
		workers  = 10
	)
	backend := listen(t)
	refused := closedPort(t)
	router := staticRouter{names: map[string]sniproxy.Target{
		testName:    {Addr: backend.Addr().String()},
		refusedName: {Addr: refused},
		tunnelName: {Dial: func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", backend.Addr().String())
			if err != nil {
				return nil, err
			}
			return nonTCPConn{c}, nil
		}},
	}}
	e := startProxy(t, sniproxy.Config{
		// The hello timeout is short for the storm's slow kinds, yet long
		// enough that a loaded machine finishes ordinary hellos within it.
		MaxConns: maxConns, MaxPendingPerIP: perIP, HelloTimeout: time.Second, Router: router,
	}, false)
	// One connection served proves Serve has set up (its loops and their
	// descriptors exist before any connection is accepted).
	warm, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = warm.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := warm.Write(hellotest.ChromeLike("nobody.ela.test")); err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(warm)
	warm.Close()
	waitFor(t, "the first connection released", func() bool { return metrics.Value(e.m.Active) == 0 })
	before := fdKinds(t)

	// The backend echoes until the client's end of stream, then answers
	// "bye" and closes; for "backend-closes" it closes after the first
	// byte.
	var bwg sync.WaitGroup
	go func() {
		for {
			b, err := backend.Accept()
			if err != nil {
				return
			}
			bwg.Add(1)
			go func() {
				defer bwg.Done()
				defer b.Close()
				_ = b.SetDeadline(time.Now().Add(20 * time.Second))
				hello := make([]byte, len(hellotest.ChromeLike(testName)))
				if _, err := io.ReadFull(b, hello[:5]); err != nil {
					return
				}
				n := int(hello[3])<<8 | int(hello[4])
				if _, err := io.ReadFull(b, make([]byte, n)); err != nil {
					return
				}
				buf := make([]byte, 4096)
				for {
					k, err := b.Read(buf)
					if k > 0 && buf[0] == 'X' {
						return // backend-closes
					}
					if k > 0 {
						if _, err := b.Write(buf[:k]); err != nil {
							return
						}
					}
					if err == io.EOF {
						_, _ = b.Write([]byte("bye"))
						return
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()

	run := func(kind string) error {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		tc := c.(*net.TCPConn)
		helloFor := func(name string) error {
			_, err := c.Write(hellotest.ChromeLike(name))
			return err
		}
		echo := func(msg string) error {
			if _, err := c.Write([]byte(msg)); err != nil {
				return err
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				return fmt.Errorf("echo: %w", err)
			}
			if string(got) != msg {
				return fmt.Errorf("echo %q, want %q", got, msg)
			}
			return nil
		}
		wantClosed := func() error {
			if _, err := io.ReadAll(c); err != nil && !isReset(err) {
				return fmt.Errorf("want the proxy to close: %w", err)
			}
			return nil
		}
		switch kind {
		case "relay", "tunnel", "half-close":
			name := testName
			if kind == "tunnel" {
				name = tunnelName
			}
			if err := helloFor(name); err != nil {
				return err
			}
			if err := echo("ping"); err != nil {
				return err
			}
			if kind != "half-close" {
				return nil // the client closes
			}
			if _, err := c.Write([]byte("last")); err != nil {
				return err
			}
			if err := tc.CloseWrite(); err != nil {
				return err
			}
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "lastbye" {
				return fmt.Errorf("after half-close got %q, %v", got, err)
			}
			return nil
		case "client-reset":
			if err := helloFor(testName); err != nil {
				return err
			}
			if err := echo("ping"); err != nil {
				return err
			}
			_ = tc.SetLinger(0) // close sends a reset
			return nil
		case "backend-closes":
			if err := helloFor(testName); err != nil {
				return err
			}
			if _, err := c.Write([]byte("X")); err != nil {
				return err
			}
			return wantClosed()
		case "not-tls":
			if _, err := c.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
				return err
			}
			return wantClosed()
		case "abort-in-hello":
			_, err := c.Write(hellotest.ChromeLike(testName)[:30])
			return err
		case "hello-timeout":
			if _, err := c.Write(hellotest.ChromeLike(testName)[:30]); err != nil {
				return err
			}
			return wantClosed()
		case "unknown-name", "refused":
			name := "nobody.ela.test"
			if kind == "refused" {
				name = refusedName
			}
			if err := helloFor(name); err != nil {
				return err
			}
			got, err := io.ReadAll(c)
			if err != nil || len(got) != 7 || got[0] != 0x15 {
				return fmt.Errorf("want an alert: % x, %v", got, err)
			}
			return nil
		}
		return fmt.Errorf("unknown kind %q", kind)
	}

	jobs := make(chan string)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for kind := range jobs {
				if err := run(kind); err != nil {
					errc <- fmt.Errorf("%s: %w", kind, err)
					return
				}
			}
		}()
	}
	for range rounds {
		for _, k := range stormKinds {
			jobs <- k
		}
	}
	close(jobs)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	waitFor(t, "gauges back at zero", func() bool {
		return metrics.Value(e.m.Active) == 0 && metrics.Value(e.m.Pending) == 0
	})
	bwg.Wait()
	waitFor(t, "descriptors back to where they were", func() bool {
		now := fdKinds(t)
		// Pipes are pooled for reuse (at most 32 per loop, and the
		// goroutine path's shared pool): they may stay.
		return now["socket"] == before["socket"] && now["anon_inode:[eventpoll]"] == before["anon_inode:[eventpoll]"]
	})
	if stale := staleEpollEntries(t); len(stale) > 0 {
		t.Fatalf("stale epoll entries after the storm:\n%s", strings.Join(stale, "\n"))
	}
	if got := metrics.Value(e.m.Accepted); got != 1+rounds*float64(len(stormKinds)) {
		t.Fatalf("Accepted = %v, want %d: some connections were rejected", got, 1+rounds*len(stormKinds))
	}

	// The budgets are whole: perIP pending hellos from one address, then
	// maxConns connections at once.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range perIP {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, "a full per-IP budget of pending hellos", func() bool { return metrics.Value(e.m.Pending) == perIP })
	if got := metrics.Value(e.m.RejectedPerIP); got != 0 {
		t.Fatalf("RejectedPerIP = %v: the per-IP count leaked", got)
	}
	for _, c := range held {
		if _, err := c.Write(hellotest.ChromeLike(testName)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the pending hellos routed", func() bool { return metrics.Value(e.m.Pending) == 0 })
	for range maxConns - perIP {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if _, err := c.Write(hellotest.ChromeLike(testName)); err != nil {
			t.Fatal(err)
		}
		// Routed before the next: all come from one address, and more
		// than perIP hellos pending at once would be refused by design.
		waitFor(t, "the hello routed", func() bool { return metrics.Value(e.m.Pending) == 0 })
	}
	for i, c := range held {
		if err := func() error {
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte("p")); err != nil {
				return err
			}
			got := make([]byte, 1)
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if !bytes.Equal(got, []byte("p")) {
				return fmt.Errorf("got %q", got)
			}
			return nil
		}(); err != nil {
			t.Fatalf("connection %d of MaxConns: %v", i, err)
		}
	}
	if got := metrics.Value(e.m.Active); got != maxConns {
		t.Fatalf("Active = %v with MaxConns connections open", got)
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	waitFor(t, "gauges back at zero", func() bool {
		return metrics.Value(e.m.Active) == 0 && metrics.Value(e.m.Pending) == 0
	})
	e.stop()
	if stale := staleEpollEntries(t); len(stale) > 0 {
		t.Fatalf("stale epoll entries after Serve returned:\n%s", strings.Join(stale, "\n"))
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

func init() {
	behaviourTests["ShutdownEveryState"] = TestServeShutdownEveryState
}

// TestServeShutdownEveryState cancels Serve while it holds connections in
// every state (sending the hello, connecting to a backend that does not
// answer, handed off and connecting, relaying with bytes queued towards a
// client that does not read, handed off and relaying, draining after an
// alert): Serve must return, every client must see its connection end,
// and the gauges, descriptors and epoll sets must come back to where they
// were.
func TestServeShutdownEveryState(t *testing.T) {
	backend := listen(t)
	backends := rawBackend(backend)
	stuck := unresponsiveBackend(t)
	const (
		stuckName      = "stuck.ela.test"
		stuckTunnel    = "stucktunnel.ela.test"
		relayedTunnel  = tunnelName
		unknownPending = "nobody.ela.test"
	)
	tunnelDials := make(chan struct{}, 4)
	router := staticRouter{names: map[string]sniproxy.Target{
		testName:  {Addr: backend.Addr().String()},
		stuckName: {Addr: stuck},
		stuckTunnel: {Dial: func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			tunnelDials <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}},
		relayedTunnel: {Dial: func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", backend.Addr().String())
			if err != nil {
				return nil, err
			}
			return nonTCPConn{c}, nil
		}},
	}}
	e := startProxy(t, sniproxy.Config{Router: router, DialTimeout: time.Minute, HelloTimeout: time.Minute}, false)
	warm, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = warm.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = warm.Write(hellotest.ChromeLike(unknownPending))
	_, _ = io.ReadAll(warm)
	warm.Close()
	waitFor(t, "the first connection released", func() bool { return metrics.Value(e.m.Active) == 0 })
	before := fdKinds(t)

	var clients []net.Conn
	dial := func(first []byte) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		if _, err := c.Write(first); err != nil {
			t.Fatal(err)
		}
		return c
	}
	dial(hellotest.ChromeLike(testName)[:40]) // pending
	dial(hellotest.ChromeLike(stuckName))     // connecting
	dial(hellotest.ChromeLike(stuckTunnel))   // handed off, connecting
	<-tunnelDials
	drain := dial(hellotest.ChromeLike(unknownPending)) // alert sent, draining
	_ = drain.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := drain.Read(make([]byte, 7)); n != 7 || err != nil {
		t.Fatalf("alert: %d, %v", n, err)
	}
	var backendSides []net.Conn
	for _, name := range []string{testName, relayedTunnel} { // relaying towards a client that does not read
		dial(hellotest.ChromeLike(name))
		var b net.Conn
		select {
		case b = <-backends:
		case <-time.After(10 * time.Second):
			t.Fatal("no backend connection")
		}
		backendSides = append(backendSides, b)
		go func() {
			chunk := make([]byte, 64<<10)
			_ = b.SetWriteDeadline(time.Now().Add(20 * time.Second))
			for {
				if _, err := b.Write(chunk); err != nil {
					return
				}
			}
		}()
	}
	waitFor(t, "every connection in place", func() bool {
		return metrics.Value(e.m.Active) == float64(len(clients)) && metrics.Value(e.m.Pending) == 1
	})

	e.stop() // fails the test if Serve does not return, or returns an error
	if got := metrics.Value(e.m.Active); got != 0 {
		t.Errorf("Active = %v after Serve returned", got)
	}
	if got := metrics.Value(e.m.Pending); got != 0 {
		t.Errorf("Pending = %v after Serve returned", got)
	}
	for i, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		if err != nil && !isReset(err) {
			t.Errorf("client %d: %v; want its connection ended", i, err)
		}
		c.Close()
	}
	for _, b := range backendSides {
		_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, b); err != nil && !isReset(err) {
			t.Errorf("backend side: %v; want its connection ended", err)
		}
		b.Close()
	}
	waitFor(t, "descriptors back to where they were", func() bool {
		now := fdKinds(t)
		// Serve closed its listener, and its loops: their epoll and wake
		// descriptors go too.
		return now["socket"] == before["socket"]-1 && now["anon_inode:[eventpoll]"] <= before["anon_inode:[eventpoll]"]
	})
	if stale := staleEpollEntries(t); len(stale) > 0 {
		t.Fatalf("stale epoll entries after Serve returned:\n%s", strings.Join(stale, "\n"))
	}
}
