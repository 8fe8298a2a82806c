package punch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// pipeSignal is an in-memory signalling channel that moves the encoded bytes
// (exercising the codec), optionally delayed by a one-way latency.
type pipeSignal struct {
	out, in chan []byte
	delay   time.Duration
}

func signalPair(delay time.Duration) (*pipeSignal, *pipeSignal) {
	a, b := make(chan []byte, 8), make(chan []byte, 8)
	return &pipeSignal{out: a, in: b, delay: delay}, &pipeSignal{out: b, in: a, delay: delay}
}

func (p *pipeSignal) Send(ctx context.Context, m SignalMsg) error {
	b, err := MarshalSignal(m)
	if err != nil {
		return err
	}
	if p.delay > 0 {
		time.AfterFunc(p.delay, func() { p.out <- b })
		return nil
	}
	p.out <- b
	return nil
}

func (p *pipeSignal) Recv(ctx context.Context) (SignalMsg, error) {
	select {
	case b := <-p.in:
		return UnmarshalSignal(b)
	case <-ctx.Done():
		return SignalMsg{}, ctx.Err()
	}
}

// lossyConn drops a seeded random share of the datagrams it writes.
type lossyConn struct {
	*net.UDPConn
	mu      sync.Mutex
	rng     *rand.Rand
	p       float64
	first   int // the first writes are all dropped (deterministic)
	writes  int
	dropped int
}

func (c *lossyConn) WriteTo(b []byte, to net.Addr) (int, error) {
	c.mu.Lock()
	c.writes++
	drop := c.writes <= c.first || c.rng.Float64() < c.p
	if drop {
		c.dropped++
	}
	c.mu.Unlock()
	if drop {
		return len(b), nil
	}
	return c.UDPConn.WriteTo(b, to)
}

// filterConn emulates address-and-port-dependent filtering: it delivers
// only datagrams from endpoints it has sent to (a port-restricted NAT).
type filterConn struct {
	PacketConn
	mu   sync.Mutex
	sent map[netip.AddrPort]bool
}

func newFilterConn(c PacketConn) *filterConn {
	return &filterConn{PacketConn: c, sent: map[netip.AddrPort]bool{}}
}

func (c *filterConn) WriteTo(b []byte, to net.Addr) (int, error) {
	c.mu.Lock()
	c.sent[to.(*net.UDPAddr).AddrPort()] = true
	c.mu.Unlock()
	return c.PacketConn.WriteTo(b, to)
}

func (c *filterConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, from, err := c.PacketConn.ReadFrom(b)
		if err != nil {
			return n, from, err
		}
		c.mu.Lock()
		ok := c.sent[from.(*net.UDPAddr).AddrPort()]
		c.mu.Unlock()
		if ok {
			return n, from, nil
		}
	}
}

func listenUDP(t testing.TB, ip string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c PacketConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

type side struct {
	conn  PacketConn
	offer Offer
	cfg   Config
	res   Result
	err   error
	plan  Plan
}

// runPair negotiates over an in-memory signal and punches both sides.
func runPair(t *testing.T, a, b *side, latency time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sa, sb := signalPair(latency)
	if a.offer.Token == ([TokenSize]byte{}) {
		a.offer.Attempt, a.offer.Token = NewOffer().Attempt, NewOffer().Token
	}
	var wg sync.WaitGroup
	for _, x := range []struct {
		s    *side
		sig  Signal
		role Role
	}{{a, sa, Initiator}, {b, sb, Responder}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			plan, err := Negotiate(ctx, x.sig, x.role, x.s.offer)
			if err != nil {
				x.s.err = err
				return
			}
			x.s.plan = plan
			x.s.res, x.s.err = PunchUDP(ctx, x.s.conn, plan, x.s.cfg)
		}()
	}
	wg.Wait()
}

