package node

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/dht/storage"
)

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func withPort(port int) nodeOpt { return func(c *Config, _ *Options) { c.Port = port } }

// TestRestartKeepsRecordsAndTable: a node stopped and started again on
// the same data directory serves the records it stored and knows its
// contacts without any bootstrap node.
func TestRestartKeepsRecordsAndTable(t *testing.T) {
	tn := newTestNet(t, 6)
	ctx := ctxT(t, 60*time.Second)
	kp, dir := newKey(t), t.TempDir()
	x, stop := startNode(t, kp, dir, withBoot(tn.nodes[0]))
	if err := x.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	port := x.Addrs()[0].Port()
	owner := newKey(t)
	signed, _ := record.NewSigned(owner, 1, []byte("kept across restarts"))
	imm, _ := record.NewImmutable([]byte("immutable, kept too"))
	peer, _ := record.NewPeer(owner, nil, 0, 5, "tcp://203.0.113.9:1", nil)
	for _, v := range []record.Value{signed, imm} {
		if _, err := tn.nodes[2].PutValue(ctx, v, PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tn.nodes[2].AnnouncePeer(ctx, peer, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if v, _ := x.store.Len(); v != 2 {
		t.Fatalf("x stores %d values before the restart", v)
	}
	before := len(x.Contacts())
	stop()

	x2, stop2 := startNode(t, kp, dir, withPort(int(port)))
	defer stop2()
	if v, p := x2.store.Len(); v != 2 || p != 1 {
		t.Fatalf("after restart: %d values, %d peers", v, p)
	}
	// The restored contacts are pinged before they are handed out.
	waitFor(t, 10*time.Second, "restored contacts to be verified", func() bool { return len(x2.Contacts()) >= before/2 })
	client, stopc := startNode(t, newKey(t), "", func(_ *Config, o *Options) { o.Client = true })
	defer stopc()
	xc := contactOf(x2)
	for _, v := range []record.Value{signed, imm} {
		got, found, err := client.GetValueFrom(ctx, xc, v.ID(), GetOptions{})
		if err != nil || !found || !got.Equal(&v) {
			t.Fatalf("restarted node: %v found=%v", err, found)
		}
	}
	ps, err := client.FindPeerFrom(ctx, xc, peer.ID)
	if err != nil || len(ps) != 1 || !ps[0].Equal(&peer) {
		t.Fatalf("restarted node peers: %v %+v", err, ps)
	}
	ns, err := client.FindNodeFrom(ctx, xc, randomID())
	if err != nil || len(ns) == 0 {
		t.Fatalf("restarted node hands out no contacts: %v", err)
	}
	t.Logf("contacts before %d, verified again after restart %d; find_node answer %d", before, len(x2.Contacts()), len(ns))
}

// TestExpiry: records are served for two hours after their last store,
// then neither served nor kept.
func TestExpiry(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	dir := t.TempDir()
	kp := newKey(t)
	n, stop := startNode(t, kp, dir, func(_ *Config, o *Options) { o.Clock = fake })
	nc := contactOf(n)
	p := newRawPeer(t, "127.0.0.1:0")
	v, _ := record.NewImmutable([]byte("short-lived"))
	p.expect(nc, storeMsg(p.token(nc, v.ID(), packet.FramingV3), v), packet.FramingV3, 0)
	if m := p.findValue(nc, v.ID()); !m.HasValue {
		t.Fatal("not stored")
	}
	fake.Advance(119 * time.Minute)
	if m := p.findValue(nc, v.ID()); !m.HasValue {
		t.Fatal("expired before two hours")
	}
	// A refresh (the same value stored again) restarts the two hours.
	p.expect(nc, storeMsg(p.token(nc, v.ID(), packet.FramingV3), v), packet.FramingV3, 0)
	fake.Advance(119 * time.Minute)
	if m := p.findValue(nc, v.ID()); !m.HasValue {
		t.Fatal("a refreshed value expired early")
	}
	fake.Advance(2 * time.Minute)
	if m := p.findValue(nc, v.ID()); m.HasValue {
		t.Fatal("served after two hours")
	}
	if k, err := n.store.Expire(); err != nil || k != 1 {
		t.Fatalf("expire: %d %v", k, err)
	}
	stop()
	n2, stop2 := startNode(t, kp, dir, func(_ *Config, o *Options) { o.Clock = fake })
	defer stop2()
	if v, _ := n2.store.Len(); v != 0 {
		t.Fatalf("an expired record came back: %d", v)
	}
}

// TestReannounce: a persistent value survives the publisher's restart
// and is re-announced on schedule to a network that never saw it.
func TestReannounce(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	first := newTestNet(t, 4)
	kp, dir := newKey(t), t.TempDir()
	a, stop := startNode(t, kp, dir, withBoot(first.nodes[0]))
	if err := a.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	owner := newKey(t)
	v, _ := record.NewSigned(owner, 7, []byte("re-announced"))
	if _, err := a.PutValue(ctx, v, PutOptions{Persistent: true}); err != nil {
		t.Fatal(err)
	}
	stop()

	second := newTestNet(t, 4)
	a2, stop2 := startNode(t, kp, dir, withBoot(second.nodes[0]), func(_ *Config, o *Options) {
		o.Timers.Reannounce = 100 * time.Millisecond
		o.Timers.ReannounceAge = time.Nanosecond
	})
	defer stop2()
	if err := a2.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the value to reach the second network", func() bool {
		for _, n := range second.nodes {
			if got, ok := n.store.Value(owner.ID(), false, time.Now()); !ok || got.Seq != 7 {
				return false
			}
		}
		return true
	})
	// Forgotten items are no longer re-announced.
	if err := a2.Forget(storage.KindValue, owner.ID(), 0); err != nil {
		t.Fatal(err)
	}
	if own, err := a2.store.Own(); err != nil || len(own) != 0 {
		t.Fatalf("own items after Forget: %d %v", len(own), err)
	}
	if k := a2.Reannounce(ctx, true); k != 0 {
		t.Fatalf("re-announced %d forgotten items", k)
	}
}

// v2Responder is a Boson 2.0 node: it only understands v2 framing and
// answers PINGs.
func v2Responder(t *testing.T) (*rawPeer, chan packet.Framing) {
	p := newRawPeer(t, "127.0.0.1:0")
	seen := make(chan packet.Framing, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			k, from, err := p.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			id, plain, fr, err := p.codec.OpenAny(nil, buf[:k], packet.IPv4)
			if err != nil {
				continue
			}
			select {
			case seen <- fr:
			default:
			}
			if fr != packet.FramingV2 {
				continue // a v2 node cannot read v3
			}
			var m message.Message
			if m.Decode(plain, message.V2) != nil || m.Type != message.TypeRequest || m.Method != message.MethodPing {
				continue
			}
			var r message.Message
			r.Respond(&m)
			body, _ := r.Append(nil, message.V2)
			dg, _ := p.codec.SealV2(nil, id, body, packet.IPv4)
			p.conn.WriteToUDPAddrPort(dg, from)
		}
	}()
	return p, seen
}

