package sniproxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"

	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/proxyproto"
	"github.com/elacity/pc2/gateway/sniproxy"
	"github.com/elacity/pc2/gateway/testcert"
)

const testName = "alice.ela.test"

// env is a proxy in front of one backend listener, on loopback.
type env struct {
	proxyAddr string
	backend   net.Listener
	set       *metrics.Registry
	m         *sniproxy.Metrics
	stop      func() // stops Serve and waits for it; also run at cleanup
}

type staticRouter struct {
	names map[string]sniproxy.Target
}

func (r staticRouter) Route(_ context.Context, name string) (sniproxy.Target, error) {
	t, ok := r.names[name]
	if !ok {
		return sniproxy.Target{}, fmt.Errorf("%q: %w", name, sniproxy.ErrUnknownName)
	}
	return t, nil
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// startProxy runs a proxy routing testName to a fresh backend listener.
func startProxy(t testing.TB, cfg sniproxy.Config, proxyProto bool) *env {
	t.Helper()
	e := &env{backend: listen(t), set: metrics.New()}
	e.m = sniproxy.NewMetrics(e.set)
	if cfg.Router == nil {
		cfg.Router = staticRouter{names: map[string]sniproxy.Target{
			testName: {Addr: e.backend.Addr().String(), ProxyProtocol: proxyProto},
		}}
	}
	cfg.Metrics = e.m
	if goroutineMode && cfg.Dial == nil {
		cfg.Dial = plainDial
	}
	srv, err := sniproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	e.proxyAddr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Serve did not return after cancel")
			}
		})
	}
	t.Cleanup(e.stop)
	return e
}

// goroutineMode makes startProxy configure a dialer, which selects the
// goroutine data path instead of the event loops (see TestGoroutinePath).
var goroutineMode bool

func plainDial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// TestGoroutinePath runs the behaviour tests again on the goroutine data
// path: the one used with a custom Config.Dial, for targets given by host
// name, and on systems without the event loops.
func TestGoroutinePath(t *testing.T) {
	goroutineMode = true
	defer func() { goroutineMode = false }()
	for name, f := range behaviourTests {
		t.Run(name, f)
	}
}

// behaviourTests hold on both data paths.
var behaviourTests = map[string]func(*testing.T){
	"EndToEnd":      TestEndToEndTLSPassthrough,
	"SplitHello":    TestSplitHello,
	"UnknownName":   TestUnknownNameAlert,
	"ProxyProtocol": TestProxyProtocolHeader,
	"HalfClose":     TestHalfClose,
	"HelloTimeout":  TestSlowlorisHelloTimeout,
	"OversizeHello": TestOversizeHello,
	"NotTLS":        TestNotTLSClosed,
	"IdleTimeout":   TestIdleTimeout,
	"PendingPerIP":  TestPendingPerIPBound,
	"MaxConns":      TestMaxConnsBound,
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tlsBackend serves TLS with its own certificate on ln: it echoes lines and
// reports the PROXY header it saw (when expected) on headers.
func tlsBackend(t testing.TB, ln net.Listener, cert tls.Certificate, expectPP bool, headers chan<- proxyproto.Header) {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				if expectPP {
					h, err := proxyproto.Read(c, 0)
					if err != nil {
						t.Errorf("backend: proxy header: %v", err)
						return
					}
					headers <- h
				}
				tc := tls.Server(c, cfg)
				_, _ = io.Copy(tc, tc) // echo until the client closes
			}()
		}
	}()
}

func clientConfig(pool *x509.CertPool) *tls.Config {
	return &tls.Config{ServerName: testName, RootCAs: pool, NextProtos: []string{"h2"}}
}

func echoOnce(t *testing.T, c *tls.Conn) {
	t.Helper()
	msg := []byte("hello through the gateway\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q", got)
	}
}

func newCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, pool, err := testcert.New(testName)
	if err != nil {
		t.Fatal(err)
	}
	return cert, pool
}

