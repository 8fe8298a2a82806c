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
		MaxConns: maxConns, MaxPendingPerIP: perIP, HelloTimeout: 300 * time.Millisecond, Router: router,
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
