//go:build linux

package sniproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"
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

// blockingRouter routes testName to backend. A route of blockName blocks
// its event loop: it reports itself on entered and waits for a value on
// release (or its close), then goes to backend too, or fails with err
// when set.
type blockingRouter struct {
	backend string
	err     error
	entered chan string
	release chan struct{}
}

const blockName = "block.ela.test"

func newBlockingRouter(backend string, err error) blockingRouter {
	return blockingRouter{backend: backend, err: err, entered: make(chan string, 16), release: make(chan struct{})}
}

func (r blockingRouter) Route(_ context.Context, name string) (sniproxy.Target, error) {
	switch name {
	case blockName:
		r.entered <- name
		<-r.release
		if r.err != nil {
			return sniproxy.Target{}, r.err
		}
	case testName:
	default:
		return sniproxy.Target{}, sniproxy.ErrUnknownName
	}
	return sniproxy.Target{Addr: r.backend}, nil
}

func (r blockingRouter) waitEntered(t testing.TB) {
	t.Helper()
	select {
	case <-r.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking route was never called")
	}
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
	r := newBlockingRouter(backend.Addr().String(), nil)
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
	r.waitEntered(t)
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
	// MaxConns connections get through (the blocked one among them);
	// then no more may, however long the backlog.
	for deadline := time.After(10 * time.Second); n < maxConns; {
		select {
		case b := <-backends:
			defer b.Close()
			n++
		case <-deadline:
			t.Fatalf("only %d connections relayed, want MaxConns (%d)", n, maxConns)
		}
	}
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

// tcpState reads this host's /proc/net/tcp entry for the IPv4 connection
// from local to remote: its state (hex, "08" is CLOSE_WAIT: the peer's FIN
// has arrived) and receive queue length.
func tcpState(t testing.TB, local, remote netip.AddrPort) (state string, rxQueue uint64, ok bool) {
	t.Helper()
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	hexAddr := func(ap netip.AddrPort) string {
		a := ap.Addr().Unmap().As4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
	}
	l, r := hexAddr(local), hexAddr(remote)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[1] != l || f[2] != r {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		n, _ := strconv.ParseUint(rx, 16, 64)
		return f[3], n, true
	}
	return "", 0, false
}

// TestBackendBytesBeforeRelay: what the backend sends (and its FIN) before
// the loop has finished writing the hello to it must reach the client. The
// loop learns of those bytes from the same edge-triggered event that tells
// it the connect has completed; dropping that readiness left them unread
// and the client waiting for the idle timeout.
func TestBackendBytesBeforeRelay(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // one loop, so one blocked Route holds it
	backend := listen(t)
	backends := rawBackend(backend)
	r := newBlockingRouter(backend.Addr().String(), sniproxy.ErrUnknownName)
	defer close(r.release)
	e := startProxy(t, sniproxy.Config{Router: r}, false)
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
	// Hold the loop so that the next two connections wait in the backlog
	// and are accepted in one go: the first is routed and its backend
	// connect starts, then the second's Route holds the loop again.
	dialHello(blockName)
	r.waitEntered(t)
	a := dialHello(testName)
	dialHello(blockName)
	r.release <- struct{}{}
	r.waitEntered(t)

	// The loop is held before it has seen the connect complete. The
	// backend speaks first and half-closes.
	var b net.Conn
	select {
	case b = <-backends:
	case <-time.After(10 * time.Second):
		t.Fatal("no backend connection")
	}
	defer b.Close()
	banner := []byte("backend speaks first")
	if _, err := b.Write(banner); err != nil {
		t.Fatal(err)
	}
	if err := b.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	proxySide := netip.MustParseAddrPort(b.RemoteAddr().String())
	backendAddr := netip.MustParseAddrPort(b.LocalAddr().String())
	waitFor(t, "the banner and FIN queued at the proxy", func() bool {
		st, rx, ok := tcpState(t, proxySide, backendAddr)
		return ok && st == "08" && rx >= uint64(len(banner)) // the FIN counts one
	})
	r.release <- struct{}{}

	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(a)
	if err != nil || !bytes.Equal(got, banner) {
		t.Fatalf("client got %q, %v; want %q and the backend's half-close", got, err, banner)
	}
	// The hello went the other way.
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hello := hellotest.ChromeLike(testName)
	if _, err := io.ReadFull(b, make([]byte, len(hello))); err != nil {
		t.Fatalf("backend: hello: %v", err)
	}
}

// unresponsiveBackend is a listening socket whose accept queue (backlog
// 0: room for one) is already full, so the kernel drops further SYNs and
// a connect to it neither succeeds nor fails until the client gives up.
func unresponsiveBackend(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr
}

// TestBackendDialTimeoutAlert: a backend that never answers the connect
// gets the client an internal_error alert after DialTimeout, not a hang.
func TestBackendDialTimeoutAlert(t *testing.T) {
	addr := unresponsiveBackend(t)
	e := startProxy(t, sniproxy.Config{DialTimeout: 300 * time.Millisecond, Router: staticRouter{names: map[string]sniproxy.Target{testName: {Addr: addr}}}}, false)
	wantInternalErrorAlert(t, e, 5*time.Second)
}

func init() {
	behaviourTests["BackendDialTimeout"] = TestBackendDialTimeoutAlert
}

// TestServeReturnsWhenListenerClosedUnderTraffic: a listener closed under
// Serve leaves the epoll sets without an event; the loops must notice it
// even while connections keep them from ever waiting idle for long.
func TestServeReturnsWhenListenerClosedUnderTraffic(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // one loop, kept busy
	backend := listen(t)
	backends := rawBackend(backend)
	srv, err := sniproxy.New(sniproxy.Config{Router: staticRouter{names: map[string]sniproxy.Target{testName: {Addr: backend.Addr().String()}}}})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c, b := relayedPair(t, &env{proxyAddr: ln.Addr().String()}, backends)
	stop := make(chan struct{})
	defer close(stop)
	// A trickle keeps the loop from ever waiting a second without an
	// event, until the test ends.
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond): // the traffic pattern under test
			}
			if _, err := b.Write([]byte{'t'}); err != nil {
				return
			}
		}
	}()
	go func() { _, _ = io.Copy(io.Discard, c) }()
	ln.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve returned nil after its listener was closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not notice its listener closed while a connection was busy")
	}
}

