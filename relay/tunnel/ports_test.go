package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/gateway/proxyproto"
)

// freePort returns a loopback port free for TCP and UDP now.
func freePort(t testing.TB) uint16 {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		ln.Close()
		if err != nil {
			continue
		}
		u.Close()
		return uint16(p)
	}
	t.Fatal("no free port")
	return 0
}

func portServer(t testing.TB, kp *identity.KeyPair, addr string, pc PortConfig) (*Server, string) {
	t.Helper()
	if pc.Bind == "" {
		pc.Bind = "127.0.0.1"
	}
	srv := NewServer(kp, ServerConfig{Ports: pc, Logger: testLogger(t)})
	a, err := srv.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, a.String()
}

func portClient(t testing.TB, kp *identity.KeyPair, srvKey *identity.KeyPair, addr string, services map[string]Local, ports []PortSpec, clk clock.Clock) *Client {
	t.Helper()
	cli := NewClient(kp, ClientConfig{Supernode: addr, SupernodeID: srvKey.ID(), Services: services, Ports: ports,
		LocalUDP: "127.0.0.1:0", Logger: testLogger(t), Clock: clk, BackoffMin: 10 * time.Millisecond})
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// waitAnswers waits until the client has n answers (grants + refusals).
func waitAnswers(t testing.TB, cli *Client, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		ch := cli.PortsChanged()
		if len(cli.Grants())+len(cli.Refusals()) >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %d port answers: grants %v, refusals %v", n, cli.Grants(), cli.Refusals())
		}
	}
}

func grantOf(t testing.TB, cli *Client, service string, proto Proto) Grant {
	t.Helper()
	for _, g := range cli.Grants() {
		if g.Service == service && g.Proto == proto {
			return g
		}
	}
	t.Fatalf("no grant for %s/%s: grants %v, refusals %v", service, proto, cli.Grants(), cli.Refusals())
	return Grant{}
}

// proxyEcho accepts connections that start with a PROXY v2 header, writes
// back the header's source address and a newline, then echoes.
func proxyEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				h, err := proxyproto.Read(c, 512)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s\n", h.Source)
				io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

// TestMappedTCP: a visitor's TCP connection to the mapped port reaches
// the node's local service through the tunnel, with the visitor's
// address in a PROXY v2 header, and 1 MB echoes intact.
func TestMappedTCP(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	lo := freePort(t)
	srv, addr := portServer(t, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 20})
	cli := portClient(t, cliKey, srvKey, addr, map[string]Local{"ssh": {Addr: proxyEcho(t), ProxyProtocol: true}},
		[]PortSpec{{Service: "ssh", Proto: ProtoTCP}}, nil)
	waitAnswers(t, cli, 1)
	g := grantOf(t, cli, "ssh", ProtoTCP)
	if g.Port < lo || g.Port > lo+20 || g.Endpoint != fmt.Sprintf("127.0.0.1:%d", g.Port) {
		t.Fatalf("grant %+v outside %d-%d", g, lo, lo+20)
	}
	if ls := srv.Leases(); len(ls) != 1 || ls[0].Port != g.Port || ls[0].Node != cliKey.ID() || !ls[0].Expires.IsZero() {
		t.Fatalf("leases %+v", ls)
	}
	c, err := net.Dial("tcp", g.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := bytes.Repeat([]byte("mapped "), 150_000)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := c.LocalAddr().String() + "\n"
	if !bytes.HasPrefix(got, []byte(want)) {
		t.Fatalf("PROXY source line %q, want %q", got[:min(len(got), 40)], want)
	}
	if !bytes.Equal(got[len(want):], msg) {
		t.Fatalf("echo returned %d bytes, want %d identical", len(got)-len(want), len(msg))
	}
}

// udpEcho echoes every datagram.
func udpEcho(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

// udpRoundTrip sends msg from c until the echo arrives (UDP may drop).
func udpRoundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	buf := make([]byte, 2048)
	for range 50 {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == msg {
			return
		}
	}
	t.Fatalf("no echo of %q through the mapped UDP port", msg)
}

