//go:build linux

package sniproxy_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
)

// staleEpollEntries lists the registrations in this process's epoll sets
// that no longer belong to the descriptor number they were added with:
// the number is closed or now names another file. Closing a descriptor
// removes it from an epoll set only when no duplicate keeps its file open,
// so such an entry goes on waking its loop for a socket the loop no longer
// owns.
func staleEpollEntries(t testing.TB) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var stale []string
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || l != "anon_inode:[eventpoll]" {
			continue
		}
		f, err := os.Open("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// tfd:        5 events:       19 data:                5  pos:0 ino:1468154 sdev:9
			fields := strings.Fields(sc.Text())
			if len(fields) < 8 || fields[0] != "tfd:" {
				continue
			}
			tfd := fields[1]
			var ino uint64
			for _, fl := range fields {
				if v, ok := strings.CutPrefix(fl, "ino:"); ok {
					ino, _ = strconv.ParseUint(v, 16, 64)
				}
			}
			var st syscall.Stat_t
			if err := syscall.Stat("/proc/self/fd/"+tfd, &st); err != nil || st.Ino != ino {
				stale = append(stale, fmt.Sprintf("epoll fd %s: tfd %s (file ino %d): %v, now ino %d", e.Name(), tfd, ino, err, st.Ino))
			}
		}
		f.Close()
	}
	return stale
}

// TestHandoffLeavesNoEpollRegistration: a connection the loop hands to the
// goroutine path (a target with its own Dial, such as a tunnel stream) must
// leave the loop's epoll set. net.FileConn duplicates the descriptor, so
// closing the loop's copy alone keeps the socket registered and every
// packet of the handed-off connection wakes the loop.
func TestHandoffLeavesNoEpollRegistration(t *testing.T) {
	backend := listen(t)
	backends := rawBackend(backend)
	cfg := sniproxy.Config{Router: staticRouter{names: map[string]sniproxy.Target{testName: {
		Dial: func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", backend.Addr().String())
			if err != nil {
				return nil, err
			}
			return nonTCPConn{c}, nil
		},
	}}}}
	e := startProxy(t, cfg, false)
	if stale := staleEpollEntries(t); len(stale) > 0 {
		t.Fatalf("stale epoll entries before the test:\n%s", strings.Join(stale, "\n"))
	}
	c, b := relayedPair(t, e, backends)
	exchange(t, c, b, 3)
	if stale := staleEpollEntries(t); len(stale) > 0 {
		t.Fatalf("a handed-off connection is still in an event loop's epoll set:\n%s", strings.Join(stale, "\n"))
	}
}

// tunnelTarget routes testName to a Target with its own Dial (as a tunnel
// stream is), which the event loops hand to the goroutine path; each dial
// is reported on dials.
func tunnelTarget(backend net.Listener, dials chan<- struct{}) sniproxy.Router {
	return staticRouter{names: map[string]sniproxy.Target{testName: {
		Dial: func(ctx context.Context, _ net.Addr) (net.Conn, error) {
			dials <- struct{}{}
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", backend.Addr().String())
			if err != nil {
				return nil, err
			}
			return nonTCPConn{c}, nil
		},
	}}}
}

// TestMaxConnsCountsHandedOff: connections the loops hand to the goroutine
// path (tunnel streams) hold a slot of MaxConns until they end, like the
// ones the loops relay themselves.
func TestMaxConnsCountsHandedOff(t *testing.T) {
	backend := listen(t)
	backends := rawBackend(backend)
	dials := make(chan struct{}, 8)
	e := startProxy(t, sniproxy.Config{MaxConns: 1, Router: tunnelTarget(backend, dials)}, false)
	first, b1 := relayedPair(t, e, backends)
	<-dials

	hello := hellotest.ChromeLike(testName)
	second, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := second.Write(hello); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dials:
		t.Fatal("a second connection was dialled while the first, handed off, held the only slot")
	case <-time.After(300 * time.Millisecond): // an absence can only be bounded
	}
	first.Close()
	b1.Close()
	select {
	case <-dials:
	case <-time.After(10 * time.Second):
		t.Fatal("the second connection never got the freed slot")
	}
}

// blockingRouter routes testName to backend; the first route of blockName
// blocks its event loop until release is closed (entered is closed when it
// starts), then goes to backend too.
type blockingRouter struct {
	backend          string
	entered, release chan struct{}
}

const blockName = "block.ela.test"

func (r blockingRouter) Route(_ context.Context, name string) (sniproxy.Target, error) {
	switch name {
	case blockName:
		close(r.entered)
		<-r.release
	case testName:
	default:
		return sniproxy.Target{}, sniproxy.ErrUnknownName
	}
	return sniproxy.Target{Addr: r.backend}, nil
}

// TestMaxConnsWhileALoopLags: a loop that accepts a connection and gives it
// to a less busy loop must count it at once. Otherwise, while that loop is
// slow to take its inbox (here: stuck in a Route call), the accepting loop
// goes on admitting up to MaxConns by itself, and the given connections
// come on top.
func TestMaxConnsWhileALoopLags(t *testing.T) {
	const maxConns = 10
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // two loops
	backend := listen(t)
	backends := rawBackend(backend)
	r := blockingRouter{backend: backend.Addr().String(), entered: make(chan struct{}), release: make(chan struct{})}
	e := startProxy(t, sniproxy.Config{MaxConns: maxConns, MaxPendingPerIP: 100, Router: r}, false)
	released := false
	defer func() {
		if !released {
			close(r.release)
		}
	}()

	dialHello := func(name string) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(hellotest.ChromeLike(name)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	dialHello(blockName)
	select {
	case <-r.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking route was never called")
	}
	for range 2 * maxConns {
		dialHello(testName)
	}
	n := 0
	for n < maxConns-1 {
		select {
		case b := <-backends:
			defer b.Close()
			n++
		case <-time.After(300 * time.Millisecond): // the other loop has given up some: its accepts stop short
			goto release
		}
	}
release:
	close(r.release)
	released = true
	for {
		select {
		case b := <-backends:
			defer b.Close()
			n++
			continue
		case <-time.After(300 * time.Millisecond): // an absence can only be bounded
		}
		break
	}
	if n != maxConns {
		t.Fatalf("%d connections relayed at once, want MaxConns (%d)", n, maxConns)
	}
}