func TestEndToEndTLSPassthrough(t *testing.T) {
	cert, pool := newCert(t)
	e := startProxy(t, sniproxy.Config{}, false)
	tlsBackend(t, e.backend, cert, false, nil)

	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.proxyAddr, clientConfig(pool))
	if err != nil {
		t.Fatalf("handshake through proxy: %v", err)
	}
	defer c.Close()
	st := c.ConnectionState()
	if !bytes.Equal(st.PeerCertificates[0].Raw, cert.Leaf.Raw) {
		t.Fatal("client saw a certificate other than the backend's")
	}
	if st.NegotiatedProtocol != "h2" {
		t.Fatalf("ALPN = %q", st.NegotiatedProtocol)
	}
	echoOnce(t, c)
	c.Close()
	waitFor(t, "connection accounting", func() bool {
		return metrics.Value(e.m.Routed) == 1 && metrics.Value(e.m.Active) == 0 && metrics.Value(e.m.BytesUp) > 0 && metrics.Value(e.m.BytesDown) > 0
	})
	var exp bytes.Buffer
	e.set.WritePrometheus(&exp)
	if !strings.Contains(exp.String(), `pc2_sni_routes_total{result="ok"} 1`) {
		t.Fatalf("exposition lacks the routed counter:\n%s", exp.String())
	}
}

// splitConn turns every Write into 1-byte writes (separate TCP segments
// with Nagle off), or re-records the first write (the ClientHello) into
// small TLS records.
type splitConn struct {
	net.Conn
	oneByte  bool
	fragment int
	wrote    bool
}

func (c *splitConn) Write(p []byte) (int, error) {
	if c.fragment > 0 && !c.wrote {
		c.wrote = true
		if _, err := c.Conn.Write(hellotest.Fragment(p, c.fragment)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if !c.oneByte {
		return c.Conn.Write(p)
	}
	for i := range p {
		if _, err := c.Conn.Write(p[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

func TestSplitHello(t *testing.T) {
	cert, pool := newCert(t)
	e := startProxy(t, sniproxy.Config{}, false)
	tlsBackend(t, e.backend, cert, false, nil)
	for _, tc := range []struct {
		name string
		sc   splitConn
	}{
		{"one-byte-segments", splitConn{oneByte: true}},
		{"records-of-64", splitConn{fragment: 64}},
		{"records-of-7-one-byte-segments", splitConn{fragment: 7, oneByte: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
			raw.(*net.TCPConn).SetNoDelay(true)
			sc := tc.sc
			sc.Conn = raw
			cfg := clientConfig(pool)
			cfg.CurvePreferences = []tls.CurveID{tls.X25519MLKEM768} // ~1.2 KB key share
			c := tls.Client(&sc, cfg)
			if err := c.Handshake(); err != nil {
				t.Fatalf("handshake: %v", err)
			}
			echoOnce(t, c)
		})
	}
}

func TestUnknownNameAlert(t *testing.T) {
	_, pool := newCert(t)
	e := startProxy(t, sniproxy.Config{}, false)
	cfg := clientConfig(pool)
	cfg.ServerName = "bob.ela.test"
	d := &net.Dialer{Timeout: 5 * time.Second, Deadline: time.Now().Add(10 * time.Second)}
	_, err := tls.DialWithDialer(d, "tcp", e.proxyAddr, cfg)
	if err == nil || !strings.Contains(err.Error(), "tls: unrecognized name") {
		t.Fatalf("err = %v, want tls: unrecognized name", err)
	}
	if metrics.Value(e.m.RouteUnknown) != 1 {
		t.Fatalf("RouteUnknown = %v", metrics.Value(e.m.RouteUnknown))
	}

	// The raw alert record echoes the client's record version.
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	hello := hellotest.ChromeLike("bob.ela.test")
	hello[2] = 0x03 // record version 3.3
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read alert: %v", err)
	}
	if want := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70}; !bytes.Equal(got, want) {
		t.Fatalf("alert = % x, want % x", got, want)
	}
}

func TestProxyProtocolHeader(t *testing.T) {
	cert, pool := newCert(t)
	e := startProxy(t, sniproxy.Config{}, true)
	headers := make(chan proxyproto.Header, 1)
	tlsBackend(t, e.backend, cert, true, headers)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.proxyAddr, clientConfig(pool))
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	echoOnce(t, c)
	h := <-headers
	if h.Command != proxyproto.Proxy || h.Authority != testName {
		t.Fatalf("header %+v", h)
	}
	if want := netip.MustParseAddrPort(c.LocalAddr().String()); h.Source != want {
		t.Fatalf("source %v, want client %v", h.Source, want)
	}
	if want := netip.MustParseAddrPort(e.proxyAddr); h.Destination != want {
		t.Fatalf("destination %v, want %v", h.Destination, want)
	}
}

// rawBackend accepts one connection at a time and hands it to the test.
func rawBackend(ln net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	return ch
}

func TestHalfClose(t *testing.T) {
	e := startProxy(t, sniproxy.Config{}, false)
	conns := rawBackend(e.backend)
	hello := hellotest.ChromeLike(testName)
	upload := bytes.Repeat([]byte("u"), 1<<20)
	download := bytes.Repeat([]byte("d"), 3<<20)

	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		_, _ = c.Write(hello)
		_, _ = c.Write(upload)
		_ = c.(*net.TCPConn).CloseWrite()
	}()

	b := <-conns
	defer b.Close()
	_ = b.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(b) // ends only if the client's FIN was passed on
	if err != nil {
		t.Fatalf("backend read: %v", err)
	}
	if !bytes.Equal(got, append(bytes.Clone(hello), upload...)) {
		t.Fatalf("backend got %d bytes, want %d", len(got), len(hello)+len(upload))
	}
	// The backend answers after the client's half-close, then closes.
	if _, err := b.Write(download); err != nil {
		t.Fatalf("backend write after half-close: %v", err)
	}
	b.Close()
	resp, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(resp, download) {
		t.Fatalf("client got %d bytes, err %v", len(resp), err)
	}
	waitFor(t, "byte counters", func() bool {
		return metrics.Value(e.m.BytesUp) == float64(len(hello)+len(upload)) && metrics.Value(e.m.BytesDown) == float64(len(download))
	})
}

func TestSlowlorisHelloTimeout(t *testing.T) {
	e := startProxy(t, sniproxy.Config{HelloTimeout: 200 * time.Millisecond}, false)
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := hellotest.ChromeLike(testName)
	if _, err := c.Write(hello[:40]); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 16))
	if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("read = %d, %v; want the proxy to close", n, err)
	}
	waitFor(t, "timeout counter", func() bool { return metrics.Value(e.m.HelloTimeout) == 1 })
}

