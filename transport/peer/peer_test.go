package peer_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/peer"
	"github.com/elacity/pc2/transport/udpmux"
)

func newKey(t testing.TB) *identity.KeyPair {
	t.Helper()
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// staticResolver answers from a map.
type staticResolver struct {
	mu sync.Mutex
	m  map[identity.ID]peer.Info
}

func (s *staticResolver) Resolve(_ context.Context, id identity.ID) (peer.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, ok := s.m[id]
	if !ok {
		return peer.Info{}, errors.New("unknown peer")
	}
	return info, nil
}

func (s *staticResolver) set(id identity.ID, info peer.Info) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[id] = info
}

// events records path changes.
type events struct {
	mu  sync.Mutex
	evs []peer.Event
}

func (e *events) add(ev peer.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *events) since(t time.Time, kind peer.PathKind) (peer.Event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.evs {
		if !ev.At.Before(t) && ev.Path.Kind == kind {
			return ev, true
		}
	}
	return peer.Event{}, false
}

type lab struct {
	relay    peer.RelayInfo
	resolver *staticResolver
}

func newLab(t *testing.T) *lab { return newLabB(t) }

func newLabB(t testing.TB) *lab { return newLabWith(t, circuit.Config{}) }

func newLabWith(t testing.TB, cfg circuit.Config) *lab {
	t.Helper()
	kp := newKey(t)
	srv := circuit.NewServer(kp, cfg)
	ap, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &lab{relay: peer.RelayInfo{ID: kp.ID(), Addr: ap}, resolver: &staticResolver{m: map[identity.ID]peer.Info{}}}
}

type node struct {
	e   *peer.Endpoint
	ev  *events
	mux *udpmux.Mux
}

func (l *lab) node(t *testing.T, mod func(*peer.Config)) *node { return l.nodeB(t, mod) }

func (l *lab) nodeB(t testing.TB, mod func(*peer.Config)) *node {
	t.Helper()
	kp := newKey(t)
	mux, err := udpmux.Listen("udp4", "127.0.0.1:0", udpmux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	cfg := peer.Config{
		Key: kp, Mux: mux, Resolver: l.resolver, Relays: []peer.RelayInfo{l.relay},
		Candidates: func() peer.Candidates { return peer.Candidates{UDP: []netip.AddrPort{mux.LocalAddr()}} },
		OnEvent:    ev.add,
		RetryMin:   300 * time.Millisecond,
		RetryMax:   2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	e, err := peer.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Close()
		mux.Close()
	})
	l.resolver.set(kp.ID(), peer.Info{Relays: []peer.RelayInfo{l.relay}, Direct: []netip.AddrPort{mux.LocalAddr()}})
	waitFor(t, 10*time.Second, "reservation", func() bool { return len(e.Reserved()) == len(cfg.Relays) })
	return &node{e: e, ev: ev, mux: mux}
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serveEcho(t *testing.T, n *node, protocol string) {
	t.Helper()
	l, err := n.e.Listen(protocol)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			s, err := l.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(s, s)
				_ = s.CloseWrite()
			}()
		}
	}()
}

