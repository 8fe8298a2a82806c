package stun_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/transport/quicid"
	"github.com/elacity/pc2/transport/stun"
	"github.com/elacity/pc2/transport/udpmux"
	pstun "github.com/pion/stun/v3"
)

var fast = stun.Timing{RTO: 100 * time.Millisecond, Tries: 3}

// freePorts returns n UDP ports free on all the given loopback addresses
// (probed by binding; a race with another process only fails the listen).
func freePorts(t testing.TB, n int, addrs ...netip.Addr) []uint16 {
	t.Helper()
	var out []uint16
	for len(out) < n {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
		c.Close()
		ok := true
		for _, a := range addrs {
			c2, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
			if err != nil {
				ok = false
				break
			}
			c2.Close()
		}
		if ok {
			out = append(out, port)
		}
	}
	return out
}

var lo1, lo2 = netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")

// fullServer listens on 127.0.0.1 and 127.0.0.2, two ports each.
func fullServer(t testing.TB, strict bool) *stun.Server {
	t.Helper()
	ports := freePorts(t, 2, lo1, lo2)
	s, err := stun.ListenServer(stun.ServerConfig{Listen: netip.AddrPortFrom(lo1, ports[0]), OtherPort: ports[1],
		OtherAddr: lo2, Strict: strict, Rate: 1000, Burst: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func listenClient(t testing.TB) *stun.Conn {
	t.Helper()
	c, err := stun.Listen("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Timing = fast
	t.Cleanup(func() { c.Close() })
	return c
}

func TestBindingAndRFC5780Attributes(t *testing.T) {
	s := fullServer(t, false)
	addrs := s.Addrs()
	if len(addrs) != 4 {
		t.Fatalf("server addrs %v, want 4", addrs)
	}
	c := listenClient(t)
	ctx := context.Background()
	a, err := c.Binding(ctx, addrs[0], 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.Mapped != c.LocalAddr() || a.Origin != addrs[0] || a.Other != addrs[3] || a.From != addrs[0] {
		t.Fatalf("answer %+v; want mapped %s origin %s other %s", a, c.LocalAddr(), addrs[0], addrs[3])
	}
	for change, from := range map[stun.Change]netip.AddrPort{
		stun.ChangePort: addrs[1], stun.ChangeIP: addrs[2], stun.ChangeIP | stun.ChangePort: addrs[3],
	} {
		a, err := c.Binding(ctx, addrs[0], change)
		if err != nil {
			t.Fatalf("change %#x: %v", change, err)
		}
		if a.From != from || a.Origin != from || a.Mapped != c.LocalAddr() {
			t.Errorf("change %#x: answer from %s origin %s, want %s", change, a.From, a.Origin, from)
		}
	}
}

func TestClassifyLoopback(t *testing.T) {
	s := fullServer(t, false)
	c, f := listenClient(t), listenClient(t)
	res, err := stun.Classify(context.Background(), c, f, s.Addrs()[0], c.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	// No NAT on loopback: nothing filters.
	if res.Mapping != stun.NoNAT || res.Filtering != stun.EIF || res.Mapped != c.LocalAddr() || len(res.Notes) != 0 {
		t.Fatalf("classify: %v", res)
	}
}

func TestClassifyOneAddressServer(t *testing.T) {
	ports := freePorts(t, 2, lo1)
	s, err := stun.ListenServer(stun.ServerConfig{Listen: netip.AddrPortFrom(lo1, ports[0]), OtherPort: ports[1]})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, f := listenClient(t), listenClient(t)
	// The change-IP flag cannot be honoured: error 420, not a lie.
	a, err := c.Binding(context.Background(), s.Addrs()[0], stun.ChangeIP)
	if err != nil || a.ErrorCode != 420 {
		t.Fatalf("change IP on a one-address server: %+v %v, want error 420", a, err)
	}
	// Pretend a NAT: the mapped address is not local, so the port test runs.
	res, err := stun.Classify(context.Background(), c, f, s.Addrs()[0], netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mapping != stun.NotPortDependent || res.Filtering != stun.NotPortFiltered ||
		res.Other != netip.AddrPortFrom(lo1, ports[1]) || !strings.Contains(strings.Join(res.Notes, ";"), "one address") {
		t.Fatalf("classify: %v other %s", res, res.Other)
	}
}

func TestClassifyPlainServer(t *testing.T) {
	s, err := stun.ListenServer(stun.ServerConfig{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := listenClient(t)
	res, err := stun.Classify(context.Background(), c, listenClient(t), s.Addrs()[0], c.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	if res.Mapping != stun.NoNAT || res.Filtering != stun.FilteringUnknown || res.Other.IsValid() || len(res.Notes) != 1 {
		t.Fatalf("classify against a plain server: %v", res)
	}
}

// TestFilteredAnswerTimesOut: a change test whose answer never comes is
// reported as filtered, not as an error (a firewall stands in for a NAT:
// the client's socket drops datagrams from the other address).
func TestFilteredAnswerTimesOut(t *testing.T) {
	s := fullServer(t, false)
	addrs := s.Addrs()
	// A client that ignores everything not from the primary address.
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	cl := stun.NewClient(sender{uc})
	cl.Timing = fast
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if from == addrs[0] {
				cl.Deliver(buf[:n], from)
			}
		}
	}()
	c := listenClient(t)
	res, err := stun.Classify(context.Background(), c, cl, addrs[0], c.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	if res.Filtering != stun.APDF {
		t.Fatalf("filtering %s, want APDF", res.Filtering)
	}
}

type sender struct{ c *net.UDPConn }

func (s sender) WriteTo(b []byte, to netip.AddrPort) error {
	_, err := s.c.WriteToUDPAddrPort(b, to)
	return err
}

// TestAmplification sends requests of every size class and checks the
// answer's size against the package rule.
func TestAmplification(t *testing.T) {
	for _, strict := range []bool{false, true} {
		s := fullServer(t, strict)
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		for _, pad := range []int{0, 28, 40, 64, 100, stun.PaddedRequest} {
			req, err := stun.NewRequest(pstun.NewTransactionID(), 0, pad)
			if err != nil {
				t.Fatal(err)
			}
			if pad == 0 { // a bare 20-byte header, as the simplest clients send
				req = req[:20]
				req[2], req[3] = 0, 0
			}
			minimal := 32 // header + XOR-MAPPED-ADDRESS (IPv4)
			if pad != 0 {
				minimal += 8 // the request had a FINGERPRINT: so does the answer
			}
			refused := strict && len(req) < minimal
			// An answer that must come gets time on a loaded machine; an
			// absence can only be bounded.
			wait := 5 * time.Second
			if refused {
				wait = 300 * time.Millisecond
			}
			uc.WriteToUDPAddrPort(req, s.Addrs()[0])
			uc.SetReadDeadline(time.Now().Add(wait))
			buf := make([]byte, 1500)
			n, _, err := uc.ReadFromUDPAddrPort(buf)
			switch {
			case err != nil && refused:
				continue // refused: would amplify
			case err != nil:
				t.Fatalf("strict=%v: no answer to a %d-byte request: %v", strict, len(req), err)
			}
			if n > len(req) && (strict || n > minimal) {
				t.Errorf("strict=%v: %d-byte answer to a %d-byte request", strict, n, len(req))
			}
			r, err := stun.ParseResponse(buf[:n])
			if err != nil {
				t.Fatal(err)
			}
			if full := len(req) >= 64; r.Other.IsValid() != full {
				t.Errorf("%d-byte request: OTHER-ADDRESS present %v", len(req), r.Other.IsValid())
			}
		}
	}
}

func TestRateLimitPerSource(t *testing.T) {
	s, err := stun.ListenServer(stun.ServerConfig{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Rate: 1, Burst: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req, _ := stun.NewRequest(pstun.NewTransactionID(), 0, 0)
	now := time.Now()
	answered := 0
	for range 20 {
		if out, _ := s.Answer(req, netip.MustParseAddrPort("192.0.2.1:1000"), 0, 0, nil, now); out != nil {
			answered++
		}
	}
	if answered != 5 || s.Stats().Limited != 15 {
		t.Fatalf("answered %d, stats %+v; want 5 answered, 15 limited", answered, s.Stats())
	}
	if out, _ := s.Answer(req, netip.MustParseAddrPort("192.0.2.2:1000"), 0, 0, nil, now); out == nil {
		t.Fatal("another source was limited too")
	}
}

// TestBindingOnMuxDuringQUIC is the point: the node's QUIC
// connection and its STUN transactions share one socket, and the mapped
// address STUN reports is that socket's.
func TestBindingOnMuxDuringQUIC(t *testing.T) {
	s := fullServer(t, false)
	a, err := udpmux.Listen("udp4", "127.0.0.1:0", udpmux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := udpmux.Listen("udp4", "127.0.0.1:0", udpmux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cl := stun.NewClient(b)
	cl.Timing = fast
	b.Handle(stun.IsResponse, cl.Deliver)

	kpA, _ := identity.Generate(rand.Reader)
	kpB, _ := identity.Generate(rand.Reader)
	srvTLS, _ := quicid.ServerConfig(kpA, "t", func(identity.ID) error { return nil })
	cliTLS, _ := quicid.ClientConfig(kpB, "t", kpA.ID())
	ln, err := a.Transport().Listen(srvTLS, quicid.Config(10, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		st, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(st, st)
		st.Close()
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	var qerr error
	go func() {
		defer wg.Done()
		qerr = func() error {
			c, err := b.Dial(ctx, a.LocalAddr(), cliTLS, quicid.Config(10, 10*time.Second))
			if err != nil {
				return err
			}
			defer c.CloseWithError(0, "")
			st, err := c.OpenStreamSync(ctx)
			if err != nil {
				return err
			}
			want := bytes.Repeat([]byte("quic "), 200_000)
			go func() { st.Write(want); st.Close() }()
			got, err := io.ReadAll(st)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, want) {
				return errors.New("stream data differs")
			}
			return nil
		}()
	}()
	for i := range 20 {
		ans, err := cl.Binding(ctx, s.Addrs()[0], stun.Change(i%2)*stun.ChangePort)
		if err != nil {
			t.Fatalf("binding %d: %v", i, err)
		}
		if ans.Mapped != b.LocalAddr() {
			t.Fatalf("mapped %s, want the mux's %s", ans.Mapped, b.LocalAddr())
		}
	}
	wg.Wait()
	if qerr != nil {
		t.Fatalf("quic: %v", qerr)
	}
}

func BenchmarkServerAnswer(b *testing.B) {
	s, err := stun.ListenServer(stun.ServerConfig{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Rate: 1e12, Burst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	req, _ := stun.NewRequest(pstun.NewTransactionID(), 0, stun.PaddedRequest)
	from := netip.MustParseAddrPort("192.0.2.1:1000")
	buf := make([]byte, 0, 256)
	now := time.Now()
	b.ReportAllocs()
	for range b.N {
		if out, _ := s.Answer(req, from, 0, 0, buf[:0], now); out == nil {
			b.Fatal("no answer")
		}
	}
}

func BenchmarkParseResponse(b *testing.B) {
	req, _ := stun.NewRequest(pstun.NewTransactionID(), 0, stun.PaddedRequest)
	r, _ := stun.ParseRequest(req)
	resp, _ := stun.AppendAnswer(nil, r, stun.AnswerInfo{Observed: netip.MustParseAddrPort("203.0.113.5:4000"),
		Origin: netip.MustParseAddrPort("198.51.100.10:3478"), Other: netip.MustParseAddrPort("198.51.100.11:3479")})
	b.ReportAllocs()
	for range b.N {
		if _, err := stun.ParseResponse(resp); err != nil {
			b.Fatal(err)
		}
	}
}