func TestOversizeHello(t *testing.T) {
	e := startProxy(t, sniproxy.Config{}, false)
	// A ClientHello that claims 20 KB, sent in full-size records.
	body := make([]byte, 20000)
	msg := append([]byte{1, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	msg[1] = byte(len(body) >> 16)
	var stream []byte
	for rest := msg; len(rest) > 0; {
		n := min(len(rest), 1<<14)
		stream = append(stream, 22, 3, 1, byte(n>>8), byte(n))
		stream = append(stream, rest[:n]...)
		rest = rest[n:]
	}

	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = c.Write(stream) }()
	got, _ := io.ReadAll(c) // may end in a reset: the proxy stops reading
	if want := []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 22}; !bytes.HasPrefix(got, want) {
		t.Fatalf("got % x, want record_overflow alert", got)
	}
	waitFor(t, "too-large counter", func() bool { return metrics.Value(e.m.HelloTooLarge) == 1 })
}

func TestNotTLSClosed(t *testing.T) {
	e := startProxy(t, sniproxy.Config{}, false)
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(c); len(got) != 0 {
		t.Fatalf("proxy answered plain HTTP with %q", got)
	}
	waitFor(t, "not-tls counter", func() bool { return metrics.Value(e.m.HelloNotTLS) == 1 })
}

func TestIdleTimeout(t *testing.T) {
	// 800 ms leaves room for a loaded machine's scheduling delays in the
	// 100 ms trickle below.
	e := startProxy(t, sniproxy.Config{IdleTimeout: 800 * time.Millisecond}, false)
	conns := rawBackend(e.backend)
	hello := hellotest.ChromeLike(testName)

	// A connection that trickles one byte every 100 ms, backend to client
	// only, must survive several idle periods: activity in one direction
	// keeps the whole connection alive.
	active, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer active.Close()
	if _, err := active.Write(hello); err != nil {
		t.Fatal(err)
	}
	b := <-conns
	defer b.Close()
	if _, err := io.ReadFull(b, make([]byte, len(hello))); err != nil {
		t.Fatal(err)
	}
	_ = active.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := range 25 {
		if _, err := b.Write([]byte{'t'}); err != nil {
			t.Fatalf("trickle %d: %v", i, err)
		}
		if _, err := io.ReadFull(active, make([]byte, 1)); err != nil {
			t.Fatalf("trickle %d: client read: %v", i, err)
		}
		time.Sleep(100 * time.Millisecond) // the traffic pattern under test
	}
	if metrics.Value(e.m.IdleClosed) != 0 {
		t.Fatal("an active connection was closed as idle")
	}
	// Now silence: the proxy must close both sides.
	if _, err := active.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read after idle = %v, want EOF", err)
	}
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("backend read after idle = %v, want EOF", err)
	}
	if metrics.Value(e.m.IdleClosed) != 1 {
		t.Fatalf("IdleClosed = %v", metrics.Value(e.m.IdleClosed))
	}
}