// pump writes random bytes in chunks while reading the echo back, until
// more(sent) says stop (or max bytes); it returns an error unless every
// byte came back in order.
func pump(s *peer.Stream, max int, more func(sent int) bool) error {
	want := sha256.New()
	got := sha256.New()
	errc := make(chan error, 1)
	var total int
	done := make(chan struct{})
	go func() {
		n, err := io.Copy(got, s)
		<-done
		if err == nil && n != int64(total) {
			err = fmt.Errorf("echoed %d bytes of %d", n, total)
		}
		errc <- err
	}()
	chunk := make([]byte, 16<<10)
	for total < max && (more == nil || more(total)) {
		_, _ = rand.Read(chunk)
		want.Write(chunk)
		if _, err := s.Write(chunk); err != nil {
			close(done)
			return fmt.Errorf("write at %d: %w", total, err)
		}
		total += len(chunk)
	}
	close(done)
	if err := s.CloseWrite(); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(want.Sum(nil), got.Sum(nil)) {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

// TestRelayThenDirect: a connection starts on the relay, the punch
// upgrades it to direct while a stream is streaming, and no byte is lost.
func TestRelayThenDirect(t *testing.T) {
	l := newLab(t)
	delay := func(c *peer.Config) { c.PunchDelay = 300 * time.Millisecond }
	a, b := l.node(t, delay), l.node(t, delay)
	serveEcho(t, b, "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	s, err := a.e.Dial(ctx, b.e.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if p := s.Path(); p.Kind != peer.PathRelay || p.Remote != l.relay.Addr {
		t.Fatalf("first path %v, want the relay", p)
	}
	t.Logf("dial over the relay: %v", time.Since(t0))
	var paths []peer.PathKind
	directAt := -1
	err = pump(s, 1<<30, func(sent int) bool {
		k := s.Path().Kind
		if len(paths) == 0 || paths[len(paths)-1] != k {
			paths = append(paths, k)
		}
		if k == peer.PathDirect && directAt < 0 {
			directAt = sent
		}
		return directAt < 0 || sent < directAt+4<<20 // go on 4 MiB after the upgrade
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 2 || paths[0] != peer.PathRelay || paths[len(paths)-1] != peer.PathDirect {
		t.Fatalf("paths during the stream %v: want relay, then direct", paths)
	}
	ev, ok := a.ev.since(t0, peer.PathDirect)
	if !ok {
		t.Fatal("no direct event")
	}
	t.Logf("upgraded to direct %v after the dial (%s)", ev.At.Sub(t0), ev.Why)
	// b sends direct too.
	waitFor(t, 5*time.Second, "b direct", func() bool { return b.e.Path(a.e.ID()).Kind == peer.PathDirect })
	if st := a.e.Stats(); st.SentDirect == 0 || st.SentRelay == 0 || st.RecvDirect == 0 {
		t.Fatalf("stats %+v: want datagrams on both paths", st)
	}
}

// TestDirectPathDies: the direct path stops carrying anything mid-stream;
// the stream goes on over the relay within 3 s with no byte lost, then
// returns to direct when the path works again.
func TestDirectPathDies(t *testing.T) {
	l := newLab(t)
	a, b := l.node(t, nil), l.node(t, nil)
	serveEcho(t, b, "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := a.e.Dial(ctx, b.e.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitFor(t, 10*time.Second, "direct path", func() bool {
		return a.e.Path(b.e.ID()).Kind == peer.PathDirect && b.e.Path(a.e.ID()).Kind == peer.PathDirect
	})
	var killed, restored time.Time
	var fellBack, back time.Duration
	var restoredAt int
	err = pump(s, 1<<30, func(sent int) bool {
		switch {
		case killed.IsZero() && sent >= 2<<20:
			killed = time.Now()
			a.e.SetDropDirect(true)
			b.e.SetDropDirect(true)
		case !killed.IsZero() && fellBack == 0 && s.Path().Kind == peer.PathRelay:
			fellBack = time.Since(killed)
		case fellBack != 0 && restored.IsZero() && time.Since(killed) > fellBack+time.Second:
			restored, restoredAt = time.Now(), sent
			a.e.SetDropDirect(false)
			b.e.SetDropDirect(false)
		case !restored.IsZero() && back == 0 && s.Path().Kind == peer.PathDirect:
			back = time.Since(restored)
		}
		// Stop 4 MiB after the return to direct, or 20 s after the kill.
		return (back == 0 || sent < restoredAt+8<<20) && time.Since(killed) < 20*time.Second || killed.IsZero()
	})
	if err != nil {
		t.Fatalf("stream across the path changes: %v", err)
	}
	if fellBack == 0 {
		t.Fatal("the stream never moved to the relay")
	}
	t.Logf("direct path killed: on the relay after %v; restored: direct again after %v", fellBack, back)
	if fellBack > 3*time.Second {
		t.Fatalf("fallback took %v, want < 3 s", fellBack)
	}
	waitFor(t, 10*time.Second, "direct again", func() bool { return a.e.Path(b.e.ID()).Kind == peer.PathDirect })
	// The stream above proves no byte was lost; a new stream reuses the
	// same connection.
	s2, err := a.e.Dial(ctx, b.e.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := pump(s2, 64<<10, nil); err != nil {
		t.Fatal(err)
	}
}

// TestDialErrors: no listener, a peer that cannot be resolved, and a key
// that is not the expected one.
func TestDialErrors(t *testing.T) {
	l := newLab(t)
	a, b := l.node(t, nil), l.node(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := a.e.Dial(ctx, b.e.ID(), "nobody-listens"); !errors.Is(err, peer.ErrNoProtocol) {
		t.Fatalf("dial to an unserved protocol: %v, want ErrNoProtocol", err)
	}
	if _, err := a.e.Dial(ctx, newKey(t).ID(), "echo"); err == nil {
		t.Fatal("dial to an unknown peer succeeded")
	}
	if _, err := a.e.Dial(ctx, b.e.ID(), "bad name"); !errors.Is(err, peer.ErrBadHeader) {
		t.Fatalf("dial with a bad protocol name: %v", err)
	}
	// An id whose record names the relay but which holds no reservation
	// there: the relay cannot introduce it (and were another key to answer,
	// the TLS check against the id would refuse it).
	c := newKey(t)
	l.resolver.set(c.ID(), peer.Info{Relays: []peer.RelayInfo{l.relay}})
	if _, err := a.e.Dial(ctx, c.ID(), "echo"); err == nil {
		t.Fatal("dial to an id nobody holds succeeded")
	}
}

// TestIdleKeepAlive: an idle connection sends at most one packet per
// keep-alive period in each direction.
func TestIdleKeepAlive(t *testing.T) {
	l := newLab(t)
	const period = 2 * time.Second
	ka := func(c *peer.Config) { c.KeepAlive = period }
	a, b := l.node(t, ka), l.node(t, ka)
	serveEcho(t, b, "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := a.e.Dial(ctx, b.e.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := pump(s, 1024, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "direct path", func() bool { return a.e.Path(b.e.ID()).Kind == peer.PathDirect })
	// Let the exchange settle (acks, the punch's linger), then count.
	time.Sleep(period) // the quiet period under test, not a wait for a condition
	before, bBefore := a.e.Stats(), b.e.Stats()
	const window = 3 * period
	time.Sleep(window)
	after := a.e.Stats()
	sent := after.SentDirect - before.SentDirect + after.SentRelay - before.SentRelay
	t.Logf("idle for %v with keep-alive %v: %d packets sent (%+v → %+v)", window, period, sent, before, after)
	// The dialer's keep-alive on the path and its relay-session keep-alive,
	// each once per period; b only acknowledges.
	bsent := b.e.Stats().SentDirect - bBefore.SentDirect + b.e.Stats().SentRelay - bBefore.SentRelay
	t.Logf("the acceptor sent %d", bsent)
	if max := uint64(window/period + 1); bsent > max {
		t.Fatalf("acceptor: %d packets in %v idle, want ≤ %d", bsent, window, max)
	}
	if max := uint64(2 * (window/period + 1)); sent > max {
		t.Fatalf("%d packets in %v idle, want ≤ %d", sent, window, max)
	}
}

// TestHandshakeRate: one peer id opening connection after connection is
// refused beyond its handshake budget (1/s, burst 4), on the ClientHello.
func TestHandshakeRate(t *testing.T) {
	l := newLab(t)
	b := l.node(t, nil)
	serveEcho(t, b, "echo")
	kp := newKey(t)
	ok, refused := 0, 0
	for range 8 {
		mux, err := udpmux.Listen("udp4", "127.0.0.1:0", udpmux.Options{})
		if err != nil {
			t.Fatal(err)
		}
		e, err := peer.New(peer.Config{Key: kp, Mux: mux, Resolver: l.resolver})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		s, err := e.Dial(ctx, b.e.ID(), "echo")
		cancel()
		if err == nil {
			ok++
			s.Close()
		} else {
			refused++
		}
		e.Close()
		mux.Close()
	}
	got := b.e.Stats().RefusedHandshakes
	t.Logf("8 connections from one id in a row: %d served, %d failed, %d handshakes refused", ok, refused, got)
	if ok < 4 || got == 0 || refused == 0 {
		t.Fatalf("want the first 4 served and later ones refused: %d served, %d refused (%d at the handshake)", ok, refused, got)
	}
}

// TestListenerQueue: a listener that does not accept holds at most its
// queue; the next stream is refused as busy, and after Close the protocol
// is not served.
func TestListenerQueue(t *testing.T) {
	l := newLab(t)
	a, b := l.node(t, nil), l.node(t, nil)
	ln, err := b.e.Listen("slow")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var held []*peer.Stream
	defer func() {
		for _, s := range held {
			s.Close()
		}
	}()
	for i := 0; ; i++ {
		s, err := a.e.Dial(ctx, b.e.ID(), "slow")
		if errors.Is(err, peer.ErrBusy) {
			if i != 64 {
				t.Fatalf("busy after %d queued streams, want 64", i)
			}
			break
		}
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		held = append(held, s)
		if i > 64 {
			t.Fatal("the queue took more than 64 streams")
		}
	}
	// Accepting one makes room for one.
	if _, err := ln.AcceptStream(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := a.e.Dial(ctx, b.e.ID(), "slow")
	if err != nil {
		t.Fatalf("after an accept: %v", err)
	}
	held = append(held, s)
	ln.Close()
	if _, err := a.e.Dial(ctx, b.e.ID(), "slow"); !errors.Is(err, peer.ErrNoProtocol) {
		t.Fatalf("after Close: %v, want ErrNoProtocol", err)
	}
}

// TestIdleRelayClientClosed: a node that reached a peer through the peer's
// relay drops that relay's control connection once no session runs on it
// for RelayIdle (its own reservations' relays stay).
func TestIdleRelayClientClosed(t *testing.T) {
	l := newLabWith(t, circuit.Config{Session: circuit.Limits{MaxDuration: time.Second}})
	b := l.node(t, nil)
	serveEcho(t, b, "echo")
	a := l.node(t, func(c *peer.Config) {
		c.Relays = nil     // no reservation of its own
		c.Candidates = nil // stays on the relay
		c.RelayIdle = 300 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := a.e.Dial(ctx, b.e.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := a.e.RelayClients(); n != 1 {
		t.Fatalf("%d relay clients after the dial, want 1", n)
	}
	// The relay cuts the session after 1 s; 300 ms later the client goes.
	waitFor(t, 10*time.Second, "the idle relay client closed", func() bool { return a.e.RelayClients() == 0 })
	if n := b.e.RelayClients(); n != 1 {
		t.Fatalf("b holds %d relay clients, want its own reservation's", n)
	}
}

// TestWrongRelayIDKeepsOwnRelay: a peer record naming this node's relay
// address with another id fails the dial and leaves this node's own
// reservation there working.
func TestWrongRelayIDKeepsOwnRelay(t *testing.T) {
	l := newLab(t)
	a, b := l.node(t, nil), l.node(t, nil)
	serveEcho(t, a, "echo")
	c := newKey(t)
	l.resolver.set(c.ID(), peer.Info{Relays: []peer.RelayInfo{{ID: newKey(t).ID(), Addr: l.relay.Addr}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := a.e.Dial(ctx, c.ID(), "echo"); err == nil || !strings.Contains(err.Error(), "not") {
		t.Fatalf("dial through a relay named with the wrong id: %v", err)
	}
	s, err := b.e.Dial(ctx, a.e.ID(), "echo")
	if err != nil {
		t.Fatalf("a is no longer reachable through its relay: %v", err)
	}
	defer s.Close()
	if err := pump(s, 4096, nil); err != nil {
		t.Fatal(err)
	}
}