// TestListenerFailureLeavesOtherServes: a Server may Serve several
// listeners at once (see Listen). When one of them fails, its Serve
// returns, but the others must go on serving every kind of target,
// including those handed to the goroutine path.
func TestListenerFailureLeavesOtherServes(t *testing.T) {
	backend := listen(t)
	backends := rawBackend(backend)
	dials := make(chan struct{}, 4)
	srv, err := sniproxy.New(sniproxy.Config{Router: tunnelTarget(backend, dials)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln1, ln2 := listen(t), listen(t)
	done1, done2 := make(chan error, 1), make(chan error, 1)
	go func() { done1 <- srv.Serve(ctx, ln1) }()
	go func() { done2 <- srv.Serve(ctx, ln2) }()
	defer func() {
		cancel()
		select {
		case <-done2:
		case <-time.After(10 * time.Second):
			t.Error("the second Serve did not return after cancel")
		}
	}()

	// A connection answered on each listener proves both Serves run.
	for _, ln := range []net.Listener{ln1, ln2} {
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
	}
	// Handed-off connections on each listener, relaying.
	c1, b1 := relayedPair(t, &env{proxyAddr: ln1.Addr().String()}, backends)
	c2, b2 := relayedPair(t, &env{proxyAddr: ln2.Addr().String()}, backends)

	ln1.Close()
	select {
	case err := <-done1:
		if err == nil {
			t.Fatal("Serve returned nil after its listener was closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its listener was closed")
	}
	// The failed Serve ended what it served...
	for _, x := range []net.Conn{c1, b1} {
		if _, err := io.Copy(io.Discard, x); err != nil && !isReset(err) {
			t.Fatalf("a connection of the failed Serve: %v; want it ended", err)
		}
	}
	// ...and only that: the other Serve's connection goes on, and it
	// still hands new ones over.
	exchange(t, c2, b2, 100)
	c, b := relayedPair(t, &env{proxyAddr: ln2.Addr().String()}, backends)
	exchange(t, c, b, 100)
}

// TestHostNameTargetHandedOff: a target given by host name is handed to
// the goroutine path, which resolves and dials it and relays with splice,
// parking quiet directions: bytes, parking and half-closes all work on a
// connection that began on a loop.
func TestHostNameTargetHandedOff(t *testing.T) {
	backend := listen(t)
	backends := rawBackend(backend)
	port := backend.Addr().(*net.TCPAddr).Port
	e := startProxy(t, sniproxy.Config{
		ParkAfter: 20 * time.Millisecond,
		Router:    staticRouter{names: map[string]sniproxy.Target{testName: {Addr: fmt.Sprintf("localhost:%d", port)}}},
	}, false)
	c, b := relayedPair(t, e, backends)
	waitFor(t, "both directions parked", func() bool { return relayGoroutines() == 0 })
	exchange(t, c, b, 64<<10)
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("backend: read %d, %v; want the client's half-close", n, err)
	}
	exchange1 := []byte("after the client's half-close")
	if _, err := b.Write(exchange1); err != nil {
		t.Fatal(err)
	}
	b.Close()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, exchange1) {
		t.Fatalf("client got %q, %v", got, err)
	}
	waitFor(t, "the connection released", func() bool { return metrics.Value(e.m.Active) == 0 })
}

// relayGoroutines counts the goroutines running a relay direction of the
// goroutine path.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "sniproxy.(*half).") || strings.Contains(g, "sniproxy.copyHalf") {
			n++
		}
	}
	return n
}