func TestPendingPerIPBound(t *testing.T) {
	e := startProxy(t, sniproxy.Config{MaxPendingPerIP: 2, HelloTimeout: 30 * time.Second}, false)
	var held []net.Conn
	for range 2 {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	waitFor(t, "two pending hellos", func() bool { return metrics.Value(e.m.Pending) == 2 })
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ne net.Error
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("third connection: read %d, %v; want closed", n, err)
	}
	if metrics.Value(e.m.RejectedPerIP) != 1 {
		t.Fatalf("RejectedPerIP = %v", metrics.Value(e.m.RejectedPerIP))
	}
	held[0].Close()
	waitFor(t, "slot freed", func() bool { return metrics.Value(e.m.Pending) == 1 })
}

func TestMaxConnsBound(t *testing.T) {
	e := startProxy(t, sniproxy.Config{MaxConns: 1}, false)
	conns := rawBackend(e.backend)
	hello := hellotest.ChromeLike(testName)
	dialSend := func() net.Conn {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := dialSend()
	defer first.Close()
	b1 := <-conns
	defer b1.Close()
	second := dialSend() // queued in the kernel backlog, not accepted
	defer second.Close()
	select {
	case <-conns:
		t.Fatal("second connection reached the backend while the first held the only slot")
	case <-time.After(300 * time.Millisecond):
	}
	first.Close()
	b1.Close()
	select {
	case b2 := <-conns:
		b2.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("second connection never got the freed slot")
	}
}

// nonTCPConn hides the *net.TCPConn (as a tunnel stream would be), so the
// relay takes its generic path.
type nonTCPConn struct{ net.Conn }

func (c nonTCPConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// TestTargetDial: a Target with its own Dial (a node's tunnel) is used
// instead of Config.Dial, receives the visitor's address, and may return
// any net.Conn.
// TestTargetDial checks that a target's own Dial (a tunnel stream) is used
// on both data paths: the event loops hand such a connection to the
// goroutine path, which must not fall back to Config.Dial.
func TestTargetDial(t *testing.T) {
	for _, tc := range []struct {
		name       string
		configDial bool
	}{{"loops", false}, {"goroutines", true}} {
		t.Run(tc.name, func(t *testing.T) { testTargetDial(t, tc.configDial) })
	}
}

func testTargetDial(t *testing.T, configDial bool) {
	cert, pool := newCert(t)
	backend := listen(t)
	tlsBackend(t, backend, cert, false, nil)
	visitors := make(chan net.Addr, 1)
	cfg := sniproxy.Config{
		Router: staticRouter{names: map[string]sniproxy.Target{testName: {
			Addr: "127.0.0.1:9", // must not be dialled: the target has its own Dial
			Dial: func(ctx context.Context, client net.Addr) (net.Conn, error) {
				visitors <- client
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", backend.Addr().String())
				if err != nil {
					return nil, err
				}
				return nonTCPConn{c}, nil
			},
		}}},
	}
	if configDial {
		cfg.Dial = func(context.Context, string) (net.Conn, error) {
			t.Error("Config.Dial used for a target with its own Dial")
			return nil, errors.New("no")
		}
	}
	e := startProxy(t, cfg, false)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.proxyAddr, clientConfig(pool))
	if err != nil {
		t.Fatalf("handshake through proxy: %v", err)
	}
	defer c.Close()
	if !bytes.Equal(c.ConnectionState().PeerCertificates[0].Raw, cert.Leaf.Raw) {
		t.Fatal("client saw a certificate other than the backend's")
	}
	echoOnce(t, c)
	if got := <-visitors; got.String() != c.LocalAddr().String() {
		t.Fatalf("Target.Dial got visitor %v, want %v", got, c.LocalAddr())
	}
}