func TestPunchUDPLoopback(t *testing.T) {
	ca, cb := listenUDP(t, "127.0.0.1"), listenUDP(t, "127.0.0.1")
	a := &side{conn: ca, offer: Offer{UDP: []netip.AddrPort{addrOf(ca)}}}
	b := &side{conn: cb, offer: Offer{UDP: []netip.AddrPort{addrOf(cb)}}}
	runPair(t, a, b, 5*time.Millisecond)
	for _, s := range []*side{a, b} {
		if s.err != nil || !s.res.OK || s.res.Path != PathDirect {
			t.Fatalf("%v: %v, %v", s.plan.Role, s.res, s.err)
		}
		if s.res.FirstDirect <= 0 || s.res.Confirmed < s.res.FirstDirect {
			t.Errorf("%v: timings %v %v", s.plan.Role, s.res.FirstDirect, s.res.Confirmed)
		}
		if s.res.Conn != s.conn {
			t.Errorf("%v: path not on the main socket", s.plan.Role)
		}
	}
	if a.res.Remote != addrOf(cb) || b.res.Remote != addrOf(ca) {
		t.Errorf("remotes %v %v", a.res.Remote, b.res.Remote)
	}
	// 10 ms signalling RTT: the initiator measured it and told the responder.
	if a.plan.RTT < 10*time.Millisecond || b.plan.RTT != a.plan.RTT.Truncate(time.Microsecond) {
		t.Errorf("rtt initiator %v responder %v", a.plan.RTT, b.plan.RTT)
	}
	// The main socket is usable afterwards (deadline cleared).
	if _, err := ca.WriteToUDPAddrPort([]byte("x"), addrOf(cb)); err != nil {
		t.Fatal(err)
	}
	_ = cb.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	for {
		n, _, err := cb.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("socket unusable after the attempt: %v", err)
		}
		if n == 1 {
			break
		}
	}
}

// TestPunchUDPLoss: the first 3 datagrams of each side and 30% of the rest
// are lost (seeded), and both sides still confirm the path, several seeds in
// a row.
func TestPunchUDPLoss(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			la := &lossyConn{UDPConn: listenUDP(t, "127.0.0.1"), rng: rand.New(rand.NewPCG(seed, 1)), p: 0.3, first: 3}
			lb := &lossyConn{UDPConn: listenUDP(t, "127.0.0.1"), rng: rand.New(rand.NewPCG(seed, 2)), p: 0.3, first: 3}
			a := &side{conn: la, offer: Offer{UDP: []netip.AddrPort{addrOf(la)}}}
			b := &side{conn: lb, offer: Offer{UDP: []netip.AddrPort{addrOf(lb)}}}
			runPair(t, a, b, time.Millisecond)
			if !a.res.OK || !b.res.OK {
				t.Fatalf("%v / %v", a.res, b.res)
			}
			la.mu.Lock()
			lb.mu.Lock()
			defer la.mu.Unlock()
			defer lb.mu.Unlock()
			if la.dropped < 3 || lb.dropped < 3 {
				t.Fatalf("dropped %d and %d", la.dropped, lb.dropped)
			}
			t.Logf("dropped %d/%d and %d/%d; %v", la.dropped, la.writes, lb.dropped, lb.writes, a.res)
		})
	}
}

// TestPunchUDPIgnoresForeign floods both sides with packets of another
// attempt, with a wrong tag, with their own role and with garbage from a
// third socket; the attempt still finds the real peer and never the flooder.
func TestPunchUDPIgnoresForeign(t *testing.T) {
	ca, cb := listenUDP(t, "127.0.0.1"), listenUDP(t, "127.0.0.1")
	evil := listenUDP(t, "127.0.0.1")
	a := &side{conn: ca, offer: Offer{UDP: []netip.AddrPort{addrOf(ca)}}}
	b := &side{conn: cb, offer: Offer{UDP: []netip.AddrPort{addrOf(cb)}}}
	o := NewOffer()
	a.offer.Attempt, a.offer.Token = o.Attempt, o.Token
	// The flood starts before the attempt and the sides do not reply to it.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		other := NewKey([8]byte{9}, [TokenSize]byte{9})
		for i := uint32(0); ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			pkts := [][]byte{
				other.Append(nil, Packet{Type: TypePunch, Seq: i}),
				other.Append(nil, Packet{Type: TypeAck, Flags: FlagInitiator, Seq: i}),
				bytes.Repeat([]byte{0x3a}, PacketSize),
				{0x3b, 1, 2, 3},
			}
			// Right attempt id, wrong token; and valid packets of the
			// initiator's own role (a reflection of A's own punches).
			wrong := NewKey(o.Attempt, [TokenSize]byte{1})
			pkts = append(pkts, wrong.Append(nil, Packet{Type: TypeAck, Seq: 1}),
				wrong.Append(nil, Packet{Type: TypePunch, Flags: FlagInitiator, Seq: 1}))
			right := NewKey(o.Attempt, o.Token)
			pkts = append(pkts, right.Append(nil, Packet{Type: TypeAck, Flags: FlagInitiator, Seq: 1}),
				right.Append(nil, Packet{Type: TypePunch, Flags: FlagInitiator, Seq: 2}))
			for _, p := range pkts {
				_, _ = evil.WriteToUDPAddrPort(p, addrOf(ca))
			}
		}
	}()
	runPair(t, a, b, 2*time.Millisecond)
	close(stop)
	<-done
	if !a.res.OK || !b.res.OK {
		t.Fatalf("%v / %v", a.res, b.res)
	}
	if a.res.Remote != addrOf(cb) || b.res.Remote != addrOf(ca) {
		t.Fatalf("remotes %v %v (evil %v)", a.res.Remote, b.res.Remote, addrOf(evil))
	}
}

