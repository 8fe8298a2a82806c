package sniproxy_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/proxyproto"
	"github.com/elacity/pc2/gateway/sniproxy"
)

func init() {
	behaviourTests["SlowPeersExactStream"] = TestSlowPeersExactStream
}

// pattern is n pseudo-random bytes: a lost, repeated or reordered chunk
// shows in a comparison, which runs of one byte would hide.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// slowRead reads want's length from c in small pieces, pausing between
// them (the slow peer under test), and compares.
func slowRead(c net.Conn, want []byte) ([]byte, error) {
	got := make([]byte, 0, len(want))
	buf := make([]byte, 3000)
	for len(got) < len(want) {
		n, err := c.Read(buf[:min(len(buf), len(want)-len(got))])
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
		if len(got)%(256<<10) < n {
			time.Sleep(2 * time.Millisecond) // the slow peer under test
		}
	}
	return got, nil
}

// TestSlowPeersExactStream checks the byte stream end to end with a slow
// backend behind a small receive window and a slow client: a maximal
// hello with early data in the same read, replayed after a PROXY header
// (which the small window makes the proxy write in several goes), then
// megabytes each way, half-closed, must arrive exactly, once, in order.
func TestSlowPeersExactStream(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		if err != nil {
			return err
		}
		return serr
	}}
	backend, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	e := startProxy(t, sniproxy.Config{Router: staticRouter{names: map[string]sniproxy.Target{
		testName: {Addr: backend.Addr().String(), ProxyProtocol: true},
	}}}, false)

	hello := hellotest.ChromeLike(testName)
	first := append(bytes.Clone(hello), pattern(1, 16<<10-len(hello))...) // the proxy's whole hello buffer
	upload := pattern(2, 3<<20)
	download := pattern(3, 5<<20)

	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	upErr := make(chan error, 1)
	go func() {
		if _, err := c.Write(first); err != nil {
			upErr <- err
			return
		}
		if _, err := c.Write(upload); err != nil {
			upErr <- err
			return
		}
		upErr <- c.(*net.TCPConn).CloseWrite()
	}()

	var b net.Conn
	select {
	case b = <-acceptOne(backend):
	case <-time.After(10 * time.Second):
		t.Fatal("no backend connection")
	}
	defer b.Close()
	_ = b.SetDeadline(time.Now().Add(60 * time.Second))
	h, err := proxyproto.Read(b, 0)
	if err != nil {
		t.Fatalf("backend: proxy header: %v", err)
	}
	if h.Authority != testName {
		t.Fatalf("authority %q", h.Authority)
	}
	downErr := make(chan error, 1)
	go func() {
		if _, err := b.Write(download); err != nil {
			downErr <- err
			return
		}
		downErr <- b.(*net.TCPConn).CloseWrite()
	}()
	want := append(bytes.Clone(first), upload...)
	got, err := slowRead(b, want)
	if err != nil {
		t.Fatalf("backend read after %d bytes: %v", len(got), err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("backend stream differs at byte %d of %d", i, len(want))
	}
	if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("backend: after the stream read %d, %v; want the client's half-close", n, err)
	}
	gotDown, err := slowRead(c, download)
	if err != nil {
		t.Fatalf("client read after %d bytes: %v", len(gotDown), err)
	}
	if i := firstDiff(gotDown, download); i >= 0 {
		t.Fatalf("client stream differs at byte %d of %d", i, len(download))
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client: after the stream read %d, %v; want the backend's half-close", n, err)
	}
	if err := <-upErr; err != nil {
		t.Fatal(err)
	}
	if err := <-downErr; err != nil {
		t.Fatal(err)
	}
}

func acceptOne(ln net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			ch <- c
		}
	}()
	return ch
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