// TestMappedUDP: datagrams to the mapped UDP port reach the node's local
// UDP service as QUIC datagrams and the replies come back to each
// visitor; idle flows end on both sides when the clock passes UDPIdle.
func TestMappedUDP(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	lo := freePort(t)
	srv, addr := portServer(t, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 20, Clock: clk, UDPIdle: time.Minute, UDPFlows: 2})
	cli := portClient(t, cliKey, srvKey, addr, map[string]Local{"dns": {Addr: udpEcho(t)}},
		[]PortSpec{{Service: "dns", Proto: ProtoUDP}}, clk)
	waitAnswers(t, cli, 1)
	g := grantOf(t, cli, "dns", ProtoUDP)
	var visitors []net.Conn
	for i := range 3 {
		c, err := net.Dial("udp", g.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		visitors = append(visitors, c)
		if i < 2 {
			udpRoundTrip(t, c, fmt.Sprintf("hello from visitor %d", i))
		}
	}
	// The port's flow cap is 2: a third visitor gets nothing.
	visitors[2].Write([]byte("third"))
	visitors[2].SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := visitors[2].Read(make([]byte, 64)); err == nil {
		t.Fatal("a visitor beyond the port's flow cap got an answer")
	}
	srv.ports.mu.Lock()
	u := srv.ports.byPort[ProtoUDP][g.Port].udp
	srv.ports.mu.Unlock()
	if u.Flows() != 2 || cli.Flows() != 2 {
		t.Fatalf("flows: supernode %d, node %d; want 2 each", u.Flows(), cli.Flows())
	}
	clk.Advance(time.Minute + time.Second)
	waitFor(t, "idle flows to end", 5*time.Second, func() bool {
		clk.Advance(time.Second) // the sweepers rearm on their own timers
		return u.Flows() == 0 && cli.Flows() == 0
	})
	// The cap is free again: the third visitor is served now.
	udpRoundTrip(t, visitors[2], "third, after the idle ones left")
}