// TestPunchUDPPeerReflexive: B advertises a useless candidate (as a NAT that
// re-mapped its port would); A learns B's real endpoint from B's punches.
func TestPunchUDPPeerReflexive(t *testing.T) {
	ca, cb := listenUDP(t, "127.0.0.1"), listenUDP(t, "127.0.0.1")
	dead := listenUDP(t, "127.0.0.1")
	deadAddr := addrOf(dead)
	dead.Close()
	a := &side{conn: ca, offer: Offer{UDP: []netip.AddrPort{addrOf(ca)}}}
	b := &side{conn: cb, offer: Offer{UDP: []netip.AddrPort{deadAddr}}}
	runPair(t, a, b, time.Millisecond)
	if !a.res.OK || !b.res.OK {
		t.Fatalf("%v / %v", a.res, b.res)
	}
	if a.res.Remote != addrOf(cb) {
		t.Fatalf("A confirmed %v, want B's real endpoint %v", a.res.Remote, addrOf(cb))
	}
}

// TestPunchUDPBirthday: the easy side filters like a port-restricted NAT, the
// hard side advertises a useless port (as a symmetric NAT would) and sits
// on its own loopback address; only birthday probing can meet.
func TestPunchUDPBirthday(t *testing.T) {
	hardIP := "127.0.0.3"
	easy := newFilterConn(listenUDP(t, "127.0.0.1"))
	hard := listenUDP(t, hardIP)
	lo, hi := ephemeralRange(t)
	var extra []*net.UDPConn
	var mu sync.Mutex
	listen := func() (PacketConn, error) {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(hardIP)})
		if err == nil {
			mu.Lock()
			extra = append(extra, c)
			mu.Unlock()
		}
		return c, err
	}
	bogus := netip.AddrPortFrom(netip.MustParseAddr(hardIP), 9) // discard port: nothing listens
	e := &side{conn: easy, offer: Offer{UDP: []netip.AddrPort{addrOf(easy)}},
		cfg: Config{ProbePorts: [2]uint16{lo, hi}, Rand: rand.New(rand.NewPCG(7, 7)), EscalateAfter: 50 * time.Millisecond}}
	h := &side{conn: hard, offer: Offer{UDP: []netip.AddrPort{bogus}, Hard: true},
		cfg: Config{Listen: listen, EscalateAfter: 50 * time.Millisecond}}
	runPair(t, e, h, time.Millisecond)
	t.Logf("easy: %v\nhard: %v", e.res, h.res)
	if !e.res.OK || !h.res.OK || e.res.Path != PathBirthday || h.res.Path != PathBirthday {
		t.Fatalf("easy %v (%v) / hard %v (%v)", e.res, e.err, h.res, h.err)
	}
	if e.res.Probes == 0 || e.res.Probes > MaxProbes {
		t.Errorf("probes %d", e.res.Probes)
	}
	// Probing started 50 ms after the start and never beat 200/s.
	if window := e.res.Confirmed - 50*time.Millisecond; float64(e.res.Probes) > window.Seconds()*MaxProbeRate+2 {
		t.Errorf("%d probes in %v: above %d/s", e.res.Probes, window, MaxProbeRate)
	}
	if h.res.Sockets != MaxHardSockets {
		t.Errorf("hard side used %d sockets, want %d", h.res.Sockets, MaxHardSockets)
	}
	// Every extra socket except the one carrying the path is closed.
	open := 0
	for _, c := range extra {
		if _, err := c.WriteToUDPAddrPort([]byte{1}, addrOf(easy)); err == nil {
			open++
		}
	}
	if open != 1 || h.res.Conn == nil || h.res.Socket == 0 {
		t.Errorf("%d extra sockets left open, path on socket %d", open, h.res.Socket)
	}
	if c, ok := h.res.Conn.(*net.UDPConn); ok {
		c.Close()
	}
}