func TestCompatFallsBackToV2(t *testing.T) {
	n, stop := startNode(t, newKey(t), "", func(c *Config, _ *Options) { c.Dialect = DialectCompat })
	defer stop()
	p, seen := v2Responder(t)
	ctx := ctxT(t, 20*time.Second)
	if _, err := n.Ping(ctx, p.contact()); err != nil {
		t.Fatalf("ping a v2 node: %v", err)
	}
	if f := n.dialects.framing(p.kp.ID(), true); f != packet.FramingV2 {
		t.Fatalf("dialect after fallback: %v", f)
	}
	first, second := <-seen, <-seen
	if first != packet.FramingV3 || second != packet.FramingV2 {
		t.Fatalf("framings seen: %v then %v, want v3 then v2", first, second)
	}
	// Known now: the next call goes straight to v2.
	start := time.Now()
	if _, err := n.Ping(ctx, p.contact()); err != nil {
		t.Fatal(err)
	}
	if f := <-seen; f != packet.FramingV2 {
		t.Fatalf("second ping framing %v", f)
	}
	t.Logf("second ping %v", time.Since(start))

	// A v3-only node never falls back.
	n3, stop3 := startNode(t, newKey(t), "")
	defer stop3()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := n3.Ping(cctx, p.contact()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("v3 node pinging a v2 node: %v", err)
	}
	for len(seen) > 0 {
		if f := <-seen; f != packet.FramingV3 {
			t.Fatal("a v3-only node sent v2")
		}
	}
}

// TestNeverV2ToV3Peer: once a peer has spoken v3, a compat node never
// sends it v2, even when it stops answering.
func TestNeverV2ToV3Peer(t *testing.T) {
	n, stop := startNode(t, newKey(t), "", func(c *Config, _ *Options) { c.Dialect = DialectCompat })
	defer stop()
	p := newRawPeer(t, "127.0.0.1:0")
	// p speaks v3 once (a ping the node answers)...
	p.call(contactOf(n), &message.Message{Method: message.MethodPing, Version: versionNode}, packet.FramingV3)
	// ...then goes silent while the node pings it (twice, with a retry).
	ctx := ctxT(t, 10*time.Second)
	if _, err := n.Ping(ctx, p.contact()); err == nil {
		t.Fatal("a silent peer answered")
	}
	for {
		in, err := p.recv(100 * time.Millisecond)
		if errors.Is(err, errNoPacket) {
			break
		}
		if err == nil && in.fr != packet.FramingV3 {
			t.Fatalf("sent %v to a v3 peer", in.fr)
		}
	}
	// Two PC2 nodes in compat mode talk v3.
	m, stopm := startNode(t, newKey(t), "", func(c *Config, _ *Options) { c.Dialect = DialectCompat })
	defer stopm()
	if _, err := m.Ping(ctx, contactOf(n)); err != nil {
		t.Fatal(err)
	}
	if d := m.dialects.get(n.ID()); d != speaksV3 {
		t.Fatalf("compat nodes: dialect bits %b", d)
	}
}