// TestPortHeldAcrossReconnect: a node that reconnects within the hold
// gets the same port back; once the hold passes without it, the port is
// released.
func TestPortHeldAcrossReconnect(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	lo := freePort(t)
	srv, addr := portServer(t, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 50, Clock: clk, Hold: 5 * time.Minute})
	services := map[string]Local{"ssh": {Addr: echoServer(t)}}
	ports := []PortSpec{{Service: "ssh", Proto: ProtoTCP}}
	held := func() bool {
		ls := srv.Leases()
		return len(ls) == 1 && !ls[0].Expires.IsZero()
	}

	cli := portClient(t, cliKey, srvKey, addr, services, ports, clk)
	waitAnswers(t, cli, 1)
	first := grantOf(t, cli, "ssh", ProtoTCP)
	cli.Close()
	waitFor(t, "the lease to be held", 10*time.Second, held)
	if got := srv.Leases()[0].Expires; !got.Equal(clk.Now().Add(5 * time.Minute)) {
		t.Fatalf("held until %v, want now+5m", got)
	}
	// While held, visitors are closed at once, not left hanging.
	c, err := net.Dial("tcp", first.Endpoint)
	if err != nil {
		t.Fatalf("held port not listening: %v", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("visitor of a held port: read err %v, want a close", err)
	}
	c.Close()

	clk.Advance(4 * time.Minute)
	cli = portClient(t, cliKey, srvKey, addr, services, ports, clk)
	waitAnswers(t, cli, 1)
	if again := grantOf(t, cli, "ssh", ProtoTCP); again.Port != first.Port {
		t.Fatalf("reconnected node got port %d, had %d", again.Port, first.Port)
	}
	if held() {
		t.Fatal("lease still held after the node came back")
	}
	c, err = net.Dial("tcp", first.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("back")); string(got) != "back" {
		t.Fatalf("echo %q", got)
	}

	cli.Close()
	waitFor(t, "the lease to be held again", 10*time.Second, held)
	clk.Advance(5*time.Minute - time.Second)
	if len(srv.Leases()) != 1 {
		t.Fatal("lease released before the hold passed")
	}
	clk.Advance(time.Second)
	waitFor(t, "the lease to be released", 5*time.Second, func() bool { return len(srv.Leases()) == 0 })
	waitFor(t, "the port to close", 5*time.Second, func() bool {
		c, err := net.Dial("tcp", first.Endpoint)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// TestPortLeaseSurvivesRestart: leases are stored; a supernode restarted
// within the hold gives the node its port back, and one started after the
// hold passed has forgotten it.
func TestPortLeaseSurvivesRestart(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	dbPath := filepath.Join(t.TempDir(), "db")
	open := func() (*store.DB, LeaseStore) {
		db, err := store.Open(dbPath, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return db, NewStoreLeases(db.Namespace("tunnel"))
	}
	lo := freePort(t)
	pc := PortConfig{Min: lo, Max: lo + 50, Clock: clk, Hold: 5 * time.Minute}
	services := map[string]Local{"ssh": {Addr: echoServer(t)}}
	ports := []PortSpec{{Service: "ssh", Proto: ProtoTCP}}

	db, leases := open()
	pc.Leases = leases
	srv, addr := portServer(t, srvKey, "127.0.0.1:0", pc)
	cli := portClient(t, cliKey, srvKey, addr, services, ports, clk)
	waitAnswers(t, cli, 1)
	first := grantOf(t, cli, "ssh", ProtoTCP)
	cli.Close()
	srv.Close()
	db.Close()

	clk.Advance(4 * time.Minute)
	db, leases = open()
	pc.Leases = leases
	srv, addr = portServer(t, srvKey, "127.0.0.1:0", pc)
	if ls := srv.Leases(); len(ls) != 1 || ls[0].Port != first.Port {
		t.Fatalf("restarted supernode's leases: %+v", ls)
	}
	cli = portClient(t, cliKey, srvKey, addr, services, ports, clk)
	waitAnswers(t, cli, 1)
	if again := grantOf(t, cli, "ssh", ProtoTCP); again.Port != first.Port {
		t.Fatalf("after a supernode restart the node got port %d, had %d", again.Port, first.Port)
	}
	c, err := net.Dial("tcp", first.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("restarted")); string(got) != "restarted" {
		t.Fatalf("echo %q", got)
	}
	cli.Close()
	srv.Close()
	db.Close()

	clk.Advance(6 * time.Minute)
	db, leases = open()
	defer db.Close()
	pc.Leases = leases
	srv, _ = portServer(t, srvKey, "127.0.0.1:0", pc)
	if ls := srv.Leases(); len(ls) != 0 {
		t.Fatalf("a lease past its hold survived the restart: %+v", ls)
	}
	if stored, _ := leases.Load(); len(stored) != 0 {
		t.Fatalf("a lease past its hold is still stored: %+v", stored)
	}
}

// TestPortQuota: a node asking for more ports than perNode gets the rest
// refused with code quota.
func TestPortQuota(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	lo := freePort(t)
	srv, addr := portServer(t, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 20, PerNode: 1})
	cli := portClient(t, cliKey, srvKey, addr, map[string]Local{"ssh": {Addr: echoServer(t)}, "dns": {Addr: udpEcho(t)}},
		[]PortSpec{{Service: "ssh", Proto: ProtoTCP}, {Service: "dns", Proto: ProtoUDP}}, nil)
	waitAnswers(t, cli, 2)
	grantOf(t, cli, "ssh", ProtoTCP)
	r := cli.Refusals()
	if len(r) != 1 || r[0].Service != "dns" || r[0].Code != RefuseQuota {
		t.Fatalf("refusals %+v, want dns refused for quota", r)
	}
	if len(srv.Leases()) != 1 || srv.ports.Refused.Load() != 1 {
		t.Fatalf("leases %+v, refused %d", srv.Leases(), srv.ports.Refused.Load())
	}
}

// TestPortRangeExhausted: with every port of the range leased, the next
// request is refused with code exhausted.
func TestPortRangeExhausted(t *testing.T) {
	srvKey := newKey(t)
	lo := freePort(t)
	_, addr := portServer(t, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo})
	services := map[string]Local{"ssh": {Addr: echoServer(t)}}
	ports := []PortSpec{{Service: "ssh", Proto: ProtoTCP}}
	a := portClient(t, newKey(t), srvKey, addr, services, ports, nil)
	waitAnswers(t, a, 1)
	if g := grantOf(t, a, "ssh", ProtoTCP); g.Port != lo {
		t.Fatalf("port %d, want %d", g.Port, lo)
	}
	b := portClient(t, newKey(t), srvKey, addr, services, ports, nil)
	waitAnswers(t, b, 1)
	if r := b.Refusals(); len(r) != 1 || r[0].Code != RefuseExhausted || len(b.Grants()) != 0 {
		t.Fatalf("second node: grants %+v refusals %+v, want exhausted", b.Grants(), r)
	}
}

// TestHeldPortTakenMeanwhile: when a reloaded lease's port was taken by
// another process during the restart, the node gets another port rather
// than a refusal.
func TestHeldPortTakenMeanwhile(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	db, err := store.Open(filepath.Join(t.TempDir(), "db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lo := freePort(t)
	pc := PortConfig{Min: lo, Max: lo + 50, Leases: NewStoreLeases(db.Namespace("tunnel"))}
	services := map[string]Local{"ssh": {Addr: echoServer(t)}}
	ports := []PortSpec{{Service: "ssh", Proto: ProtoTCP}}
	srv, addr := portServer(t, srvKey, "127.0.0.1:0", pc)
	cli := portClient(t, cliKey, srvKey, addr, services, ports, nil)
	waitAnswers(t, cli, 1)
	first := grantOf(t, cli, "ssh", ProtoTCP)
	cli.Close()
	srv.Close()

	squatter, err := net.Listen("tcp", first.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	_, addr = portServer(t, srvKey, "127.0.0.1:0", pc)
	cli = portClient(t, cliKey, srvKey, addr, services, ports, nil)
	waitAnswers(t, cli, 1)
	again := grantOf(t, cli, "ssh", ProtoTCP)
	if again.Port == first.Port {
		t.Fatal("granted a port another process listens on")
	}
	c, err := net.Dial("tcp", again.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("moved")); string(got) != "moved" {
		t.Fatalf("echo %q", got)
	}
	stored, _ := pc.Leases.Load()
	if len(stored) != 1 || stored[0].Port != again.Port {
		t.Fatalf("stored leases %+v, want only port %d", stored, again.Port)
	}
}

// TestMappedTCPPerSourceLimit: a source holding tcpConnsPerSource
// visitors of a port gets its next connection closed at once; when one
// ends, a new one is served.
func TestMappedTCPPerSourceLimit(t *testing.T) {
	srvKey, cliKey := newKey(t), newKey(t)
	lo := freePort(t)
	_, addr := portServer(t, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 20, TCPConnsPerSource: 2})
	cli := portClient(t, cliKey, srvKey, addr, map[string]Local{"ssh": {Addr: echoServer(t)}}, []PortSpec{{Service: "ssh", Proto: ProtoTCP}}, nil)
	waitAnswers(t, cli, 1)
	ep := grantOf(t, cli, "ssh", ProtoTCP).Endpoint
	open := func() (net.Conn, error) {
		c, err := net.Dial("tcp", ep)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1)
		if _, err := c.Write([]byte("x")); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	var held []net.Conn
	for range 2 {
		c, err := open()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	if c, err := open(); err == nil {
		c.Close()
		t.Fatal("a third connection from one source was served")
	}
	held[0].Close()
	waitFor(t, "a slot to free up", 5*time.Second, func() bool {
		c, err := open()
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}