// TestPunchUDPBothHard: two symmetric sides give up with ErrBothHard after
// the direct schedule, without probing.
func TestPunchUDPBothHard(t *testing.T) {
	ca, cb := listenUDP(t, "127.0.0.1"), listenUDP(t, "127.0.0.1")
	bogus := netip.MustParseAddrPort("127.0.0.1:9")
	cfg := Config{DirectTimeout: 300 * time.Millisecond, Listen: func() (PacketConn, error) {
		t.Error("both-hard attempt opened an extra socket")
		return nil, errors.New("no")
	}}
	a := &side{conn: ca, offer: Offer{UDP: []netip.AddrPort{bogus}, Hard: true}, cfg: cfg}
	b := &side{conn: cb, offer: Offer{UDP: []netip.AddrPort{bogus}, Hard: true}, cfg: cfg}
	runPair(t, a, b, time.Millisecond)
	for _, s := range []*side{a, b} {
		if !errors.Is(s.err, ErrBothHard) || s.res.OK || s.res.Probes != 0 {
			t.Fatalf("%v: %v %v", s.plan.Role, s.res, s.err)
		}
		if s.res.Sent > 30 {
			t.Errorf("%d punches to one target, bound is 30", s.res.Sent)
		}
	}
}

func ephemeralRange(t *testing.T) (uint16, uint16) {
	// The kernel picks unbound UDP ports from ip_local_port_range.
	lo, hi := uint16(32768), uint16(60999)
	if b, err := readFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var l, h int
		if n, _ := sscan(string(b), &l, &h); n == 2 && l > 0 && h <= 65535 && l < h {
			lo, hi = uint16(l), uint16(h)
		}
	}
	return lo, hi
}

func TestPunchTCPLoopback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	la, err := ListenTCP(ctx, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	lb, err := ListenTCP(ctx, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	// A stranger connects to A's listener first and sends a wrong hello.
	stranger, err := net.Dial("tcp", la.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	_, _ = stranger.Write(NewKey([8]byte{1}, [TokenSize]byte{1}).Append(nil, Packet{Type: TypePunch}))

	sa, sb := signalPair(2 * time.Millisecond)
	oa := NewOffer()
	oa.TCP = []netip.AddrPort{la.Addr().(*net.TCPAddr).AddrPort()}
	ob := Offer{TCP: []netip.AddrPort{lb.Addr().(*net.TCPAddr).AddrPort()}}
	type out struct {
		c   net.Conn
		r   TCPResult
		err error
	}
	res := make([]out, 2)
	var wg sync.WaitGroup
	for i, x := range []struct {
		sig  Signal
		role Role
		o    Offer
		ln   *net.TCPListener
	}{{sa, Initiator, oa, la}, {sb, Responder, ob, lb}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			plan, err := Negotiate(ctx, x.sig, x.role, x.o)
			if err != nil {
				res[i].err = err
				return
			}
			res[i].c, res[i].r, res[i].err = PunchTCP(ctx, x.ln, plan, TCPConfig{})
		}()
	}
	wg.Wait()
	for i, r := range res {
		if r.err != nil || !r.r.OK {
			t.Fatalf("side %d: %+v %v", i, r.r, r.err)
		}
		defer r.c.Close()
		if r.r.Remote == stranger.LocalAddr().(*net.TCPAddr).AddrPort() {
			t.Fatalf("side %d picked the stranger", i)
		}
	}
	// The chosen connections carry data both ways.
	if _, err := res[0].c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if res[0].c.LocalAddr().String() == res[1].c.RemoteAddr().String() {
		buf := make([]byte, 4)
		_ = res[1].c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := res[1].c.Read(buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q %v", buf, err)
		}
	}
}

// BenchmarkPunchUDPLoopback is one whole attempt on loopback: offer, answer,
// sync over an in-memory signal, punches, acks and the linger (the linger
// dominates: 6 intervals of 10 ms).
func BenchmarkPunchUDPLoopback(b *testing.B) {
	ca, cb := listenUDP(b, "127.0.0.1"), listenUDP(b, "127.0.0.1")
	b.ReportAllocs()
	for b.Loop() {
		ctx := context.Background()
		sa, sb := signalPair(0)
		oa := NewOffer()
		oa.UDP = []netip.AddrPort{addrOf(ca)}
		ob := Offer{UDP: []netip.AddrPort{addrOf(cb)}}
		errc := make(chan error, 1)
		go func() {
			plan, err := Negotiate(ctx, sb, Responder, ob)
			if err == nil {
				_, err = PunchUDP(ctx, cb, plan, Config{})
			}
			errc <- err
		}()
		plan, err := Negotiate(ctx, sa, Initiator, oa)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := PunchUDP(ctx, ca, plan, Config{}); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
}
